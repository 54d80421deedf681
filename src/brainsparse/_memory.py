"""Giving memory that the C allocator holds free back to the system."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None  # glibc; musl has none
    except (OSError, AttributeError, TypeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed to the C allocator back to the system (glibc ``malloc_trim``; a no-op
    elsewhere). Called after the set-up of a sparse model and after each topology update, whose
    temporaries (masks, candidate lists, the dense weights a layer leaves behind when it moves to
    the sparse path) are freed by then: glibc otherwise keeps such blocks in its heap, and the
    process's resident memory stays at the high-water mark of that moment."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["release_freed_memory"]
