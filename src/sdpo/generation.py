"""Batched generation for the local user simulator: left padding, EOS ids, ``model.generate``.

Measured and not kept (``benchmarks/RESULTS.md``): a sampling loop that drops finished
rows from the batch and its KV cache (commit 3a280ef) was no faster on the 2-core CPU
(1.00x / 1.02x vs one batched ``generate`` at 8 / 16 pairs), and transformers'
continuous batching (``model.generate_batch``) reached 0.40x of its speed there.
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
def hf_generate(model, tokenizer, contexts, *, max_new_tokens: int, temperature: float, device=None,
                eos: list[int] | None = None) -> list[list[int]]:
    """``model.generate`` on left-padded contexts; new tokens per row, cut after the first EOS
    (``eos``: default :func:`eos_ids`; ``device``: default the model's)."""
    device = device if device is not None else next(model.parameters()).device
    ids, mask = left_pad(contexts, tokenizer.pad_token_id)
    eos = eos if eos is not None else eos_ids(model, tokenizer)
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
