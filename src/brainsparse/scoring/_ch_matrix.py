"""The CH L3 matrix form in PyTorch: dense matmuls, or sparse CSR × dense products.

The body of :func:`brainsparse.scoring.cannistraci_hebb.ch_l3_matrix` when the fused compiled
scorer is not used; the steps are described there.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["matrix_scores", "node_weight_matrix"]


def node_weight_matrix(c: Tensor, deg: Tensor, variant: str) -> Tensor:
    """Steps 2–3 of the matrix form for one side: ``c`` common-neighbour counts, ``deg`` degrees
    broadcast along the last index."""
    b = (c != 0).to(c.dtype)
    e = (deg.unsqueeze(0) - c) * b
    e = (e - 1.0).clamp_min(0.0)  # entries 0 and 1 both become 0
    if variant == "CH3":
        return b / (e + 1.0)
    if variant == "CH2":
        return (c + b) / (e + 1.0)
    # CH3.1 (REPO-B node weight): (C + B) / (1 + E)^(1 + E/(1 + E))
    return (c + b) / torch.pow(e + 1.0, 1.0 + e / (e + 1.0))


def matrix_scores(m: Tensor, var: str, use_sparse: bool) -> Tensor:
    """The matrix form of a validated bool mask ``m`` and canonical variant ``var``, float32,
    zero at existing links: sparse CSR × dense products (``use_sparse``) or dense matmuls."""
    a = m.to(torch.float32)
    deg_o, deg_i = a.sum(1), a.sum(0)
    if use_sparse:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
            a_sp = a.to_sparse_csr()
            at_sp = a.t().contiguous().to_sparse_csr()
            wt_o = node_weight_matrix(a_sp @ a.t(), deg_o, var)  # C = A·Aᵀ (out, out)
            scores = (at_sp @ wt_o.t()).t()  # S_out = Wt·A = (Aᵀ·Wtᵀ)ᵀ
            del wt_o
            wt_i = node_weight_matrix(at_sp @ a, deg_i, var)  # C' = Aᵀ·A (in, in)
            scores = scores + a_sp @ wt_i.t()  # S_inᵀ = (Wt'·Aᵀ)ᵀ = A·Wt'ᵀ
    else:
        at = a.t()
        wt_o = node_weight_matrix(a @ at, deg_o, var)  # (out, out)
        scores = wt_o @ a  # S_out
        del wt_o
        wt_i = node_weight_matrix(at @ a, deg_i, var)  # (in, in)
        scores = scores + (wt_i @ at).t()  # + S_inᵀ
    return scores.masked_fill_(m, 0.0)
