"""The engine: attaches to a model and optimizer, keeps the sparse layers' weights, gradients and
optimizer state zero off their masks, and evolves the masks every ``update_every`` steps.

The masks live in the model (see :mod:`.storage`); the engine keeps counters, the random
generator, the density schedule, per-layer targets and the history. The method's components
are looked up once, at construction (:mod:`.components`); one topology update is
:func:`.update.run_update`.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import topology
from .._memory import release_freed_memory
from .._validation import link_count
from ..errors import BrainsparseError
from ..kernels import choose_kernel
from ..kernels.chain import idle_when
from ..methods import MethodConfig
from ..registry import Score, ScoreInput
from ..scoring.regrowth import GradFactors, add_gradients
from . import state as _state
from . import update as _update
from .components import density_schedule, resolve
from .layer import SparseLayer
from .storage import LinkStorage, MaskedStorage, Storage, switch_path

#: Above this many L3 paths in a layer, exact CH scoring falls back to the matrix form
#: (about 2 s on 2 CPU cores at 1e9 paths: a 1568×1568 layer near 5 % density).
MAX_EXACT_PATHS = 1_000_000_000
#: ``kernel="auto"``: a layer on the sparse path goes back to the masked-dense one only once its
#: density exceeds this factor × the crossover (hysteresis; entering the sparse path needs a
#: density below the crossover itself).
SWITCH_BACK_FACTOR = 1.25


def engine_of(model: nn.Module) -> DynamicSparseEngine | None:
    """The engine that :func:`~brainsparse.sparsify` attached to ``model``, if it is still alive."""
    engine = _ENGINES.get(id(model))
    return engine if engine is not None and engine.model is model else None


class DynamicSparseEngine:
    """Keeps a model's linear layers sparse and evolves their topology (see :func:`sparsify`)."""

    _detached = False  # set by detach(): a kernel switch then installs no hooks

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        method: MethodConfig,
        density: float,
        layers: Sequence[tuple[str, nn.Linear]],
        chains: Sequence[Sequence[str]],
        pairs: Sequence[tuple[str, str]] = (),
        update_every: int = 1,
        total_steps: int | None = None,
        seed: int = 0,
        init_data: Any = None,
        kernel: str = "dense",
        batch_size: int = 32,
        attention: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.method = method
        self.density = 1.0 if not method.sparse else density
        self.update_every = update_every
        self.total_steps = total_steps
        if method.sparse and method.dynamic and total_steps is None:
            raise BrainsparseError(f"method {method.name!r} evolves the topology: total_steps is required")
        self.t_end = int(method.t_end_fraction * total_steps) if total_steps else None
        self.chains = [list(c) for c in chains]
        self.pairs = [tuple(p) for p in pairs]
        self.seed = seed
        self.kernel = kernel
        self.batch_size = batch_size
        # attention blocks (heads, q, k, v, o): NeuroPrune removes redundant heads as wholes and
        # keeps its link penalty to the other (MLP) layers
        self.attention = [dict(b) for b in attention]
        self._attention_layers = {str(b[k]) for b in self.attention for k in ("q", "k", "v", "o")}
        self._head_outputs_of = {str(b["o"]) for b in self.attention}
        self._head_inputs: dict[str, Tensor] = {}
        self.components = resolve(method, kernel)
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.max_exact_paths = MAX_EXACT_PATHS
        self.history: list[dict[str, Any]] = []
        self.layers: dict[str, SparseLayer] = {}
        self._handles: list[Any] = []
        self.density_schedule = density_schedule(
            method, self.density, total_steps, update_every, self.t_end)
        if method.sparse:
            self._build(layers, init_data)
            self._attach()
        _ENGINES[id(model)] = self

    # ------------------------------------------------------------------ set-up
    def _build(self, layers: Sequence[tuple[str, nn.Linear]], init_data: Any) -> None:
        by_name = dict(layers)
        shapes = {n: (m.out_features, m.in_features) for n, m in layers}
        method = self.method
        init = method.init
        base = {n: self.density for n in by_name}
        if init == "erk":
            names = list(by_name)
            for n, d in zip(names, topology.erk_densities([shapes[n] for n in names], self.density)):
                base[n] = d
            init = "uniform"
        start = self.density_schedule.at(0)[1]
        densities = {n: self.layer_density(base[n], start) for n in by_name}
        correlation = None
        if init == "csti":
            if init_data is None:
                raise BrainsparseError(
                    "init 'csti' needs a batch of input data: pass init_data=<tensor (samples, features)> "
                    "or choose another init (uniform, erk, bsw, bsf, brf)"
                )
            if isinstance(init_data, Tensor):
                init_data = init_data.reshape(init_data.shape[0], -1).float()
            # else rows read a block at a time (PixelImages: no float copy of the whole sample)
            correlation = topology.feature_correlation(init_data)
        for chain in self.chains:
            masks = topology.initial_masks(
                [shapes[n] for n in chain], [densities[n] for n in chain], init,
                generator=self.generator, correlation=correlation, **method.init_params,
            )
            for name, mask in zip(chain, masks):
                module = by_name[name]
                mask = mask.to(module.weight.device)
                self.layers[name] = SparseLayer(
                    name=name, storage=self._storage_for(module, mask), density=densities[name],
                    base_density=base[name], target=link_count(densities[name], *shapes[name]),
                    ever_active=mask.clone(), optimizer=self.optimizer,
                )
        # keep module order, independent of chain order
        self.layers = {n: self.layers[n] for n, _ in layers}
        with torch.no_grad():
            for layer in self.layers.values():
                if method.weight_init == "swi":
                    topology.sparse_weight_init(layer.weight, layer.mask, layer.density, generator=self.generator)
                elif method.weight_init == "kaiming":
                    topology.kaiming_init(layer.weight, layer.mask, generator=self.generator)
        self.apply_masks()
        for layer in self.layers.values():
            shape = layer.mask.shape
            use = self.kernel if self.kernel != "auto" else choose_kernel(
                *shape, layer.density, self.batch_size, layer.mask.device.type)
            if use == "sparse":
                self._move(layer)
        release_freed_memory()  # the masks' temporaries and the dense weights left behind

    def _storage_for(self, module: nn.Linear, mask: Tensor) -> Storage:
        """The storage a new sparse layer starts with: the masked path, ``mask`` installed as the
        module's ``weight_mask`` buffer. (An engine for sharded models overrides this.)"""
        return MaskedStorage(module, mask)

    def _replace_module(self, layer: SparseLayer, module: nn.Module) -> None:
        parent_name, _, child = layer.name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, module)

    def _move(self, layer: SparseLayer) -> None:
        """Move ``layer`` to the other path (module, parameter and optimizer state follow)."""
        layer.storage = switch_path(layer.storage, self.optimizer, lambda m: self._replace_module(layer, m))

    def switch_kernel(self, layer: SparseLayer, use: str) -> None:
        """Move ``layer`` to the ``"sparse"`` or ``"dense"`` (masked) path and re-install its hooks."""
        if use == layer.storage.path:
            return
        self._move(layer)
        if not self._detached:
            self._attach_layer(layer)

    _switch_kernel = switch_kernel

    def rechoose_kernels(self) -> dict[str, str]:
        """``kernel="auto"``: after a topology update, move every layer to the path its current
        link density calls for (density schedules cross the crossover). A masked layer goes sparse
        below the crossover; a sparse layer goes back only above ``SWITCH_BACK_FACTOR`` × the
        crossover, so a density hovering near it does not flip the layer at every update.
        Returns ``{layer: new path}`` for the layers that moved."""
        switched: dict[str, str] = {}
        for name, layer in self.layers.items():
            shape = layer.module.out_features, layer.module.in_features
            size = shape[0] * shape[1]
            if size == 0:
                continue
            density = layer.links / size
            if isinstance(layer.storage, LinkStorage):
                density /= SWITCH_BACK_FACTOR  # hysteresis
            use = choose_kernel(*shape, density, self.batch_size, layer.param.device.type)
            if use != layer.storage.path:
                self.switch_kernel(layer, use)
                switched[name] = use
        return switched

    _rechoose_kernels = rechoose_kernels

    # ------------------------------------------------------------------ hooks
    def _attach(self) -> None:
        for layer in self.layers.values():
            self._attach_layer(layer)
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(lambda *_: self._after_optimizer_step()))
        if self.components.auto_kernel:
            self._handles.append(self.model.register_load_state_dict_pre_hook(self._follow_saved_paths))

    def _follow_saved_paths(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        """``kernel="auto"``: before ``model.load_state_dict``, move each layer to the path the
        incoming state has (``<layer>.rows`` of a ``SparseLinear`` or ``<layer>.weight`` of an
        ``nn.Linear``), so the model loads before or after the engine (the optimizer after both)."""
        for name, layer in self.layers.items():
            if f"{prefix}{name}.rows" in state_dict:
                self.switch_kernel(layer, "sparse")
            elif f"{prefix}{name}.weight" in state_dict:
                self.switch_kernel(layer, "dense")

    def _before_update(self) -> bool:
        """True during the batch just before a topology update (the scores' inputs are recorded)."""
        return self.is_update_step(self.step_count + 1)

    def _attach_layer(self, layer: SparseLayer) -> None:
        """(Re-)install the layer's hooks: the storage's gradient hook (masking on the masked path;
        capturing the dense gradient before an update when a score needs it), the activation
        recorder when a score needs activations, and NeuroPrune's head capture."""
        for h in layer.hooks:
            h.remove()
        layer.hooks.clear()
        needs = self.components.needs
        capture = self._before_update if "gradient" in needs else None
        layer.hooks.extend(layer.storage.attach_grad(capture, lambda g: self._keep_grad(layer, g)))
        if "activations" in needs:
            layer.hooks.append(layer.module.register_forward_hook(self._make_activation_hook(layer)))
        if self.method.head_pruning and layer.name in self._head_outputs_of:
            layer.hooks.append(layer.module.register_forward_pre_hook(self._make_head_capture(layer.name)))

    @staticmethod
    def _keep_grad(layer: SparseLayer, grad: Tensor | GradFactors) -> None:
        # summed over the micro-batches of a gradient-accumulation window
        layer.grad_record = add_gradients(layer.grad_record, grad)

    def _make_head_capture(self, name: str):
        """NeuroPrune: the input of an attention block's output projection (the heads' outputs,
        side by side) on the batch just before an update."""

        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if module.training and self._before_update():
                self._head_inputs[name] = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).clone()

        return hook

    def _make_activation_hook(self, layer: SparseLayer):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if module.training and self._before_update():
                # CTRE: inputs and pre-activations of the batch just before an update
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                layer.activations = (x.clone(), output.detach().reshape(-1, output.shape[-1]).clone())

        return idle_when(hook, lambda module: not (module.training and self._before_update()))

    def detach(self) -> None:
        """Remove the hooks this engine installed (masks stay on the weights and in the modules)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for layer in self.layers.values():
            for h in layer.hooks:
                h.remove()
            layer.hooks.clear()
        self._detached = True

    # ------------------------------------------------------------------ masking
    @torch.no_grad()
    def _after_optimizer_step(self) -> None:
        regularizer = self.components.regularizer
        if regularizer is not None and self.optimizer is not None:
            step = float(self.optimizer.param_groups[0]["lr"]) * self.method.regularizer_strength
            for layer in self.layers.values():
                if layer.name not in self._attention_layers:  # NeuroPrune: heads go as wholes
                    layer.storage.regularize(regularizer, step)
        self._mask_weights()

    @torch.no_grad()
    def _mask_weights(self) -> None:
        """After each optimizer step: re-zero weights off-mask (masked path; see
        :meth:`MaskedStorage.after_step`)."""
        for layer in self.layers.values():
            layer.storage.after_step()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero weights, gradients and optimizer state off-mask (the sparse path has no off-mask entries)."""
        for layer in self.layers.values():
            layer.storage.apply_mask(self.optimizer)

    # ------------------------------------------------------------------ schedule
    def is_update_step(self, step: int) -> bool:
        """Whether the topology evolves after optimizer step ``step`` (1-based)."""
        if not (self.method.sparse and self.method.dynamic and self.layers):
            return False
        if step % self.update_every != 0:
            return False
        if self.t_end is not None and step >= self.t_end:
            return False
        return not all(layer.frozen for layer in self.layers.values())

    def layer_density(self, base_density: float, global_density: float) -> float:
        """A layer's density when the network-wide schedule is at ``global_density``."""
        return min(1.0, base_density * global_density / self.density)

    _layer_density = layer_density

    def step(self) -> dict[str, Any] | None:
        """Count one optimizer step; run a topology update when it is due. Returns its record."""
        self.step_count += 1
        if self.is_update_step(self.step_count):
            return self.update()
        return None

    # ------------------------------------------------------------------ update
    def update(self) -> dict[str, Any]:
        """Run one topology update now and return its record.

        Order: gradual pruning to the scheduled density (CHTss, GraNet, NeuroPrune, EM&S) →
        removal of a fraction ζ_t (top-k or soft) → percolation → regrowth to the scheduled count.
        """
        record = _update.run_update(self)
        self.history.append(record)
        return record

    def _set_mask(self, layer: SparseLayer, mask: Tensor, new_links: Tensor | None) -> None:
        """Install an update's ``mask`` on ``layer``; ``new_links`` (masked path) start at weight 0
        with zero optimizer state. (The update's one write to a layer; override points live here.)"""
        layer.storage.set_mask(mask, self.optimizer, fresh=new_links)

    def _score_input(self, layer: SparseLayer, mask: Tensor, score: Score) -> ScoreInput:
        """What ``score`` sees of ``layer`` with ``mask`` as its links (full-layer tensors)."""
        return ScoreInput(
            layer.name, mask, layer.dense_weight,
            grad=layer.grad_record if "gradient" in score.needs else None,
            activations=layer.activations if "activations" in score.needs else None,
            generator=self.generator, method=self.method, max_exact_paths=self.max_exact_paths,
        )

    def _gradual_prune(self, global_density: float) -> dict[str, Tensor]:
        return _update.gradual_prune(self, global_density)

    def _percolation_changes(self, masks: dict[str, Tensor]) -> bool:
        return _update.percolation_changes(self, masks)

    # ------------------------------------------------------------------ reporting and checkpoints
    def report(self) -> dict[str, Any]:
        """Per-layer density, active neurons, overlap and ITOP, plus network-wide totals."""
        return _state.report(self)

    def state_dict(self) -> dict[str, Any]:
        """The engine's own state: counters, generator, density schedule, per-layer targets and
        history. The masks are not in it: they are in ``model.state_dict()``."""
        return _state.engine_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters, generator, schedule and per-layer state (before or after the model's
        ``load_state_dict``); a ``"masks"`` entry (older checkpoints) is installed on the modules."""
        _state.load_engine_state(self, state)


#: model id → its engine, so that :mod:`brainsparse.export` and the callbacks find a model's engine
_ENGINES: weakref.WeakValueDictionary[int, DynamicSparseEngine] = weakref.WeakValueDictionary()
