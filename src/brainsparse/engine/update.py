"""One topology update, composed from the method's resolved components (design.md):

1. gradual pruning to the scheduled density (density schedule + prune score), and NeuroPrune's
   removal of duplicate attention heads;
2. removal scores → keep-selection (top-k or soft) of ``links − int(ζ_t · links)`` links;
3. percolation over the layer chains (if the method asks for it);
4. regrowth scores → selection of ``target − links`` absent links (and CTRE's exploration);
5. the new masks go into the modules (new links start at zero, with zero optimizer state);
6. metrics: removed/regrown counts, overlap, active neurons, ITOP.

The functions take the engine and read its resolved components (``engine.components``); none
of them looks at the method's name.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._memory import release_freed_memory
from .._validation import link_count
from ..metrics.training import overlap_rate
from ..neuroprune import head_outputs, redundant_heads, remove_heads
from ..percolation import active_hidden_neurons, percolate
from ..registry import Score, ScoreInput
from ..schedules import drop_fraction, is_epitopological_minimum, linear_temperature
from ..selection import count, select, select_among, select_index, select_index_rows
from .layer import SparseLayer
from .storage import LinkStorage

if TYPE_CHECKING:
    from .core import DynamicSparseEngine


def score_input(engine: DynamicSparseEngine, layer: SparseLayer, mask: Tensor, score: Score) -> ScoreInput:
    """What ``score`` sees of ``layer`` with ``mask`` as its links (see ``engine._score_input``)."""
    return engine._score_input(layer, mask, score)


def prune(engine: DynamicSparseEngine, layer: SparseLayer, mask: Tensor, n_links: int, score: Score) -> Tensor:
    """Keep the ``n_links`` best links of ``mask`` by ``score`` (hard rule)."""
    if count(mask) <= n_links:
        return mask
    scores = score.fn(score_input(engine, layer, mask, score))
    return select(scores, n_links, mask, rule="topk", generator=engine.generator, fallback=mask)


def prune_heads(engine: DynamicSparseEngine, masks: dict[str, Tensor]) -> dict[str, list[int]]:
    """NeuroPrune: in every attention block, the heads outside a dominating set of the graph
    "outputs nearly duplicate" lose all their links (q/k/v rows, o columns); ``masks`` (the
    shrunk masks so far) is updated in place. Returns ``{block: removed heads}``."""
    removed: dict[str, list[int]] = {}
    for block in engine.attention:
        inputs = engine._head_inputs.pop(str(block["o"]), None)
        if inputs is None:
            continue
        heads = int(block["heads"])
        o_mask = masks.get(str(block["o"]), engine.layers[str(block["o"])].mask)
        width = o_mask.shape[1] // heads
        alive = [h for h in range(heads) if o_mask[:, h * width : (h + 1) * width].any()]
        if len(alive) < 2:
            continue
        keep = {alive[i] for i in redundant_heads(head_outputs(inputs, heads)[alive], engine.method.head_threshold)}
        gone = [h for h in alive if h not in keep]
        if gone:
            current = {str(block[k]): masks.get(str(block[k]), engine.layers[str(block[k])].mask) for k in "qkvo"}
            masks.update(remove_heads(current, block, gone))
            removed[str(block["name"])] = gone
    return removed


def gradual_prune(engine: DynamicSparseEngine, global_density: float) -> dict[str, Tensor]:
    """Masks shrunk to the scheduled density by the prune score (hard rule): per layer, or with
    one threshold across all layers when the method's prune scope is global [GraNet]."""
    score = engine.components.prune
    targets = {
        n: link_count(engine.layer_density(l.base_density, global_density), *l.mask.shape)
        for n, l in engine.layers.items()
    }
    if not engine.components.global_prune:
        # only layers above their scheduled count: the others (every layer once the density is
        # reached) stay out, so their removal reads the links themselves instead of dense scores
        return {n: prune(engine, l, l.mask, targets[n], score) for n, l in engine.layers.items()
                if l.links > targets[n]}
    total = sum(targets.values())
    if sum(l.links for l in engine.layers.values()) <= total:
        return {}
    # global pruning: the `total` best links of the whole network by one ranking
    values = [score.fn(score_input(engine, l, l.mask, score))[l.mask] for l in engine.layers.values()]
    sizes = [v.numel() for v in values]
    keep = select_among(torch.cat([v.float().cpu() for v in values]), total, rule="topk", generator=engine.generator)
    out: dict[str, Tensor] = {}
    for i, ((name, layer), part) in enumerate(zip(engine.layers.items(), torch.split(keep, sizes))):
        if not part.any() and part.numel():  # never empty a layer: keep its best link
            part = part.clone()
            part[int(torch.argmax(values[i]))] = True
        flat = layer.mask.reshape(-1).nonzero().squeeze(1)
        mask = torch.zeros_like(layer.mask)
        mask.view(-1)[flat[part.to(flat.device)]] = True
        out[name] = mask
    return out


