"""Random draws for tensors on any device from a generator on any device.

A ``torch.Generator`` draws only on its own device; the engine keeps one CPU generator, so a
seed gives the same topology on CPU and GPU. These helpers draw where the generator lives and
move the result to where the data lives.
"""

from __future__ import annotations

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
