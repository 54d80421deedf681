"""The engine: owns the masks of a model's sparse layers and evolves them during training.

It keeps weights, gradients and optimizer state zero off-mask at all times (a gradient hook and
an optimizer post-step hook) and, every ``update_every`` steps until ``t_end``, runs one
topology update (design.md):

1. removal scores → keep-selection (top-k or soft) of ``links − int(ζ_t · links)`` links;
2. percolation over the layer chains (if the method asks for it);
3. regrowth scores → selection of ``target − links`` absent links;
4. weights and optimizer state of removed links are zeroed; new links start at zero;
5. metrics: removed/regrown counts, overlap, active neurons, ITOP.

The pieces are the pure functions of :mod:`brainsparse.topology`, :mod:`brainsparse.scoring`,
:mod:`brainsparse.selection`, :mod:`brainsparse.percolation` and :mod:`brainsparse.schedules`.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import topology
from ._validation import check_choice, check_density, check_positive_int, link_count
from .errors import BrainsparseError
from .kernels import SparseLinear, choose_kernel
from .layers import find_sparse_layers, infer_attention_blocks, infer_chains
from .methods import MethodConfig, resolve_method
from .percolation import active_hidden_neurons, percolate
from .neuroprune import (
    head_outputs, preferential_attachment_shrink, preferential_attachment_shrink_links, redundant_heads, remove_heads,
)
from .metrics.training import overlap_rate
from .schedules import density_at, drop_fraction, is_epitopological_minimum, linear_temperature
from .scoring import ch_l3, l3_path_count
from .scoring.regrowth import cosine_similarity_scores, gradient_magnitude, random_scores
from .scoring.removal import removal_scores
from .selection import count, select, select_among, select_index

_CH_VARIANTS = {"ch3_l3": "CH3", "ch2_l3": "CH2", "ch3.1_l3": "CH3.1"}
#: Above this many L3 paths in a layer, exact CH scoring falls back to the matrix form
#: (about 2 s on 2 CPU cores at 1e9 paths: a 1568×1568 layer near 5 % density).
MAX_EXACT_PATHS = 1_000_000_000
#: ``kernel="auto"``: a layer on the sparse path goes back to the masked-dense one only once its
#: density exceeds this factor × the crossover (hysteresis; entering the sparse path needs a
#: density below the crossover itself).
SWITCH_BACK_FACTOR = 1.25


@dataclass
class SparseLayer:
    """One sparsified linear layer and its bookkeeping."""

    name: str
    module: nn.Linear
    mask: Tensor
    density: float
    target: int
    ever_active: Tensor
    frozen: bool = False
    base_density: float = 0.0  # the layer's density at the end of any density schedule
    dense_grad: Tensor | None = None
    activations: tuple[Tensor, Tensor] | None = None  # (inputs, pre-activations) for CTRE
    last_update: dict[str, Any] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list, repr=False)  # this layer's hook handles (path-specific)
    mask_float: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.set_mask(self.mask)

    @property
    def sparse_kernel(self) -> bool:
        """True when the layer runs on the sparse path (a :class:`SparseLinear`)."""
        return isinstance(self.module, SparseLinear)

    def set_mask(self, mask: Tensor) -> None:
        """Replace the mask (bool) and its float copy used for fast multiplication."""
        self.mask = mask.bool()
        # float copy for fast masking on the dense path; the sparse path never masks
        self.mask_float = self.mask.new_empty(0) if self.sparse_kernel else self.mask.to(self.param.dtype)

    @property
    def param(self) -> nn.Parameter:
        """The parameter the optimizer updates: the dense weight, or the link values."""
        return self.module.values if self.sparse_kernel else self.module.weight

    @property
    def weight(self) -> nn.Parameter:
        """The dense weight (dense path only)."""
        return self.module.weight

    def dense_weight(self) -> Tensor:
        """The (out, in) weight, zero off-mask, on either path (a copy on the sparse path)."""
        return self.module.dense_weight() if self.sparse_kernel else self.module.weight.detach()

    @torch.no_grad()
    def write_dense_weight(self, weight: Tensor) -> None:
        """Set the weight at the links from a dense (out, in) tensor."""
        if self.sparse_kernel:
            self.module.values.copy_(self.module.structure.gather(weight))
        else:
            self.module.weight.copy_(weight)

    @property
    def links(self) -> int:
        return count(self.mask)


#: model id → its engine, so that :mod:`brainsparse.export` finds the engine of a model
_ENGINES: weakref.WeakValueDictionary[int, DynamicSparseEngine] = weakref.WeakValueDictionary()


def engine_of(model: nn.Module) -> DynamicSparseEngine | None:
    """The engine that :func:`sparsify` attached to ``model``, if it is still alive."""
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
        init_data: Tensor | None = None,
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
        self._head_inputs: dict[str, Tensor] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.max_exact_paths = MAX_EXACT_PATHS
        self._fallbacks: set[str] = set()
        self.history: list[dict[str, Any]] = []
        self.layers: dict[str, SparseLayer] = {}
        self._handles: list[Any] = []
        if method.sparse:
            self._build(layers, init_data)
            self._attach()
        _ENGINES[id(model)] = self

    # ------------------------------------------------------------------ set-up
    def _build(self, layers: Sequence[tuple[str, nn.Linear]], init_data: Tensor | None) -> None:
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
        start = self._scheduled_density(0)[1]
        densities = {n: self._layer_density(base[n], start) for n in by_name}
        correlation = None
        if init == "csti":
            if init_data is None:
                raise BrainsparseError(
                    "init 'csti' needs a batch of input data: pass init_data=<tensor (samples, features)> "
                    "or choose another init (uniform, erk, bsw, bsf, brf)"
                )
            correlation = topology.feature_correlation(init_data.reshape(init_data.shape[0], -1).float())
        for chain in self.chains:
            masks = topology.initial_masks(
                [shapes[n] for n in chain],
                [densities[n] for n in chain],
                init,
                generator=self.generator,
                correlation=correlation,
                **method.init_params,
            )
            for name, mask in zip(chain, masks):
                module = by_name[name]
                mask = mask.to(module.weight.device)
                self.layers[name] = SparseLayer(
                    name=name,
                    module=module,
                    mask=mask,
                    density=densities[name],
                    base_density=base[name],
                    target=link_count(densities[name], *shapes[name]),
                    ever_active=mask.clone(),
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
                self._to_sparse_kernel(layer)

    def _swap_param(self, old: nn.Parameter, new: nn.Parameter) -> None:
        """Make the optimizer update ``new`` instead of ``old``, keeping ``old``'s state."""
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        state = self.optimizer.state.pop(old, None)
        if state:
            self.optimizer.state[new] = state

    def _replace_module(self, layer: SparseLayer, module: nn.Module) -> None:
        parent_name, _, child = layer.name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, module)
        layer.module = module

    @torch.no_grad()
    def _to_sparse_kernel(self, layer: SparseLayer) -> None:
        """Replace the layer's nn.Linear by a SparseLinear holding only the links; the optimizer
        then updates (and keeps state for) the link values only."""
        old = layer.module.weight
        sparse = SparseLinear.from_linear(layer.module, layer.mask)
        self._replace_module(layer, sparse)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["params"] = [sparse.values if p is old else p for p in group["params"]]
            state = self.optimizer.state.pop(old, None)
            if state:
                self.optimizer.state[sparse.values] = {
                    k: sparse.structure.gather(v) if torch.is_tensor(v) and v.shape == old.shape else v
                    for k, v in state.items()
                }
        layer.set_mask(layer.mask)

    @torch.no_grad()
    def _to_masked_kernel(self, layer: SparseLayer) -> None:
        """The inverse of :meth:`_to_sparse_kernel`: a plain ``nn.Linear`` whose dense weight holds
        the link values (zero off-mask), sharing the bias Parameter; per-link optimizer state is
        scattered back to dense tensors (zero off-mask, as the masked path keeps it)."""
        sparse = layer.module
        old = sparse.values
        structure = sparse.structure
        linear = nn.Linear(sparse.in_features, sparse.out_features, bias=sparse.bias is not None,
                           device="meta", dtype=old.dtype)
        linear.weight = nn.Parameter(structure.to_dense(old.detach()), requires_grad=old.requires_grad)
        if sparse.bias is not None:
            linear.bias = sparse.bias
        self._replace_module(layer, linear)
        if self.optimizer is not None:
            new = linear.weight
            for group in self.optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
            state = self.optimizer.state.pop(old, None)
            if state:
                self.optimizer.state[new] = {
                    k: structure.to_dense(v) if torch.is_tensor(v) and v.shape == old.shape else v
                    for k, v in state.items()
                }
        layer.set_mask(layer.mask)

    def _switch_kernel(self, layer: SparseLayer, use: str) -> None:
        """Move ``layer`` to the ``"sparse"`` or ``"dense"`` (masked) path and re-install its hooks."""
        if use == ("sparse" if layer.sparse_kernel else "dense"):
            return
        if use == "sparse":
            self._to_sparse_kernel(layer)
        else:
            self._to_masked_kernel(layer)
        if not self._detached:
            self._attach_layer(layer)

    def _rechoose_kernels(self) -> dict[str, str]:
        """``kernel="auto"``: after a topology update, move every layer to the path its current
        link density calls for (density schedules cross the crossover). A masked layer goes sparse
        below the crossover; a sparse layer goes back only above ``SWITCH_BACK_FACTOR`` × the
        crossover, so a density hovering near it does not flip the layer at every update.
        Returns ``{layer: new path}`` for the layers that moved."""
        switched: dict[str, str] = {}
        for name, layer in self.layers.items():
            size = layer.mask.numel()
            if size == 0:
                continue
            density = layer.links / size
            if layer.sparse_kernel:
                density /= SWITCH_BACK_FACTOR  # hysteresis
            use = choose_kernel(*layer.mask.shape, density, self.batch_size, layer.mask.device.type)
            if use != ("sparse" if layer.sparse_kernel else "dense"):
                self._switch_kernel(layer, use)
                switched[name] = use
        return switched

    def _attach(self) -> None:
        for layer in self.layers.values():
            self._attach_layer(layer)
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_post_hook(lambda *_: self._after_optimizer_step()))

    def _attach_layer(self, layer: SparseLayer) -> None:
        """(Re-)install the layer's hooks, which depend on its path: the masked path masks the
        dense weight's gradient (and keeps it on the batch before a RigL/MEST update); the sparse
        path forms that dense gradient from a forward hook; CTRE reads activations on either."""
        for h in layer.hooks:
            h.remove()
        layer.hooks.clear()
        if layer.sparse_kernel:
            if self._needs_dense_grad():
                layer.hooks.append(layer.module.register_forward_hook(self._make_sparse_grad_capture(layer)))
        else:
            layer.hooks.append(layer.weight.register_hook(self._make_grad_hook(layer)))
        if self.method.regrowth == "cosine":
            layer.hooks.append(layer.module.register_forward_hook(self._make_activation_hook(layer)))
        if self.method.head_pruning and any(b["o"] == layer.name for b in self.attention):
            layer.hooks.append(layer.module.register_forward_pre_hook(self._make_head_capture(layer.name)))

    def _make_head_capture(self, name: str):
        """NeuroPrune: the input of an attention block's output projection (the heads' outputs,
        side by side) on the batch just before an update."""

        def hook(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if module.training and self.is_update_step(self.step_count + 1):
                self._head_inputs[name] = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).clone()

        return hook

    def _make_activation_hook(self, layer: SparseLayer):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if module.training and self.is_update_step(self.step_count + 1):
                # CTRE: inputs and pre-activations of the batch just before an update
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
                layer.activations = (x.clone(), output.detach().reshape(-1, output.shape[-1]).clone())

        return hook

    def _needs_dense_grad(self) -> bool:
        return self.method.regrowth == "gradient" or self.method.removal == "mest"

    def _make_grad_hook(self, layer: SparseLayer):
        def hook(grad: Tensor) -> Tensor:
            if self._needs_dense_grad() and self.is_update_step(self.step_count + 1):
                # RigL/MEST: keep the dense gradient of the batch just before an update [RigL],
                # summed over the micro-batches of a gradient-accumulation window
                layer.dense_grad = grad.detach().clone() if layer.dense_grad is None else layer.dense_grad + grad.detach()
            return grad * layer.mask_float

        return hook

    def _make_sparse_grad_capture(self, layer: SparseLayer):
        """Sparse path: the dense gradient ∂L/∂W = gyᵀ x, formed only for the batch before an update."""

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not (module.training and output.requires_grad and self.is_update_step(self.step_count + 1)):
                return
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])

            def on_grad(gy: Tensor) -> None:
                grad = gy.detach().reshape(-1, gy.shape[-1]).T @ x
                layer.dense_grad = grad if layer.dense_grad is None else layer.dense_grad + grad  # accumulation

            output.register_hook(on_grad)

        return hook

    def detach(self) -> None:
        """Remove the hooks this engine installed (masks stay on the weights)."""
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
        if self.method.regularizer == "preferential_attachment" and self.optimizer is not None:
            lr = float(self.optimizer.param_groups[0]["lr"])
            for layer in self.layers.values():
                if layer.name in self._attention_layers:
                    continue  # NeuroPrune: the penalty acts on the MLP blocks; heads go as wholes
                step = lr * self.method.regularizer_strength
                if layer.sparse_kernel:  # on the links themselves: no dense (out, in) temporaries
                    s = layer.module.structure
                    layer.module.values.copy_(
                        preferential_attachment_shrink_links(layer.module.values, s.rows, s.cols, s.shape, step)
                    )
                    continue
                layer.write_dense_weight(preferential_attachment_shrink(layer.dense_weight(), layer.mask, step))
        self._mask_weights()

    @torch.no_grad()
    def _mask_weights(self) -> None:
        """After each optimizer step: re-zero weights off-mask.

        Gradients are masked by the hook, so optimizer state off-mask stays exactly zero for
        SGD (momentum, weight decay), Adam, AdamW and the other torch optimizers; only the
        weights are re-masked here (cheap), in case an optimizer moves a zero weight.
        """
        for layer in self.layers.values():
            if not layer.sparse_kernel:
                layer.weight.mul_(layer.mask_float)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero weights, gradients and optimizer state off-mask (the sparse path has no off-mask entries)."""
        for layer in self.layers.values():
            if layer.sparse_kernel:
                continue
            w = layer.weight
            w.mul_(layer.mask)
            if w.grad is not None:
                w.grad.mul_(layer.mask)
            if self.optimizer is not None:
                for value in self.optimizer.state.get(w, {}).values():
                    if torch.is_tensor(value) and value.shape == w.shape:
                        value.mul_(layer.mask)

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

    def _layer_density(self, base_density: float, global_density: float) -> float:
        """A layer's density when the network-wide schedule is at ``global_density``."""
        return min(1.0, base_density * global_density / self.density)

    def _scheduled_density(self, step: int) -> tuple[float | None, float]:
        """(density to prune to before the update or None, density after the update) [schedules]."""
        m = self.method
        if not m.sparse or m.density_schedule == "constant":
            return None, self.density
        if m.density_schedule == "ems":
            # EM&S (MEST): 5 % extra until 60 % of T_end, then 2.5 %, then the target at the last update
            t_end = self.t_end or 0
            if step <= 0.6 * t_end:
                extra = m.ems_extra[0]
            elif step < t_end - self.update_every:
                extra = m.ems_extra[1]
            else:
                extra = 0.0
            d = min(1.0, self.density + extra)  # shrink to d first (a no-op between EM&S steps)
            return d, d
        if self.total_steps is None:
            raise BrainsparseError(f"density schedule {m.density_schedule!r} needs total_steps")
        start = m.initial_density if m.initial_density is not None else self.density
        n_updates = max(1, int(m.prune_end_fraction * self.total_steps) // self.update_every)
        d = density_at(step // self.update_every, n_updates, start, self.density, m.density_schedule)
        return d, d

    def step(self) -> dict[str, Any] | None:
        """Count one optimizer step; run a topology update when it is due. Returns its record."""
        self.step_count += 1
        if self.is_update_step(self.step_count):
            return self.update()
        return None

    # ------------------------------------------------------------------ update
    def _scores_for_removal(self, layer: SparseLayer, mask: Tensor, kind: str) -> Tensor:
        grad = layer.dense_grad if kind == "mest" else None
        return removal_scores(kind, layer.dense_weight(), mask, grad)

    def _prune(self, layer: SparseLayer, mask: Tensor, n_links: int, kind: str) -> Tensor:
        """Keep the ``n_links`` best links of ``mask`` by the removal score ``kind`` (hard rule)."""
        if count(mask) <= n_links:
            return mask
        scores = self._scores_for_removal(layer, mask, kind)
        return select(scores, n_links, mask, rule="topk", generator=self.generator, fallback=mask)

    def _prune_heads(self, masks: dict[str, Tensor]) -> dict[str, list[int]]:
        """NeuroPrune: in every attention block, the heads outside a dominating set of the graph
        "outputs nearly duplicate" lose all their links (q/k/v rows, o columns); ``masks`` (the
        shrunk masks so far) is updated in place. Returns ``{block: removed heads}``."""
        removed: dict[str, list[int]] = {}
        for block in self.attention:
            inputs = self._head_inputs.pop(str(block["o"]), None)
            if inputs is None:
                continue
            heads = int(block["heads"])
            o_mask = masks.get(str(block["o"]), self.layers[str(block["o"])].mask)
            width = o_mask.shape[1] // heads
            alive = [h for h in range(heads) if o_mask[:, h * width : (h + 1) * width].any()]
            if len(alive) < 2:
                continue
            keep = {alive[i] for i in redundant_heads(head_outputs(inputs, heads)[alive], self.method.head_threshold)}
            gone = [h for h in alive if h not in keep]
            if gone:
                current = {str(block[k]): masks.get(str(block[k]), self.layers[str(block[k])].mask) for k in "qkvo"}
                masks.update(remove_heads(current, block, gone))
                removed[str(block["name"])] = gone
        return removed

    def _gradual_prune(self, global_density: float) -> dict[str, Tensor]:
        """Masks shrunk to the scheduled density by the prune score (hard rule): per layer, or
        with one threshold across all layers when the method's prune scope is global [GraNet]."""
        kind = self.method.prune_score
        targets = {
            n: link_count(self._layer_density(l.base_density, global_density), *l.mask.shape)
            for n, l in self.layers.items()
        }
        if self.method.prune_scope == "layer":
            return {n: self._prune(l, l.mask, targets[n], kind) for n, l in self.layers.items()}
        total = sum(targets.values())
        if sum(l.links for l in self.layers.values()) <= total:
            return {}
        # global magnitude pruning: the `total` best links of the whole network by one ranking
        values = [self._scores_for_removal(l, l.mask, kind)[l.mask] for l in self.layers.values()]
        sizes = [v.numel() for v in values]
        keep = select_among(torch.cat([v.float().cpu() for v in values]), total, rule="topk", generator=self.generator)
        out: dict[str, Tensor] = {}
        for i, ((name, layer), part) in enumerate(zip(self.layers.items(), torch.split(keep, sizes))):
            if not part.any() and part.numel():  # never empty a layer: keep its best link
                part = part.clone()
                part[int(torch.argmax(values[i]))] = True
            flat = layer.mask.reshape(-1).nonzero().squeeze(1)
            mask = torch.zeros_like(layer.mask)
            mask.view(-1)[flat[part.to(flat.device)]] = True
            out[name] = mask
        return out

    def _removal_keep(self, layer: SparseLayer, mask: Tensor, n_keep: int, temperature: float) -> Tensor:
        if layer.frozen:
            return mask.clone()
        if layer.sparse_kernel and mask is layer.mask and self.method.removal == "magnitude":
            # on the links themselves: |W| in row-major link order, the order of the dense
            # scores' candidates, so the choice (and the random numbers drawn) is the same
            structure = layer.module.structure
            if n_keep >= structure.nnz:
                return mask.clone()
            keep = select_among(
                layer.module.values.detach().abs().float(), n_keep, rule=self.method.removal_rule,
                temperature=temperature, generator=self.generator,
            )
            kept = torch.zeros_like(mask)
            kept.view(-1)[structure.keys()[keep].to(mask.device)] = True
            return kept
        if n_keep >= count(mask):
            return mask.clone()
        scores = self._scores_for_removal(layer, mask, self.method.removal)
        return select(
            scores, n_keep, mask, rule=self.method.removal_rule, temperature=temperature,
            generator=self.generator, fallback=mask,
        )

    def _regrowth_scores(self, layer: SparseLayer, kept: Tensor) -> Tensor:
        kind = self.method.regrowth
        if kind == "random":
            return random_scores(kept, generator=self.generator)
        if kind == "gradient":
            if layer.dense_grad is None:
                raise BrainsparseError(
                    f"layer {layer.name}: gradient regrowth needs a backward pass before the update step"
                )
            return gradient_magnitude(layer.dense_grad, kept)
        if kind == "cosine":
            if layer.activations is None:
                raise BrainsparseError(
                    f"layer {layer.name}: cosine regrowth needs a training forward pass before the update step"
                )
            return cosine_similarity_scores(*layer.activations, kept)
        exact = self.method.regrowth_exact
        links = count(kept)
        max_out = int(torch.count_nonzero(kept, dim=1).max()) if links else 0
        max_in = int(torch.count_nonzero(kept, dim=0).max()) if links else 0
        cheap = links * max_out * max_in <= self.max_exact_paths
        if exact and not cheap and l3_path_count(kept) > self.max_exact_paths:
            # the exact form costs one step per L3 path; past the budget use the matrix form
            exact = False
            self._fallbacks.add(layer.name)
        return ch_l3(kept.cpu(), variant=_CH_VARIANTS[kind], exact=exact).to(kept.device)

    def _percolation_changes(self, masks: dict[str, Tensor]) -> bool:
        """Whether :func:`percolate` would remove any link: a hidden neuron of a chain with
        incoming but no outgoing links (or the reverse), or an output of an elementwise pair
        with links in one layer and none in the other. Two row/column reductions per layer, so
        the usual update, where nothing percolates, skips the full fixed-point sweeps."""
        rows: dict[str, Tensor] = {}
        cols: dict[str, Tensor] = {}

        def has_rows(name: str) -> Tensor:
            if name not in rows:
                rows[name] = masks[name].any(dim=1)
            return rows[name]

        def has_cols(name: str) -> Tensor:
            if name not in cols:
                cols[name] = masks[name].any(dim=0)
            return cols[name]

        for chain in self.chains:
            for first, second in zip(chain[:-1], chain[1:]):
                if not torch.equal(has_rows(first), has_cols(second)):
                    return True
        return any(not torch.equal(has_rows(a), has_rows(b)) for a, b in self.pairs)

    def _active_neurons(self, masks: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per layer: (active output rows, active input columns) after percolation."""
        active: dict[str, tuple[Tensor, Tensor]] = {}
        for chain in self.chains:
            chain_masks = [masks[n] for n in chain]
            hidden = active_hidden_neurons(chain_masks)
            for i, name in enumerate(chain):
                rows = hidden[i] if i + 1 < len(chain) else torch.ones_like(hidden[i])
                cols = hidden[i - 1] if i > 0 else torch.ones(chain_masks[i].shape[1], dtype=torch.bool, device=rows.device)
                active[name] = (rows, cols)
        for a, b in self.pairs:
            # outputs of an elementwise pair (q/k, gate/up) multiply: a dimension is active only
            # where both partners have links (and their chains keep it)
            both = active[a][0] & active[b][0] & masks[a].any(dim=1) & masks[b].any(dim=1)
            active[a] = (both, active[a][1])
            active[b] = (both, active[b][1])
        return active

    def _explore(self, grown: Tensor, removed: Tensor, kept: Tensor) -> Tensor:
        """CTRE (simultaneous): links re-added right after removal are swapped for random new ones."""
        readded = grown & removed
        n = count(readded)
        if n == 0:
            return grown
        grown = grown & ~readded
        free = ~kept & ~grown & ~removed
        n = min(n, count(free))
        pick = select(torch.ones(free.shape, device=free.device), n, free, generator=self.generator)
        return grown | pick

    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """Run one topology update now and return its record.

        Order: gradual pruning to the scheduled density (CHTss, GraNet, NeuroPrune, EM&S) →
        removal of a fraction ζ_t (top-k or soft) → percolation → regrowth to the scheduled count.
        """
        started = time.perf_counter()
        step = self.step_count
        t_end = self.t_end or max(step, 1)
        zeta = drop_fraction(step, t_end, self.method.drop_fraction, self.method.drop_schedule)
        temperature = linear_temperature(step, t_end, *self.method.removal_temperature)
        prune_to, final = self._scheduled_density(step)
        before = {n: layer.mask.clone() for n, layer in self.layers.items()}
        n_before = {n: count(m) for n, m in before.items()}

        kept: dict[str, Tensor] = {}
        pruned: dict[str, int] = {}
        self._fallbacks.clear()
        shrunk = self._gradual_prune(prune_to) if prune_to is not None else {}
        heads_removed = self._prune_heads(shrunk) if self.method.head_pruning else {}
        share_of_global = prune_to is not None and self.method.prune_scope == "global"
        for name, layer in self.layers.items():
            mask = shrunk.get(name, layer.mask)
            n_on = count(mask) if name in shrunk else n_before[name]
            pruned[name] = n_before[name] - n_on
            # every update removes a fraction ζ_t by the removal score, also between density steps
            n_keep = n_on - int(n_on * zeta)
            kept[name] = self._removal_keep(layer, mask, n_keep, temperature)
            if share_of_global:  # the layer keeps the share the global threshold left it
                layer.target = n_on
                layer.density = n_on / mask.numel()
            else:
                layer.density = self._layer_density(layer.base_density, final)
                layer.target = link_count(layer.density, *mask.shape)
        if self.method.percolation and self._percolation_changes(kept):
            kept = percolate(kept, self.chains, self.pairs)
        active = self._active_neurons(kept)

        record: dict[str, Any] = {
            "step": step, "drop_fraction": zeta, "temperature": temperature, "density": final, "layers": {},
        }
        if heads_removed:
            record["heads_removed"] = heads_removed
        for name, layer in self.layers.items():
            # m1 ⊆ before and grown ∩ m1 = ∅ throughout: links are only removed from `before`,
            # and regrowth picks among ~m1; so counts and the overlap need no dense temporaries
            m1 = kept[name]
            n_kept = count(m1)
            n_grow = 0 if self.method.regrowth == "none" else layer.target - n_kept
            grown = torch.zeros(0, dtype=torch.int64, device=m1.device)  # flat indices of new links
            revived = 0
            if n_grow > 0:
                scores = self._regrowth_scores(layer, m1)
                rows, cols = active[name]
                between_active = rows[:, None] & cols[None, :]
                grown = select_index(
                    scores, n_grow, ~m1, rule=self.method.regrowth_rule,
                    temperature=self.method.regrowth_temperature, generator=self.generator,
                    fallback=between_active,
                )
                if self.method.exploration == "simultaneous":
                    grown_mask = torch.zeros_like(m1)
                    grown_mask.view(-1)[grown] = True
                    grown_mask = self._explore(grown_mask, before[name] & ~m1, m1)
                    grown = grown_mask.view(-1).nonzero().squeeze(1)
                # links that had to touch a neuron percolation removed (no room between active ones)
                if self.method.percolation:
                    revived = grown.numel() - count(between_active.view(-1)[grown])
            elif n_grow < 0:  # more links than the target: drop the weakest
                m1 = self._prune(layer, m1, layer.target, self.method.removal)
                n_kept = count(m1)
            if self.method.regrowth == "none":
                layer.target = n_kept
            new_mask = m1.clone(memory_format=torch.contiguous_format)
            new_mask.view(-1)[grown] = True  # m1 | grown
            n_removed, n_grown = n_before[name] - n_kept, grown.numel()
            # |removed ∩ regrown| / |regrown|, read at the regrown positions (removed = before there)
            removed_at_grown = before[name].view(-1)[grown]
            overlap = overlap_rate(removed_at_grown, torch.ones_like(removed_at_grown))
            new_links = None if layer.sparse_kernel else new_mask & ~before[name]
            self._set_mask(layer, new_mask, new_links=new_links)
            layer.ever_active |= new_mask
            layer.dense_grad = None
            layer.activations = None
            was_frozen = layer.frozen
            if self.method.early_stop is not None and not layer.frozen and n_grown > 0:
                layer.frozen = is_epitopological_minimum(overlap, self.method.early_stop)
            layer.last_update = {
                "removed": n_removed, "regrown": n_grown, "pruned": pruned[name], "overlap": overlap,
                "links": layer.links, "target": layer.target, "frozen": layer.frozen, "revived": revived,
            }
            if name in self._fallbacks:
                layer.last_update["ch_form"] = "matrix (exact form past max_exact_paths)"
            record["layers"][name] = dict(layer.last_update, froze_now=layer.frozen and not was_frozen)
        if self.kernel == "auto":
            switched = self._rechoose_kernels()
            if switched:
                record["kernel_switch"] = switched
        record["time_s"] = time.perf_counter() - started
        self.history.append(record)
        return record

    @torch.no_grad()
    def _set_mask(self, layer: SparseLayer, mask: Tensor, new_links: Tensor | None) -> None:
        """Install ``mask``; ``new_links`` (dense path only) start at weight 0 and zero state."""
        if layer.sparse_kernel:
            # kept links keep value and optimizer state, new links start at 0, removed ones vanish
            old = layer.module.values
            old_count = old.numel()
            layer.module.set_structure(mask, optimizer=self.optimizer)
            if old.numel() != old_count:
                # a new link count (density schedules): a fresh Parameter, since autograd caches
                # a leaf's shape; the optimizer follows it with its remapped state
                new = nn.Parameter(old.detach().clone())
                self._swap_param(old, new)
                layer.module.values = new
            layer.set_mask(mask)
            return
        layer.set_mask(mask)
        w = layer.weight
        w.masked_fill_(new_links, 0.0)  # new links start at weight 0
        if self.optimizer is not None:
            for value in self.optimizer.state.get(w, {}).values():
                if torch.is_tensor(value) and value.shape == w.shape:
                    value.masked_fill_(new_links, 0.0)  # and with fresh optimizer state
        self.apply_masks()

    # ------------------------------------------------------------------ reporting
    def report(self) -> dict[str, Any]:
        """Per-layer density, active neurons, overlap and ITOP, plus network-wide totals."""
        masks = {n: layer.mask for n, layer in self.layers.items()}
        layers: dict[str, Any] = {}
        hidden_total = hidden_active = 0
        for chain in self.chains:
            chain_masks = [masks[n] for n in chain]
            hidden = active_hidden_neurons(chain_masks)
            for i, name in enumerate(chain):
                layer = self.layers[name]
                mask = masks[name]
                layers[name] = {
                    "shape": list(mask.shape),
                    "links": layer.links,
                    "target": layer.target,
                    "density": layer.links / mask.numel(),
                    "active_in": int(mask.any(dim=0).sum()),
                    "active_out": int(mask.any(dim=1).sum()),
                    "active_neurons": count(hidden[i]),
                    "itop": float(layer.ever_active.float().mean()),
                    "overlap": layer.last_update.get("overlap"),
                    "frozen": layer.frozen,
                }
                hidden_total += mask.shape[0]
                hidden_active += count(hidden[i])
        total_links = sum(v["links"] for v in layers.values())
        total_size = sum(layer.mask.numel() for layer in self.layers.values())
        return {
            "method": self.method.name,
            "step": self.step_count,
            "updates": len(self.history),
            "density": total_links / total_size if total_size else 1.0,
            "active_neuron_rate": hidden_active / hidden_total if hidden_total else 1.0,
            "itop": (sum(v["itop"] for v in layers.values()) / len(layers)) if layers else 1.0,
            "layers": layers,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the topology evolution exactly."""
        return {
            "method": self.method.to_dict(),
            "density": self.density,
            "update_every": self.update_every,
            "total_steps": self.total_steps,
            "seed": self.seed,
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "masks": {n: l.mask.cpu().clone() for n, l in self.layers.items()},
            "ever_active": {n: l.ever_active.cpu().clone() for n, l in self.layers.items()},
            "frozen": {n: l.frozen for n, l in self.layers.items()},
            "layer_density": {n: l.density for n, l in self.layers.items()},
            "target": {n: l.target for n, l in self.layers.items()},
            "last_update": {n: dict(l.last_update) for n, l in self.layers.items()},
            "history": copy.deepcopy(self.history),
            "kernels": {n: "sparse" if l.sparse_kernel else "dense" for n, l in self.layers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore masks, counters and the random generator; re-applies the masks."""
        names = set(state["masks"])
        if names != set(self.layers):
            raise BrainsparseError(
                f"checkpoint layers {sorted(names)} do not match this model's sparse layers {sorted(self.layers)}"
            )
        self.step_count = int(state["step"])
        self.generator.set_state(state["generator"])
        self.history = copy.deepcopy(state["history"])
        kernels = state.get("kernels", {})  # absent in checkpoints from before kernel switching
        for name, layer in self.layers.items():
            device = layer.param.device
            mask = state["masks"][name].to(device)
            use = kernels.get(name)
            if use is not None and use != ("sparse" if layer.sparse_kernel else "dense"):
                # the run had moved this layer to the other path (kernel="auto"): follow it, so
                # that the model's state_dict (weight vs values + structure) loads next
                if use == "sparse":
                    layer.set_mask(mask)  # the link structure is built from the checkpoint's mask
                self._switch_kernel(layer, use)
            elif layer.sparse_kernel:
                layer.module.set_structure(mask)
            layer.set_mask(mask)
            layer.ever_active = state["ever_active"][name].to(device).bool()
            layer.frozen = bool(state["frozen"][name])
            layer.density = float(state["layer_density"][name])
            layer.target = int(state["target"][name])
            layer.last_update = dict(state["last_update"][name])
        self.apply_masks()


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
    init_data: Tensor | None = None,
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

    ``kernel`` picks the execution of the sparse layers: ``"dense"`` (dense weights multiplied by
    masks), ``"sparse"`` (each layer becomes a :class:`~brainsparse.kernels.SparseLinear` whose
    weight and optimizer state exist only at the links) or ``"auto"`` (sparse where the layer's
    starting density is below the measured crossover for ``batch_size``).

    ``engine_class`` builds the engine (default :class:`DynamicSparseEngine`); e.g.
    :class:`brainsparse.distributed.fsdp.ShardedSparseEngine` for a model wrapped with FSDP2.
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
