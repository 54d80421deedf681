"""The entry point: :func:`sparsify` makes a model's linear layers sparse and returns its engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._validation import check_choice, check_density, check_positive_int
from ..errors import BrainsparseError
from ..layers import find_sparse_layers, infer_attention_blocks, infer_chains
from ..methods import MethodConfig, resolve_method
from .core import DynamicSparseEngine


def sparsify(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    method: str | MethodConfig = "chts",
    density: float = 0.01,
    init: str | None = None,
    update_every: int | None = None,
    total_steps: int | None = None,
    *,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    chains: Sequence[Sequence[str]] | None = None,
    pairs: Sequence[tuple[str, str]] = (),
    attention: Sequence[dict[str, Any]] | None = None,
    seed: int | None = None,
    init_data: Any = None,
    kernel: str = "dense",
    batch_size: int = 32,
    engine_class: Callable[..., DynamicSparseEngine] | None = None,
    **method_options: Any,
) -> DynamicSparseEngine:
    """Make ``model``'s linear layers sparse and return the engine that evolves them.

    ``method`` names a preset (dense, static, set, rigl, mest, granet, ctre, cht, chts, chtss,
    neuroprune) or is a :class:`MethodConfig`; ``init`` overrides its initial topology (uniform,
    er, erk, bsw, bsf, brf, csti) and ``method_options`` override any other field (e.g.
    ``beta=0.5`` for BSW, ``drop_fraction=0.2``, ``regrowth_exact=False``). Call
    ``engine.step()`` after every ``optimizer.step()``; the topology evolves every
    ``update_every`` steps until ``t_end_fraction · total_steps``.

    A dynamic method needs the run's rhythm and length: pass ``update_every`` and
    ``total_steps`` (optimizer steps), or ``steps_per_epoch`` and ``epochs`` (then one update per
    epoch over ``epochs · steps_per_epoch`` steps, the papers' MLP setting). There is no silent
    default: without them the schedules (ζ, temperature, density) cannot know where the run is.

    ``attention`` lists attention blocks ({"name", "heads", "q", "k", "v", "o"}) for NeuroPrune's
    head pruning (default: found in the model, see :func:`~brainsparse.layers.infer_attention_blocks`).

    ``init_data`` is the sample of inputs CSTI correlates: a ``(samples, ...)`` tensor, or rows
    read a block at a time such as ``PixelImages.rows(slice(None, 10000))`` (no float copy of
    the whole sample).

    ``kernel`` picks the execution of the sparse layers: ``"dense"`` (dense weights multiplied by
    masks), ``"sparse"`` (each layer becomes a :class:`~brainsparse.kernels.SparseLinear` whose
    weight and optimizer state exist only at the links) or ``"auto"`` (per layer: sparse where its
    density is below the measured crossover for its shape and ``batch_size`` — the rows it
    multiplies per step: the batch size of an MLP, batch × tokens of a sequence model — see
    :func:`~brainsparse.kernels.crossover_density`; re-decided after every topology update).

    ``engine_class`` builds the engine (default :class:`DynamicSparseEngine`), e.g. a subclass
    for sharded models.
    """
    kernel = check_choice(kernel, ("auto", "dense", "sparse"), "kernel")
    density = check_density(density)
    if steps_per_epoch is not None:
        steps_per_epoch = check_positive_int(steps_per_epoch, "steps_per_epoch")
        update_every = steps_per_epoch if update_every is None else update_every
        if epochs is not None:
            epochs = check_positive_int(epochs, "epochs")
            total_steps = epochs * steps_per_epoch if total_steps is None else total_steps
    elif epochs is not None:
        raise BrainsparseError("epochs given without steps_per_epoch; pass both (or update_every and total_steps)")
    if update_every is not None:
        update_every = check_positive_int(update_every, "update_every")
    if total_steps is not None:
        total_steps = check_positive_int(total_steps, "total_steps")
    init_params = {k: method_options.pop(k) for k in ("beta", "r", "degree") if k in method_options}
    overrides: dict[str, Any] = dict(method_options)
    if init is not None:
        overrides["init"] = init
    if init_params:
        overrides["init_params"] = init_params
    config = resolve_method(method, **overrides)
    if config.sparse and config.dynamic and (update_every is None or total_steps is None):
        missing = " and ".join(n for n, v in (("update_every", update_every), ("total_steps", total_steps)) if v is None)
        raise BrainsparseError(
            f"method {config.name!r} evolves the topology, so it needs {missing}: pass update_every=<optimizer "
            "steps between topology updates> and total_steps=<optimizer steps of the run>, or "
            "steps_per_epoch=<batches per epoch> and epochs=<epochs> (one update per epoch)"
        )
    layers = find_sparse_layers(model, include, exclude) if config.sparse else []
    names = [n for n, _ in layers]
    if chains is None:
        chain_list = infer_chains(model, names)
    else:
        chain_list = [list(c) for c in chains]
        unknown = sorted({n for c in chain_list for n in c} - set(names))
        if unknown:
            raise BrainsparseError(f"chain layer {unknown[0]!r} is not a sparse layer; sparse layers: {', '.join(names)}")
        covered = {n for c in chain_list for n in c}
        chain_list += [[n] for n in names if n not in covered]
    if attention is None:  # attention blocks whose heads NeuroPrune removes as wholes
        attention = infer_attention_blocks(model, names) if config.head_pruning else []
    if seed is None:
        seed = torch.initial_seed() % (2**63)
    return (engine_class or DynamicSparseEngine)(
        model, optimizer, config, density, layers, chain_list, pairs,
        update_every=update_every or 1, total_steps=total_steps, seed=seed, init_data=init_data,
        kernel=kernel, batch_size=batch_size, attention=attention,
    )
