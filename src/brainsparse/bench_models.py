"""Training steps of the Transformer and LLaMA presets, masked vs sparse (``bench --parts models``).

For each (model, density) cell both paths are built from one seed and timed side by side: one
training step each in turn (forward, backward, optimizer step, ``engine.step()``), ``repeats``
rounds after two warm-ups, medians. Then one topology update of each is timed. Shapes follow the
tasks' defaults: the ``small`` translation preset at 1024 tokens per batch (32 sentences of
16 + 16 tokens, SET with Adam), ``llama-tiny`` at 16 sequences of 64 tokens (CHTs with AdamW);
vocabularies of 5000 and 10000 (PTB).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CELLS: tuple[tuple[str, float], ...] = (("transformer-small", 0.1), ("transformer-small", 0.05),
                                        ("llama-tiny", 0.3), ("llama-tiny", 0.1))


def _translation(kernel: str, density: float, seed: int) -> tuple[nn.Module, Any, Callable[[], Tensor]]:
    from .engine import sparsify
    from .models.functional import label_smoothed_cross_entropy
    from .models.transformer import Seq2SeqTransformer, transformer_config
    from .train.common import fused_optimizer_options

    torch.manual_seed(seed)
    model = Seq2SeqTransformer(transformer_config("small", 5000))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, **fused_optimizer_options("cpu"))
    engine = sparsify(model, opt, method="set", density=density, update_every=10**9, total_steps=10**9,
                      pairs=model.sparse_pairs(), seed=seed, kernel=kernel, batch_size=512)
    gen = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(4, 5000, (32, 16), generator=gen), torch.randint(4, 5000, (32, 17), generator=gen)

    def loss() -> Tensor:
        return label_smoothed_cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten(), 0.1, 0)

    return engine, opt, loss


def _llama(kernel: str, density: float, seed: int) -> tuple[nn.Module, Any, Callable[[], Tensor]]:
    from .models.llama import LlamaLM, llama_config
    from .train.language_model import adamw, sparsify_llama

    torch.manual_seed(seed)
    model = LlamaLM(llama_config("llama-tiny", vocab_size=10000, dropout=0.0))
    opt = adamw(model, 3e-3, 0.0)
    engine = sparsify_llama(model, opt, method="chts", density=density, update_every=10**9, total_steps=10**9,
                            seed=seed, kernel=kernel, batch_size=16 * 64)
    tokens = torch.randint(0, 10000, (16, 65), generator=torch.Generator().manual_seed(seed))

    def loss() -> Tensor:
        logits = model(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return engine, opt, loss


_BUILD = {"transformer-small": _translation, "llama-tiny": _llama}


def _step(engine: Any, opt: torch.optim.Optimizer, loss: Callable[[], Tensor]) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss().backward()
    opt.step()
    engine.step()
    return time.perf_counter() - start


def bench_models(cells: Sequence[tuple[str, float]] = CELLS, repeats: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Median training-step and topology-update times, masked vs sparse, per (model, density)."""
    rows = []
    for name, density in cells:
        runs = {kernel: _BUILD[name](kernel, density, seed) for kernel in ("dense", "sparse")}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(repeats + 2):
            for kernel, (engine, opt, loss) in runs.items():
                t = _step(engine, opt, loss)
                if r >= 2:
                    times[kernel].append(t)
        row: dict[str, Any] = {"model": name, "density": density, "repeats": repeats}
        for kernel, (engine, _, _) in runs.items():
            row[f"{kernel}_step_s"] = statistics.median(times[kernel])
            start = time.perf_counter()
            engine.update()
            row[f"{kernel}_update_s"] = time.perf_counter() - start
            row[f"{kernel}_sparse_layers"] = sum(layer.sparse_kernel for layer in engine.layers.values())
        row["layers"] = len(runs["dense"][0].layers)
        row["step_speedup"] = row["dense_step_s"] / row["sparse_step_s"]
        rows.append(row)
        del runs
    return rows


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The models table."""
    lines = ["### Training steps of the Transformer and LLaMA presets, masked vs sparse (median)", "",
             "| model | density | masked step | sparse step | sparse vs masked | masked update | sparse update |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['density']:g} | {r['dense_step_s'] * 1e3:.1f} ms | "
                     f"{r['sparse_step_s'] * 1e3:.1f} ms | {r['step_speedup']:.2f}× | "
                     f"{r['dense_update_s'] * 1e3:.1f} ms | {r['sparse_update_s'] * 1e3:.1f} ms |")
    lines.append("")
    return lines
