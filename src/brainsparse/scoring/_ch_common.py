"""Shared argument checks of the Cannistraci–Hebb scorers: the mask and the variant name."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice
from ..errors import BrainsparseError

__all__ = ["VARIANTS", "as_mask", "canonical_variant"]

#: Supported CH variants (case-insensitive on input).
VARIANTS: tuple[str, ...] = ("CH2", "CH3", "CH3.1")


def as_mask(mask) -> Tensor:
    """Return ``mask`` as a 2-D bool tensor; accept bool or 0/1 numeric input, else raise."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except Exception:  # noqa: BLE001 - whatever fails to convert is not a mask
            raise BrainsparseError(
                f"mask must be a 2-D bool tensor of shape (out, in); got {type(mask).__name__}"
            ) from None
    if mask.dim() != 2:
        raise BrainsparseError(
            f"mask must be 2-D of shape (out, in); got shape {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
        raise BrainsparseError(
            f"mask must be bool or contain only 0 and 1; got dtype {mask.dtype} with other values"
        )
    return mask != 0


def canonical_variant(variant) -> str:
    key = check_choice(variant, VARIANTS, "variant")
    return {v.lower(): v for v in VARIANTS}[key]
