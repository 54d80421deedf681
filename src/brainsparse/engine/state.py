"""The engine's report and its checkpoint state (counters, generator, schedule, history).

The masks are not part of the engine's state: they are buffers of the model's modules
(``weight_mask`` on a masked-path ``nn.Linear``; the link index buffers of a ``SparseLinear``),
so ``model.state_dict()`` carries them, and the model and the engine load in either order.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import BrainsparseError
from ..percolation import active_hidden_neurons
from ..selection import count

if TYPE_CHECKING:
    from .core import DynamicSparseEngine

#: version of the engine's state layout: 2 = no masks (they are in the model's state_dict)
STATE_FORMAT = 2


def _fraction(mask: Tensor) -> float:
    """The fraction of true entries, as ``mask.float().mean()`` gives it (float32), without the
    float copy of the mask."""
    return float(torch.tensor(float(count(mask)), dtype=torch.float32).div_(mask.numel()))


def report(engine: DynamicSparseEngine) -> dict[str, Any]:
    """Per-layer density, active neurons, overlap and ITOP, plus network-wide totals."""
    masks = {n: layer.mask for n, layer in engine.layers.items()}
    layers: dict[str, Any] = {}
    hidden_total = hidden_active = 0
    for chain in engine.chains:
        chain_masks = [masks[n] for n in chain]
        hidden = active_hidden_neurons(chain_masks)
        for i, name in enumerate(chain):
            layer = engine.layers[name]
            mask = masks[name]
            layers[name] = {
                "shape": list(mask.shape),
                "links": layer.links,
                "target": layer.target,
                "density": layer.links / mask.numel(),
                "active_in": int(mask.any(dim=0).sum()),
                "active_out": int(mask.any(dim=1).sum()),
                "active_neurons": count(hidden[i]),
                "itop": _fraction(layer.ever_active),
                "overlap": layer.last_update.get("overlap"),
                "frozen": layer.frozen,
            }
            hidden_total += mask.shape[0]
            hidden_active += count(hidden[i])
    total_links = sum(v["links"] for v in layers.values())
    total_size = sum(masks[n].numel() for n in engine.layers)
    return {
        "method": engine.method.name,
        "step": engine.step_count,
        "updates": len(engine.history),
        "density": total_links / total_size if total_size else 1.0,
        "active_neuron_rate": hidden_active / hidden_total if hidden_total else 1.0,
        "itop": (sum(v["itop"] for v in layers.values()) / len(layers)) if layers else 1.0,
        "layers": layers,
    }


def engine_state(engine: DynamicSparseEngine) -> dict[str, Any]:
    """Everything the engine needs besides the model to resume the topology evolution exactly."""
    layers = engine.layers
    return {
        "format": STATE_FORMAT,
        "method": engine.method.to_dict(),
        "density": engine.density,
        "update_every": engine.update_every,
        "total_steps": engine.total_steps,
        "seed": engine.seed,
        "step": engine.step_count,
        "generator": engine.generator.get_state(),
        "density_schedule": engine.density_schedule.state_dict(),
        "ever_active": {n: l.ever_active.cpu().clone() for n, l in layers.items()},
        "frozen": {n: l.frozen for n, l in layers.items()},
        "layer_density": {n: l.density for n, l in layers.items()},
        "target": {n: l.target for n, l in layers.items()},
        "last_update": {n: dict(l.last_update) for n, l in layers.items()},
        "history": copy.deepcopy(engine.history),
        "kernels": {n: l.storage.path for n, l in layers.items()},
    }


def load_engine_state(engine: DynamicSparseEngine, state: dict[str, Any]) -> None:
    """Restore :func:`engine_state` into ``engine``.

    A layer the saved run had moved to the other path (``kernel="auto"``) moves too, so that the
    model's state_dict (weight + weight_mask vs values + link structure) fits it (loading the
    model's state_dict moves it as well; load the optimizer after either). A ``"masks"`` entry (checkpoints from before the
    masks moved into the model, or a rank broadcast) is installed on the modules.
    """
    names = set(state["target"])
    if names != set(engine.layers):
        raise BrainsparseError(
            f"checkpoint layers {sorted(names)} do not match this model's sparse layers {sorted(engine.layers)}"
        )
    engine.step_count = int(state["step"])
    engine.generator.set_state(state["generator"])
    engine.history = copy.deepcopy(state["history"])
    if "density_schedule" in state:
        engine.density_schedule.load_state_dict(state["density_schedule"])
    kernels = state.get("kernels", {})  # absent in checkpoints from before kernel switching
    masks = state.get("masks", {})
    for name, layer in engine.layers.items():
        use = kernels.get(name)
        mask = masks.get(name)
        if use is not None and use != layer.storage.path:
            if mask is not None and use == "sparse":
                layer.storage.load_mask(mask.to(layer.mask.device))  # the link structure follows the saved mask
            engine.switch_kernel(layer, use)
        if mask is not None:
            layer.storage.load_mask(mask.to(layer.mask.device))
        device = layer.mask.device
        layer.ever_active = state["ever_active"][name].to(device).bool()
        layer.frozen = bool(state["frozen"][name])
        layer.density = float(state["layer_density"][name])
        layer.target = int(state["target"][name])
        layer.last_update = dict(state["last_update"][name])
    if masks:  # masks from the state: weights and optimizer state follow them (as before the move)
        with torch.no_grad():
            engine.apply_masks()
    # otherwise the weights, masks and optimizer state are the model's and the optimizer's own,
    # loaded before or after this: nothing here may touch them


def checkpoint_masks(model_state: dict[str, Any], engine_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bool masks of a saved run's sparse layers, without building the model: from the
    model's state_dict (``<layer>.weight_mask`` on the masked path; ``<layer>.rows`` / ``.cols``
    of a ``SparseLinear``, shaped like the layer's ``ever_active``), or from an engine state that
    still holds them (``"masks"``, checkpoints from before the masks moved into the model)."""
    if isinstance(engine_state.get("masks"), dict):
        return {str(n): m for n, m in engine_state["masks"].items()}
    shapes = {str(n): tuple(t.shape) for n, t in engine_state.get("ever_active", {}).items() if torch.is_tensor(t)}
    masks: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        mask = model_state.get(f"{name}.weight_mask")
        if torch.is_tensor(mask):
            masks[name] = mask
            continue
        rows, cols = model_state.get(f"{name}.rows"), model_state.get(f"{name}.cols")
        if torch.is_tensor(rows) and torch.is_tensor(cols) and len(shape) == 2:
            mask = torch.zeros(shape, dtype=torch.bool)
            mask[rows.long().cpu(), cols.long().cpu()] = True
            masks[name] = mask
    return masks
