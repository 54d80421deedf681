"""No Python module of brainsparse over ~450 lines (one job per module)."""

from __future__ import annotations

from pathlib import Path

import brainsparse

ROOT = Path(brainsparse.__file__).parent
MAX_LINES = 450


def test_every_module_is_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in ROOT.rglob("*.py")}
    assert sizes and not {k: v for k, v in sizes.items() if v > MAX_LINES}, sizes
