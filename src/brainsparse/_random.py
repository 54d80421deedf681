"""Random draws for tensors on any device from a generator on any device.

A ``torch.Generator`` draws only on its own device; the engine keeps one CPU generator, so a
seed gives the same topology on CPU and GPU. These helpers draw where the generator lives and
move the result to where the data lives.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def drawing_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """The generator whose numbers a draw for ``device`` takes: ``generator``, or the default
    generator of ``device`` (to save and restore its state)."""
    if generator is not None:
        return generator
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def rand(shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None, device: torch.device,
         dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform [0, 1) draws of ``shape`` on ``device``."""
    out = torch.rand(tuple(shape), generator=generator, dtype=dtype, device=_draw_device(generator, device))
    return out.to(device)


def randperm(n: int, *, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A uniform permutation of ``0..n-1`` on ``device``: int32 when drawn on the CPU and ``n``
    fits (the CPU draws the same permutation for either dtype; half the memory), else int64."""
    draw = _draw_device(generator, device)
    dtype = torch.int32 if draw.type == "cpu" and n < 2**31 else torch.int64
    return torch.randperm(n, generator=generator, device=draw, dtype=dtype).to(device)


#: below this size torch's CPU ``randperm`` draws its permutation with n − 1 32-bit numbers
_SHORT_PERMUTATION = (1 << 32) // 20
_ADVANCE_BLOCK = 1 << 18


def _advance(generator: torch.Generator, draws: int) -> None:
    """Take ``draws`` 32-bit numbers from the CPU ``generator``, a block at a time."""
    buf = torch.empty(min(draws, _ADVANCE_BLOCK), dtype=torch.int32)
    for start in range(0, draws, _ADVANCE_BLOCK):
        buf[: min(_ADVANCE_BLOCK, draws - start)].random_(0, 2, generator=generator)


@functools.cache
def _advance_matches_randperm() -> bool:
    """Whether :func:`_advance` of n − 1 numbers leaves a generator where ``torch.randperm(n)``
    does (checked once per process, on a few sizes)."""
    for n in (2, 1000, 70001):
        drawn, skipped = torch.Generator().manual_seed(n), torch.Generator().manual_seed(n)
        torch.randperm(n, generator=drawn, dtype=torch.int32)
        _advance(skipped, n - 1)
        if not torch.equal(drawn.get_state(), skipped.get_state()):
            return False
    return True


def skip_randperm(n: int, *, generator: torch.Generator) -> bool:
    """Move ``generator`` on exactly as :func:`randperm` ``(n)`` would, without forming the
    permutation (a third of the time for millions of candidates: no random swaps through memory).
    True when done; False, with nothing drawn, where that is not known to hold (a generator on
    another device, a very large ``n``, or a PyTorch whose permutation draws differently)."""
    if generator.device.type != "cpu" or n >= _SHORT_PERMUTATION or not _advance_matches_randperm():
        return False
    if n > 1:
        _advance(generator, n - 1)
    return True
