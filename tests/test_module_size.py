"""No Python module over ~450 lines in the kernels and scoring packages (one job per module)."""

from __future__ import annotations

from pathlib import Path

import brainsparse

ROOT = Path(brainsparse.__file__).parent
MAX_LINES = 450
PACKAGES = ("kernels", "scoring")


def test_kernel_and_scoring_modules_are_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert sizes and not {k: v for k, v in sizes.items() if v > MAX_LINES}, sizes
