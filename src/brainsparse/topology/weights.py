"""Weight initialisation of sparse layers: sparse Kaiming (SWI) and dense-fan-in Kaiming."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_density
from ..errors import BrainsparseError
from .random import _check_generator

__all__ = ["sparse_weight_init", "kaiming_init"]


def _check_pair(weight: object, mask: object) -> None:
    """Raise unless ``weight`` is a 2-D float tensor and ``mask`` a bool tensor of its shape."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise BrainsparseError("weight is not a 2-D floating-point tensor; allowed: a (out, in) weight")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(weight.shape):
        raise BrainsparseError(
            f"mask with shape {tuple(getattr(mask, 'shape', ()))} does not match weight shape "
            f"{tuple(weight.shape)}; allowed: a torch.bool mask of the weight's shape"
        )


def _fill_masked_normal(weight: Tensor, mask: Tensor, std: float, generator: torch.Generator) -> None:
    """Overwrite ``weight`` in place with N(0, std²) samples on ``mask`` and zeros elsewhere.

    The samples are those of ``torch.randn(weight.shape)`` (every entry drawn, in row-major
    order, so the generator advances the same whatever the mask); a contiguous float32 weight
    on the generator's device takes them in place, without a dense temporary."""
    with torch.no_grad():
        if weight.dtype == torch.float32 and weight.is_contiguous() and weight.device == generator.device:
            weight.normal_(generator=generator).mul_(std)  # the same numbers as randn(...) * std
        else:
            sample = torch.randn(tuple(weight.shape), generator=generator, device=generator.device, dtype=torch.float32)
            weight.copy_(sample.to(device=weight.device, dtype=weight.dtype) * std)
            del sample
        weight.masked_fill_(~mask.to(weight.device), 0.0)


def sparse_weight_init(
    weight: Tensor,
    mask: Tensor,
    density: float | None = None,
    *,
    generator: torch.Generator,
) -> None:
    """Sparse weight initialisation (SWI), in place: N(0, σ²) with σ = sqrt(2 / (d · fan_in))
    on the mask's links and 0 elsewhere.

    ``fan_in`` is ``weight.shape[1]``; ``d`` is ``density`` if given, else the mask's actual
    density (links / size).
    """
    # [SWI] σ = sqrt(2 / (d · fan_in)), algorithms.md §1 / reference.md §2.8
    _check_pair(weight, mask)
    generator = _check_generator(generator)
    if density is None:
        links = int(torch.count_nonzero(mask))
        if links == 0:
            raise BrainsparseError("mask has 0 links; SWI needs a density > 0 (pass density= or a non-empty mask)")
        d = links / mask.numel()
    else:
        d = check_density(density)
    fan_in = weight.shape[1]
    _fill_masked_normal(weight, mask, math.sqrt(2.0 / (d * fan_in)), generator)


def kaiming_init(weight: Tensor, mask: Tensor, *, generator: torch.Generator) -> None:
    """Dense-fan-in Kaiming initialisation, in place: N(0, 2 / fan_in) on the mask's links and
    0 elsewhere (the SET/RigL baselines' choice; kept as an explicit option)."""
    # [SWI] kaiming baseline σ = sqrt(2 / fan_in), algorithms.md §1 / reference.md §2.8
    _check_pair(weight, mask)
    generator = _check_generator(generator)
    _fill_masked_normal(weight, mask, math.sqrt(2.0 / weight.shape[1]), generator)
