"""Batched sampling that drops finished rows: the decoding loop behind the local simulator.

``model.generate`` decodes a batch until its longest row ends: a row that has emitted
EOS keeps running through every layer, and on a compute-bound device (a CPU, or a GPU
with a large batch) that is paid in full. :func:`sample_compacting` is a plain
sampling loop (temperature, or greedy at 0; no other logits processors) over a
:class:`transformers.DynamicCache` that removes finished rows from the batch, its
cache and its attention mask every ``compact_every`` tokens (the same
``batch_select_indices`` that beam search uses). Greedy output equals
``model.generate``'s; sampled output follows the same distribution (tests check both
on a small model).

Transformers' continuous batching (``model.generate_batch``) also frees finished
rows, but it targets GPUs (paged attention, CUDA graphs); on the 2-core CPU it was
slower than a plain batched ``generate`` for our simulator batches (measured in
``benchmarks/bench_online_step.py``). Models whose cache is not a plain
``DynamicCache`` (sliding-window or hybrid layers) fall back to ``model.generate``.
"""

from __future__ import annotations

from typing import Sequence

import torch


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a reply: the model's generation config's, plus the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _plain_cache(model):
    """A ``DynamicCache`` for ``model`` if every layer is a plain full-attention layer, else None."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an architecture the generic cache does not know
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return cache


def left_pad(contexts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, attention mask), padded on the left for generation."""
    width = max(map(len, contexts))
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(contexts):
        ids[i, width - len(c) :] = torch.as_tensor(list(c), dtype=torch.long)
        mask[i, width - len(c) :] = 1
    return ids, mask


@torch.no_grad()
def hf_generate(model, tokenizer, contexts, *, max_new_tokens: int, temperature: float) -> list[list[int]]:
    """``model.generate`` on left-padded contexts; new tokens per row, cut after the first EOS."""
    device = next(model.parameters()).device
    ids, mask = left_pad(contexts, tokenizer.pad_token_id)
    eos = eos_ids(model, tokenizer)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
    )[:, ids.shape[1] :].tolist()
    return [_cut(row, eos) for row in out]


def _cut(row: list[int], eos: list[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in eos:
            return row[: i + 1]
    return row


@torch.no_grad()
def sample_compacting(model, tokenizer, contexts, *, max_new_tokens: int, temperature: float,
                      compact_every: int = 8) -> list[list[int]]:
    """New tokens per row (EOS kept when emitted), finished rows dropped as decoding goes."""
    cache = _plain_cache(model)
    if cache is None:
        return hf_generate(model, tokenizer, contexts, max_new_tokens=max_new_tokens, temperature=temperature)
    device = next(model.parameters()).device
    eos = torch.tensor(eos_ids(model, tokenizer), device=device)
    ids, mask = left_pad(contexts, tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    next_position = position[:, -1] + 1
    rows = torch.arange(len(contexts), device=device)  # original index of each live row
    done = torch.zeros(len(contexts), dtype=torch.bool, device=device)
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, tokens) per decoding step
    for step in range(max_new_tokens):
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1).squeeze(1)
        else:
            token = logits.argmax(-1)
        token = torch.where(done, tokenizer.pad_token_id, token)
        steps.append((rows, token))
        done = done | torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if (step + 1) % compact_every == 0 and bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, rows, token, next_position, done = mask[keep], rows[keep], token[keep], next_position[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
        next_position = next_position + 1
    out: list[list[int]] = [[] for _ in contexts]
    finished = [False] * len(contexts)
    eos_list = set(eos.tolist())
    for step_rows, step_tokens in steps:
        for r, t in zip(step_rows.tolist(), step_tokens.tolist()):
            if not finished[r]:
                out[r].append(t)
                finished[r] = t in eos_list
    return out
