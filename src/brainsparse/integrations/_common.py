"""What the framework callbacks share: building the engine, fresh or for a resumed run."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..engine import MASK_BUFFER, DynamicSparseEngine, engine_of, sparsify
from ..errors import BrainsparseError
from ..models.llama import llama_sparse_layout

#: the file a Hugging Face checkpoint folder (checkpoint-N/) keeps the engine's state in
ENGINE_FILE = "brainsparse_engine.pt"


def check_kernel(kernel: str) -> str:
    """The callbacks run the masked-dense path only: the frameworks save and load the model's own
    ``state_dict``, whose layout (``weight`` of an ``nn.Linear``) must not change under them."""
    if kernel != "dense":
        raise BrainsparseError(
            f"kernel {kernel!r} is not supported by the framework callbacks; allowed: dense (the sparse path "
            "replaces layers and parameters, which the framework's checkpoints and optimizer would not follow)"
        )
    return kernel


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``): the engine registers its post-step hook on it."""
    inner = optimizer
    while not type(inner).__module__.startswith("torch.") and isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise BrainsparseError(f"the training loop's optimizer ({type(optimizer).__name__}) is not a torch optimizer")
    return inner


def engine_checkpoint(engine: DynamicSparseEngine) -> dict[str, Any]:
    """What a callback saves: the engine's state plus the layers' masks. The masks are also in the
    model's own state_dict (``weight_mask`` buffers), but a framework resuming a run loads that
    into the model before the callback has sparsified it, so those entries find no buffer."""
    state = engine.state_dict()
    state["masks"] = {name: layer.mask.detach().cpu().clone() for name, layer in engine.layers.items()}
    return state


def skip_unowned_masks(model: nn.Module):
    """Let ``model.load_state_dict`` (strict, as Lightning's resume) take a sparsified model's
    checkpoint before the model is sparsified: ``<layer>.weight_mask`` entries of layers that have
    no such buffer yet are left out (the callback's own state carries the masks). Returns the
    hook handle."""

    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        suffix = "." + MASK_BUFFER
        for key in [k for k in state_dict if k.startswith(prefix) and k.endswith(suffix)]:
            owner = key[len(prefix):-len(suffix)]
            try:
                sub = module.get_submodule(owner)
            except AttributeError:
                continue
            if sub._buffers.get(MASK_BUFFER) is None:
                del state_dict[key]

    return model.register_load_state_dict_pre_hook(hook)


def build_engine(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    options: dict[str, Any],
    total_steps: int | None,
    saved: dict[str, Any] | None = None,
) -> DynamicSparseEngine:
    """Sparsify ``model`` (LLaMA blocks via :func:`~brainsparse.train.language_model.sparsify_llama`,
    keeping the model's own weights on the kept links unless ``weight_init`` says otherwise;
    anything else via :func:`~brainsparse.sparsify`) and return its engine.

    ``saved`` is an engine state from a checkpoint: the run is resuming, and the framework has
    already loaded the trained weights (and possibly the optimizer state). Then the engine is built
    without touching the weights (``weight_init="keep"``), takes the checkpoint's masks (from
    ``saved["masks"]``, see :func:`engine_checkpoint`, or from the model's ``weight_mask`` buffers
    when it was sparsified already), generator and counters, and the weights and optimizer state found on entry are put back exactly — building an
    engine draws (and masks with) a fresh topology, which must not leave a trace.
    """
    other = engine_of(model)
    if other is not None and not other._detached:  # noqa: SLF001 - a live engine still hooks the model
        raise BrainsparseError("the model is already sparsified (brainsparse.sparsify was called on it); "
                               "let the callback sparsify it, or train it without the callback")
    options = dict(options)
    if saved is not None:
        if options.get("method") != "dense":
            options["weight_init"] = "keep"
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        optimizer_state = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    chains, _ = llama_sparse_layout(model)
    if chains and not any(k in options for k in ("include", "exclude", "chains", "pairs")):
        from ..train.language_model import sparsify_llama

        if options.get("method") not in ("dense", "neuroprune"):
            # as `brainsparse train --task lm`: the model's own (or pretrained) weights, masked
            options.setdefault("weight_init", "keep")
        engine = sparsify_llama(model, optimizer, total_steps=total_steps, **options)
    else:
        engine = sparsify(model, optimizer, total_steps=total_steps, **options)
    if saved is not None:
        if engine.method.name != saved["method"]["name"]:
            raise BrainsparseError(
                f"the checkpoint's sparse training used method {saved['method']['name']!r}, this callback {engine.method.name!r}"
            )
        engine.load_state_dict(saved)  # counters, generator and (from a callback's file) the masks
        # the weights found on entry; the masks as the saved state (or the entry state) has them
        model.load_state_dict({**model.state_dict(), **weights})
        if optimizer is not None and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
    return engine


def callback_options(method: str, density: float, update_every: int | None, seed: int | None,
                     kernel: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`~brainsparse.sparsify` the callback will pass."""
    if "total_steps" in overrides:
        raise BrainsparseError("total_steps comes from the framework (its number of optimizer steps); do not pass it")
    if "optimizer" in overrides or "model" in overrides:
        raise BrainsparseError("the model and optimizer come from the framework; do not pass them")
    return {"method": method, "density": density, "update_every": update_every, "seed": seed,
            "kernel": check_kernel(kernel), **overrides}