def removal_keep(engine: DynamicSparseEngine, layer: SparseLayer, mask: Tensor, n_keep: int, temperature: float,
                 current: bool) -> Tensor:
    """The ``n_keep`` links of ``mask`` that stay (the method's removal score and rule);
    ``current``: ``mask`` is the layer's own mask (not a shrunk copy)."""
    if layer.frozen:
        return mask.clone()
    score = engine.components.removal
    links = layer.storage.link_values() if current and score.on_links is not None else None
    if links is not None:
        # on the links themselves: scores in row-major link order, the order of the dense
        # scores' candidates, so the choice (and the random numbers drawn) is the same
        values, keys = links
        if n_keep >= values.numel():
            return mask.clone()
        keep = select_among(score.on_links(values), n_keep, rule=engine.method.removal_rule,
                            temperature=temperature, generator=engine.generator)
        kept = torch.zeros_like(mask)
        kept.view(-1)[keys[keep].to(mask.device)] = True
        return kept
    if n_keep >= count(mask):
        return mask.clone()
    scores = score.fn(score_input(engine, layer, mask, score))
    return select(scores, n_keep, mask, rule=engine.method.removal_rule, temperature=temperature,
                  generator=engine.generator, fallback=mask)


def percolation_changes(engine: DynamicSparseEngine, masks: dict[str, Tensor]) -> bool:
    """Whether :func:`percolate` would remove any link: a hidden neuron of a chain with incoming
    but no outgoing links (or the reverse), or an output of an elementwise pair with links in one
    layer and none in the other. Two row/column reductions per layer, so the usual update, where
    nothing percolates, skips the full fixed-point sweeps."""
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

    for chain in engine.chains:
        for first, second in zip(chain[:-1], chain[1:]):
            if not torch.equal(has_rows(first), has_cols(second)):
                return True
    return any(not torch.equal(has_rows(a), has_rows(b)) for a, b in engine.pairs)


