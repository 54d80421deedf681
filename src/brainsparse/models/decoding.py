"""Greedy and beam-search decoding for :class:`~brainsparse.models.transformer.Seq2SeqTransformer`."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import BrainsparseError


def max_target_length(src: Tensor, pad_id: int, a: float = 1.5, b: int = 10, cap: int = 256) -> int:
    """Longest output considered: a · (longest source) + b, at most ``cap``."""
    longest = int((src != pad_id).sum(1).max()) if src.numel() else 0
    return min(int(a * longest + b), cap)


def _next_logits(model, last: Tensor, caches, mask: Tensor, position: int, bos: int) -> Tensor:
    """Next-token logits with padding and bos ruled out (they never follow a prefix)."""
    logits = model.decode_next(last, caches, mask, position).float()
    logits[:, [model.pad_id, bos]] = float("-inf")
    return logits


@torch.no_grad()
def greedy_decode(model, src: Tensor, bos: int, eos: int, max_len: int | None = None) -> list[list[int]]:
    """The most likely next token at every step until eos (not included) or ``max_len``."""
    model.eval()
    memory, mask = model.encode(src)
    caches = model.start_decoding(memory)
    max_len = min(max_len or max_target_length(src, model.pad_id), model.cfg.max_positions - 1)
    last = torch.full((src.shape[0],), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    steps = []
    for position in range(max_len):
        nxt = _next_logits(model, last, caches, mask, position, bos).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        steps.append(nxt)
        done |= nxt == eos
        last = nxt
        if bool(done.all()):
            break
    out = []
    for row in torch.stack(steps, 1).tolist() if steps else [[] for _ in range(src.shape[0])]:
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


@torch.no_grad()
def beam_search(
    model, src: Tensor, beam: int, bos: int, eos: int, max_len: int | None = None, length_penalty: float = 1.0
) -> list[list[int]]:
    """Best hypothesis per sentence by beam search (eos not included).

    At every step the ``2·beam`` best extensions of the live hypotheses are considered; one
    ending in eos is finished with score log p / length^length_penalty, the others fill the
    ``beam`` live slots. A sentence stops when ``beam`` hypotheses are finished (live ones are
    finished at ``max_len``). With ``beam = 1`` this is greedy decoding.
    """
    if not isinstance(beam, int) or beam < 1:
        raise BrainsparseError(f"beam {beam!r} is invalid; allowed: a positive integer")
    model.eval()
    n = src.shape[0]
    memory, mask = model.encode(src)
    memory, mask = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)
    caches = model.start_decoding(memory)
    max_len = min(max_len or max_target_length(src, model.pad_id), model.cfg.max_positions - 1)
    tokens = torch.full((n * beam, 1), bos, dtype=torch.long, device=src.device)
    scores = torch.full((n, beam), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(1, max_len + 1):
        logp = torch.log_softmax(_next_logits(model, tokens[:, -1], caches, mask, step - 1, bos), -1)  # (n·beam, V)
        vocab = logp.shape[-1]
        total = (scores[:, :, None] + logp.view(n, beam, vocab)).view(n, beam * vocab)
        top_scores, top_index = total.topk(min(2 * beam, beam * vocab), dim=1)
        new_tokens = tokens.view(n, beam, -1).clone()
        next_rows = torch.zeros(n, beam, dtype=torch.long, device=src.device)
        next_tok = torch.full((n, beam), eos, dtype=torch.long, device=src.device)
        new_scores = torch.full((n, beam), float("-inf"), device=src.device)
        ts, ti = top_scores.tolist(), top_index.tolist()
        prefixes = tokens.view(n, beam, -1)[:, :, 1:].tolist()
        for i in range(n):
            if done[i]:
                continue
            live = 0
            for s, idx in zip(ts[i], ti[i]):
                if s == float("-inf"):
                    break
                origin, tok = divmod(idx, vocab)
                if tok == eos:
                    finished[i].append((s / step**length_penalty, prefixes[i][origin]))
                else:
                    next_rows[i, live], next_tok[i, live], new_scores[i, live] = origin, tok, s
                    live += 1
                if live == beam:
                    break
            if len(finished[i]) >= beam:
                done[i] = True
        if all(done):
            break
        gathered = torch.gather(new_tokens, 1, next_rows[:, :, None].expand(-1, -1, new_tokens.shape[2]))
        tokens = torch.cat([gathered, next_tok[:, :, None]], 2).view(n * beam, -1)
        rows = (next_rows + torch.arange(n, device=src.device)[:, None] * beam).view(-1)
        caches = model.reorder_caches(caches, rows)
        scores = new_scores
    # sentences that reached max_len: their live hypotheses count as finished
    prefixes = tokens.view(n, beam, -1)[:, :, 1:].tolist()
    length = tokens.shape[1] - 1
    for i in range(n):
        if not done[i]:
            for b in range(beam):
                s = float(scores[i, b])
                if s != float("-inf"):
                    finished[i].append((s / max(length, 1) ** length_penalty, prefixes[i][b]))
    return [max(f, key=lambda item: item[0])[1] if f else [] for f in finished]
