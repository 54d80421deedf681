"""Finding the linear layers to sparsify and the chains they form for percolation."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from .errors import BrainsparseError

HEAD_NAMES = ("lm_head", "generator", "classifier", "head", "fc_out", "output")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def find_sparse_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    dense_head: bool = True,
) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers to sparsify, in module order.

    ``include``/``exclude`` are shell-style patterns on qualified module names (``"layers.0"``,
    ``"*.q_proj"``). By default every linear layer is sparse except the classifier head: the last
    linear layer of the model and layers named like a head (``lm_head``, ``classifier`` ...).
    Embeddings are not linear layers and stay dense.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BrainsparseError("the model has no nn.Linear layer to sparsify")
    chosen = linears
    if include:
        chosen = [(n, m) for n, m in chosen if _matches(n, include)]
        if not chosen:
            raise BrainsparseError(
                f"include patterns {list(include)} match no linear layer; layers: {', '.join(n for n, _ in linears)}"
            )
    elif dense_head:
        last = linears[-1][0]
        chosen = [(n, m) for n, m in chosen if n != last and n.rsplit(".", 1)[-1] not in HEAD_NAMES]
    if exclude:
        chosen = [(n, m) for n, m in chosen if not _matches(n, exclude)]
    return chosen


def infer_chains(model: nn.Module, sparse_names: Sequence[str]) -> list[list[str]]:
    """Chains of sparse layers that feed each other directly, for percolation.

    A model may describe its own chains with a ``sparse_chains()`` method returning lists of
    module names. Otherwise chains are read from ``nn.Sequential`` containers: consecutive sparse
    linear children (other non-linear children such as activations and dropout in between) whose
    output width equals the next one's input width. Every sparse layer not in a longer chain is a
    chain of its own.
    """
    wanted = set(sparse_names)
    chains: list[list[str]] = []
    if hasattr(model, "sparse_chains"):
        chains = [[n for n in chain if n in wanted] for chain in model.sparse_chains()]
        chains = [c for c in chains if c]
    else:
        for prefix, module in model.named_modules():
            if not isinstance(module, nn.Sequential):
                continue
            run: list[tuple[str, nn.Linear]] = []
            for child_name, child in module.named_children():
                full = f"{prefix}.{child_name}" if prefix else child_name
                if isinstance(child, nn.Linear):
                    if full in wanted and run and run[-1][1].out_features == child.in_features:
                        run.append((full, child))
                        continue
                    if len(run) > 1:
                        chains.append([n for n, _ in run])
                    run = [(full, child)] if full in wanted else []
            if len(run) > 1:
                chains.append([n for n, _ in run])
    covered = {n for c in chains for n in c}
    chains += [[n] for n in sparse_names if n not in covered]
    return chains


_HEAD_COUNT_ATTRS = ("heads", "n_heads", "num_heads", "num_attention_heads")


def _head_count(module: nn.Module) -> int | None:
    for attr in _HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None


def infer_attention_blocks(model: nn.Module, sparse_names: Sequence[str]) -> list[dict[str, object]]:
    """Attention blocks whose heads can be pruned as wholes: modules with ``q_proj``, ``k_proj``,
    ``v_proj`` and ``out_proj`` / ``o_proj`` linear layers, all sparse, a head count (``heads``,
    ``n_heads``, ``num_heads`` or ``config.num_attention_heads``) and as many key/value heads as
    query heads. Each block is ``{"name", "heads", "q", "k", "v", "o"}`` (qualified names)."""
    wanted = set(sparse_names)
    blocks: list[dict[str, object]] = []
    for name, module in model.named_modules():
        parts = {p: getattr(module, p, None) for p in ("q_proj", "k_proj", "v_proj")}
        parts["o"] = getattr(module, "out_proj", None) or getattr(module, "o_proj", None)
        heads = _head_count(module)
        if heads is None or not all(isinstance(m, nn.Linear) for m in parts.values()):
            continue
        q, k, v, o = parts["q_proj"], parts["k_proj"], parts["v_proj"], parts["o"]
        if not (q.out_features == k.out_features == v.out_features == o.in_features) or q.out_features % heads:
            continue  # grouped key/value heads: a query head has no key head of its own
        prefix = f"{name}." if name else ""
        o_attr = "out_proj" if getattr(module, "out_proj", None) is o else "o_proj"
        names = {"q": f"{prefix}q_proj", "k": f"{prefix}k_proj", "v": f"{prefix}v_proj", "o": f"{prefix}{o_attr}"}
        if all(n in wanted for n in names.values()):
            blocks.append({"name": name, "heads": heads, **names})
    return blocks