def active_neurons(engine: DynamicSparseEngine, masks: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer: (active output rows, active input columns) after percolation."""
    active: dict[str, tuple[Tensor, Tensor]] = {}
    for chain in engine.chains:
        chain_masks = [masks[n] for n in chain]
        hidden = active_hidden_neurons(chain_masks)
        for i, name in enumerate(chain):
            rows = hidden[i] if i + 1 < len(chain) else torch.ones_like(hidden[i])
            cols = hidden[i - 1] if i > 0 else torch.ones(chain_masks[i].shape[1], dtype=torch.bool, device=rows.device)
            active[name] = (rows, cols)
    for a, b in engine.pairs:
        # outputs of an elementwise pair (q/k, gate/up) multiply: a dimension is active only
        # where both partners have links (and their chains keep it)
        both = active[a][0] & active[b][0] & masks[a].any(dim=1) & masks[b].any(dim=1)
        active[a] = (both, active[a][1])
        active[b] = (both, active[b][1])
    return active


def explore(engine: DynamicSparseEngine, grown: Tensor, removed: Tensor, kept: Tensor) -> Tensor:
    """CTRE (simultaneous): links re-added right after removal are swapped for random new ones."""
    readded = grown & removed
    n = count(readded)
    if n == 0:
        return grown
    grown = grown & ~readded
    free = ~kept & ~grown & ~removed
    n = min(n, count(free))
    pick = select(torch.ones(free.shape, device=free.device), n, free, generator=engine.generator)
    return grown | pick


def _regrow(engine: DynamicSparseEngine, layer: SparseLayer, m1: Tensor, before: Tensor, n_grow: int,
            active: tuple[Tensor, Tensor], notes: dict[str, Any]) -> tuple[Tensor, int]:
    """Flat indices of the ``n_grow`` links regrown into ``m1``, and how many touch a neuron
    percolation removed (no room between active ones)."""
    c = engine.components
    inp = score_input(engine, layer, m1, c.regrowth)
    rows, cols = active
    between_active = rows[:, None] & cols[None, :]
    blocks = c.regrowth.blocks
    if blocks is not None and engine.method.regrowth_rule == "topk":
        # scored a block of rows at a time: the same choice, no (out, in) score array
        grown = select_index_rows(lambda start, stop: blocks(inp, start, stop), n_grow, ~m1,
                                  generator=engine.generator, fallback=between_active)
    else:
        grown = select_index(
            c.regrowth.fn(inp), n_grow, ~m1, rule=engine.method.regrowth_rule,
            temperature=engine.method.regrowth_temperature, generator=engine.generator, fallback=between_active,
        )
    notes.update(inp.notes)
    if c.explores:
        grown_mask = torch.zeros_like(m1)
        grown_mask.view(-1)[grown] = True
        grown_mask = explore(engine, grown_mask, before & ~m1, m1)
        grown = grown_mask.view(-1).nonzero().squeeze(1)
    revived = grown.numel() - count(between_active.view(-1)[grown]) if engine.method.percolation else 0
    return grown, revived


@torch.no_grad()
def run_update(engine: DynamicSparseEngine) -> dict[str, Any]:
    """Run one topology update of ``engine`` now and return its record."""
    started = time.perf_counter()
    c = engine.components
    method = engine.method
    step = engine.step_count
    t_end = engine.t_end or max(step, 1)
    zeta = drop_fraction(step, t_end, method.drop_fraction, method.drop_schedule)
    temperature = linear_temperature(step, t_end, *method.removal_temperature)
    prune_to, final = engine.density_schedule.step(step)
    # the sparse path's mask is derived from its link structure and replaced, never written, when
    # the links change: it serves as the "before" copy as it is
    before = {n: layer.mask if layer.sparse_kernel else layer.mask.clone() for n, layer in engine.layers.items()}
    n_before = {n: count(m) for n, m in before.items()}

    kept: dict[str, Tensor] = {}
    pruned: dict[str, int] = {}
    shrunk = gradual_prune(engine, prune_to) if prune_to is not None else {}
    heads_removed = prune_heads(engine, shrunk) if method.head_pruning else {}
    share_of_global = prune_to is not None and c.global_prune
    for name, layer in engine.layers.items():
        mask = shrunk.get(name, layer.mask)
        n_on = count(mask) if name in shrunk else n_before[name]
        pruned[name] = n_before[name] - n_on
        # every update removes a fraction ζ_t by the removal score, also between density steps
        n_keep = n_on - int(n_on * zeta)
        kept[name] = removal_keep(engine, layer, mask, n_keep, temperature, current=name not in shrunk)
        if share_of_global:  # the layer keeps the share the global threshold left it
            layer.target = n_on
            layer.density = n_on / mask.numel()
        else:
            layer.density = engine.layer_density(layer.base_density, final)
            layer.target = link_count(layer.density, *mask.shape)
    if method.percolation and percolation_changes(engine, kept):
        kept = percolate(kept, engine.chains, engine.pairs)
    active = active_neurons(engine, kept)

    record: dict[str, Any] = {
        "step": step, "drop_fraction": zeta, "temperature": temperature, "density": final, "layers": {},
    }
    if heads_removed:
        record["heads_removed"] = heads_removed
    for name, layer in engine.layers.items():
        # m1 ⊆ before and grown ∩ m1 = ∅ throughout: links are only removed from `before`,
        # and regrowth picks among ~m1; so counts and the overlap need no dense temporaries
        m1 = kept[name]
        n_kept = count(m1)
        n_grow = 0 if c.regrowth is None else layer.target - n_kept
        grown = torch.zeros(0, dtype=torch.int64, device=m1.device)  # flat indices of new links
        revived = 0
        notes: dict[str, Any] = {}
        if n_grow > 0:
            grown, revived = _regrow(engine, layer, m1, before[name], n_grow, active[name], notes)
        elif n_grow < 0:  # more links than the target: drop the weakest
            m1 = prune(engine, layer, m1, layer.target, c.removal)
            n_kept = count(m1)
        if c.regrowth is None:
            layer.target = n_kept
        new_mask = m1.clone(memory_format=torch.contiguous_format)
        new_mask.view(-1)[grown] = True  # m1 | grown
        n_removed, n_grown = n_before[name] - n_kept, grown.numel()
        # |removed ∩ regrown| / |regrown|, read at the regrown positions (removed = before there)
        removed_at_grown = before[name].view(-1)[grown]
        overlap = overlap_rate(removed_at_grown, torch.ones_like(removed_at_grown))
        fresh = None if layer.sparse_kernel else new_mask & ~before[name]  # the sparse path knows its new links
        engine._set_mask(layer, new_mask, fresh)
        layer.ever_active |= new_mask
        layer.grad_record = None
        layer.activations = None
        was_frozen = layer.frozen
        if method.early_stop is not None and not layer.frozen and n_grown > 0:
            layer.frozen = is_epitopological_minimum(overlap, method.early_stop)
        layer.last_update = {
            "removed": n_removed, "regrown": n_grown, "pruned": pruned[name], "overlap": overlap,
            "links": layer.links, "target": layer.target, "frozen": layer.frozen, "revived": revived,
        }
        layer.last_update.update(notes)
        record["layers"][name] = dict(layer.last_update, froze_now=layer.frozen and not was_frozen)
    if c.auto_kernel:
        switched = engine.rechoose_kernels()
        if switched:
            record["kernel_switch"] = switched
    for layer in engine.layers.values():
        if isinstance(layer.storage, LinkStorage):
            layer.storage.drop_cached_mask()  # made again at the next update
    release_freed_memory()  # the update's masks and candidate lists
    record["time_s"] = time.perf_counter() - started
    return record
