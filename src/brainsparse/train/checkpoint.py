"""Atomic writes for run folders: a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import BrainsparseError


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(strict_json(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda fh: fh.write(text.encode()))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically."""
    atomic_write(path, lambda fh: fh.write(text.encode()))


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Write one JSON object per line, atomically."""
    text = "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in rows)
    atomic_write(path, lambda fh: fh.write(text.encode()))


def strict_json(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, ±Infinity) replaced by None, so
    that every file written parses with a strict JSON parser."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) a killed :func:`atomic_write` left in ``folder``."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(".*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def plain_state(value: Any) -> Any:
    """``value`` made of tensors and plain containers only (what ``weights_only`` loading
    accepts): tuples, lists, dicts, str, int, float, bool, None and tensors; numpy scalars and
    arrays, ``torch.Size`` and dataclasses are converted."""
    import dataclasses

    import numpy as np

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, torch.Size):
        return [int(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_state(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {plain_state(k): plain_state(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(v) for v in value) if type(value) in (list, tuple) else [plain_state(v) for v in value]
    return value


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename over ``path``."""
    state = plain_state(state)
    atomic_write(path, lambda fh: torch.save(state, fh))


#: the most a checkpoint may occupy on disk (a bound on what is read)
MAX_CHECKPOINT_BYTES = 1 << 36


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on CPU), never running code from it:
    ``weights_only=True`` admits tensors and plain containers only. A missing, damaged or
    foreign file raises :class:`BrainsparseError` naming it."""
    path = Path(path)
    hint = "restore the file, or start the run again with --overwrite"
    if path.is_symlink() or not path.is_file():
        what = "is missing" if not path.exists() else "is not a regular file"
        raise BrainsparseError(f"checkpoint '{path}' {what}; {hint}")
    size = path.stat().st_size
    if size == 0:
        raise BrainsparseError(f"checkpoint '{path}' is empty (a damaged file); {hint}")
    if size > MAX_CHECKPOINT_BYTES:
        raise BrainsparseError(f"checkpoint '{path}' is {size} bytes, over the {MAX_CHECKPOINT_BYTES}-byte limit")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise BrainsparseError(
            f"checkpoint '{path}' was not loaded: it holds something other than tensors and plain values "
            f"(a damaged, foreign or crafted file; loading never runs code from it); {hint}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrainsparseError(f"checkpoint '{path}' is damaged or not a checkpoint ({first[:200]}); {hint}") from None
    if not isinstance(state, dict):
        raise BrainsparseError(f"checkpoint '{path}' is not a brainsparse checkpoint (no state dictionary); {hint}")
    return state


def read_json_file(path: Path, what: str = "file", max_bytes: int = 1 << 26, kind: type = dict) -> Any:
    """Parse a JSON file of a run folder (bounded read, strict: no NaN/Infinity), raising
    :class:`BrainsparseError` naming the file when it is missing, too large, or not JSON of ``kind``."""
    path = Path(path)
    if not path.is_file():
        raise BrainsparseError(f"{what} '{path}' is missing or not a file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise BrainsparseError(f"cannot read {what} '{path}': {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise BrainsparseError(f"{what} '{path}' is larger than {max_bytes} bytes")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).splitlines()[0][:120]
        raise BrainsparseError(f"{what} '{path}' is not valid JSON ({reason}); restore it or start the run again") from None
    if not isinstance(value, kind):
        raise BrainsparseError(f"{what} '{path}' is not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def read_jsonl_file(path: Path, what: str = "file", max_bytes: int = 1 << 28) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one per non-empty line (strict, bounded)."""
    path = Path(path)
    if not path.is_file():
        raise BrainsparseError(f"{what} '{path}' is missing or not a file")
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise BrainsparseError(f"{what} '{path}' is larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BrainsparseError(f"{what} '{path}' is not UTF-8 text; restore it or start the run again") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise BrainsparseError(f"{what} '{path}' line {number} is not valid JSON; restore it or start the run again") from None
        if not isinstance(row, dict):
            raise BrainsparseError(f"{what} '{path}' line {number} is not a JSON object")
        rows.append(row)
    return rows


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in strict JSON")
