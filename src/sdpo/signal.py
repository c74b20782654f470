"""The hindsight signal: per-token teacher/student log-probs and their log-ratio.

For an example ``(x, y, o)`` the student context is ``x`` and the teacher context is
``x`` with the follow-up ``o`` placed by a :mod:`sdpo.templates` template. ``y`` is
tokenized once; the same ids are scored under both contexts and

    A_t = log p(y_t | teacher context, y_<t) - log p(y_t | x, y_<t).

How it is computed (and why it is cheaper than the obvious way):

* every sequence is ``[left padding | context | response | right padding]``, so all
  responses of a forward start at the same column; position ids are derived from the
  attention mask, so padding never shifts positions (batch invariance);
* sequences are grouped into micro-batches of similar length (a small dynamic
  programme over the sorted lengths), so uneven batches waste little on padding;
  without gradients, student and teacher rows share micro-batches, i.e. both
  contexts go through one forward where that packs better;
* only the hidden states at response positions reach the output head, in chunks of
  a bounded number of tokens, each reduced to ``logit[target] - logsumexp`` in
  float32 right away: no full-sequence, full-vocabulary log-softmax is ever held.
  With gradients the chunks are recomputed in the backward pass (checkpointing), so
  memory stays bounded there too;
* contexts longer than ``max_context_tokens`` lose their oldest turns first, then the
  start of the request; the system message and the follow-up are kept; ``y`` is never cut.

Trainers call :func:`completion_logprobs` / :func:`hindsight_logprobs` with the
student side differentiable and the teacher side under ``torch.no_grad()``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sdpo.distributed import lockstep_forwards
from sdpo.templates import DEFAULT_TEMPLATE, Messages, TeacherTemplate, fit_context, get_template, render_context

DEFAULT_MAX_CONTEXT_TOKENS = 2048
LOGITS_CHUNK_BYTES = 64 * 2**20


class SignalInputError(ValueError):
    """An example cannot be scored; the message names the example and the field."""


@dataclass
class HindsightExample:
    """One interaction: context ``x`` (a prompt or chat messages), response ``y``, follow-up ``o``."""

    x: str | Messages
    y: str
    o: str


@dataclass
class EncodedExample:
    """Token ids of one example: both contexts and the (shared) response."""

    student_context: list[int]
    teacher_context: list[int]
    response: list[int]
    student_truncated: int = 0  # tokens each context had over max_context_tokens (0 = uncut)
    teacher_truncated: int = 0


@dataclass
class TokenSignal:
    """Per-token scores of one response."""

    token_ids: list[int]
    tokens: list[str]
    student_logprobs: list[float]
    teacher_logprobs: list[float]
    signal: list[float] = field(default_factory=list)
    truncated_context_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.signal:
            self.signal = [t - s for t, s in zip(self.teacher_logprobs, self.student_logprobs)]

    @property
    def mean_abs_signal(self) -> float:
        return sum(abs(v) for v in self.signal) / max(len(self.signal), 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_abs_signal"] = self.mean_abs_signal
        return d


# --------------------------------------------------------------------------- encoding


def encode_examples(
    tokenizer,
    examples: Sequence[HindsightExample | tuple | dict],
    template: str | TeacherTemplate = DEFAULT_TEMPLATE,
    *,
    max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
    append_eos: bool = True,
) -> list[EncodedExample]:
    """Tokenize examples: both contexts through the chat template, ``y`` once."""
    template = get_template(template)
    encoded = []
    for i, ex in enumerate(examples):
        x, y, o = _unpack(ex, i)
        if not isinstance(y, str) or not y.strip():
            raise SignalInputError(f"example {i}: the response y is empty")
        if not isinstance(o, str) or not o.strip():
            raise SignalInputError(f"example {i}: the follow-up o is empty")
        try:
            # over the limit: history dropped oldest first, then the request's start; the system
            # message and the follow-up are kept (sdpo.templates.fit_context)
            student, cut_s = fit_context(tokenizer, template, x, max_context_tokens)
            teacher, cut_t = fit_context(tokenizer, template, x, max_context_tokens, followup=o)
        except ValueError as err:
            raise SignalInputError(f"example {i}: {err}") from err
        response = list(tokenizer(y, add_special_tokens=False)["input_ids"])
        if append_eos and tokenizer.eos_token_id is not None:
            response.append(tokenizer.eos_token_id)
        encoded.append(EncodedExample(student, teacher, response, cut_s, cut_t))
    return encoded


def _unpack(ex, i: int):
    if isinstance(ex, HindsightExample):
        return ex.x, ex.y, ex.o
    if isinstance(ex, dict):
        missing = [k for k in ("x", "y", "o") if k not in ex]
        if missing:
            raise SignalInputError(f"example {i}: missing field(s) {', '.join(missing)}")
        return ex["x"], ex["y"], ex["o"]
    if isinstance(ex, (tuple, list)) and len(ex) == 3:
        return ex
    raise SignalInputError(f"example {i}: expected (x, y, o), a dict with x/y/o or a HindsightExample")


def truncate_left(ids: list[int], max_tokens: int | None) -> tuple[list[int], int]:
    """Keep the last ``max_tokens`` ids; returns the ids and how many were cut."""
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, 0
    return ids[len(ids) - max_tokens :], len(ids) - max_tokens


# --------------------------------------------------------------------------- batching


def plan_microbatches(
    lengths: Sequence[tuple[int, int]],
    *,
    overhead_tokens: int = 64,
    max_batch_tokens: int | None = None,
    max_groups: int | None = None,
    min_saving: float = 0.0,
) -> list[list[int]]:
    """Group sequences ``(context_len, response_len)`` into micro-batches.

    A micro-batch costs ``rows * (max context + max response)`` padded tokens plus
    ``overhead_tokens`` for launching a forward. Sequences are sorted by total length
    and cut into at most ``max_groups`` contiguous runs that minimise the total cost
    (exact dynamic programme over the sorted order), with at most ``max_batch_tokens``
    padded tokens per micro-batch (a single longer sequence still gets its own).
    When the best plan saves less than ``min_saving`` (a fraction) of the cost of one
    padded batch, one batch it is: planning must pay for its extra forwards.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda k: (lengths[k][0] + lengths[k][1], lengths[k][0]))
    limit = n if max_groups is None else max(1, min(int(max_groups), n))
    inf = float("inf")
    # best[g][j]: cost of the first j sorted sequences in exactly g groups; cut[g][j]: start of the last
    best = [[inf] * (n + 1) for _ in range(limit + 1)]
    cut = [[0] * (n + 1) for _ in range(limit + 1)]
    best[0][0] = 0.0
    for j in range(1, n + 1):
        max_c = max_r = 0
        for i in range(j, 0, -1):  # last group = sorted[i-1 .. j-1]
            c, r = lengths[order[i - 1]]
            max_c, max_r = max(max_c, c), max(max_r, r)
            rows = j - i + 1
            padded = rows * (max_c + max_r)
            if max_batch_tokens is not None and rows > 1 and padded > max_batch_tokens:
                break
            for g in range(1, limit + 1):
                cost = best[g - 1][i - 1] + padded + overhead_tokens
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i - 1
    g = min(range(1, limit + 1), key=lambda k: best[k][n])
    if best[g][n] == inf:  # the token budget needs more groups than allowed: budget wins
        return plan_microbatches(lengths, overhead_tokens=overhead_tokens, max_batch_tokens=max_batch_tokens)
    single = n * (max(c for c, _ in lengths) + max(r for _, r in lengths)) + overhead_tokens
    if g > 1 and best[1][n] < inf and best[g][n] > (1.0 - min_saving) * single:
        return [order]
    groups = []
    j = n
    while j > 0:
        groups.append([order[k] for k in range(cut[g][j], j)])
        j, g = cut[g][j], g - 1
    return groups[::-1]


# Planner defaults. The per-forward overhead is measured (see forward_overhead_tokens); the
# cap and the required saving keep the planner from trading one big efficient forward for
# many thin ones whose fixed costs grow when the cores are shared (benchmarks/RESULTS.md).
DEFAULT_MAX_GROUPS = 4
DEFAULT_MIN_SAVING = 0.15
_OVERHEAD_SAFETY = 2.0  # measured on a quiet machine; under load a forward's fixed cost grows
_overhead_memo: dict[str, int] = {}


def _overhead_key(model, device: torch.device) -> str:
    inner = _unwrap(model) or model
    config = getattr(inner, "config", None)
    shape = [getattr(config, k, None) for k in ("model_type", "hidden_size", "intermediate_size",
                                                 "num_hidden_layers", "num_attention_heads", "vocab_size")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu{torch.get_num_threads()}"
    dtype = next(inner.parameters()).dtype if any(True for _ in inner.parameters()) else None
    return "|".join(map(str, [name, torch.__version__, dtype, autocast_dtype(model), *shape]))


def _overhead_path():
    from sdpo.models import cache_dir

    return cache_dir() / "forward_overhead.json"


def _time_forward(model, device, width: int, repeats: int = 3) -> float:
    import time

    ids = torch.full((1, width), 1, dtype=torch.long, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def forward_overhead_tokens(model, *, refresh: bool = False) -> int:
    """The fixed cost of one forward of ``model``, in tokens' worth of compute.

    Measured once per device, model shape and dtype (a forward of 16 tokens vs one of
    528, best of three each) and cached in ``$SDPO_CACHE/forward_overhead.json``; the
    planner charges each micro-batch this many extra tokens (times a safety factor of
    2, since the fixed cost grows when the cores are shared).
    """
    import json

    device = _model_device(model)
    key = _overhead_key(model, device)
    if not refresh and key in _overhead_memo:
        return _overhead_memo[key]
    path = _overhead_path()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    if refresh or not isinstance(table.get(key), int):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), _autocast(model):
                _time_forward(model, device, 16, repeats=1)  # warm-up
                small, large = _time_forward(model, device, 16), _time_forward(model, device, 528)
        finally:
            model.train(was_training)
        per_token = max(large - small, 1e-9) / 512
        fixed = max(small - 16 * per_token, 0.0)
        table[key] = int(round(min(max(fixed / per_token, 8), 16384)))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs a re-measurement next time
    _overhead_memo[key] = table[key]
    return table[key]


def autocast_dtype(model) -> torch.dtype | None:
    """The dtype ``model`` computes in under autocast (set by :func:`sdpo.models.load_model`), or None."""
    from sdpo.models import autocast_dtype as _dtype

    return _dtype(model)


def _autocast(model):
    import contextlib

    dtype = autocast_dtype(model)
    if dtype is None or torch.is_autocast_enabled(_model_device(model).type):
        return contextlib.nullcontext()
    return torch.autocast(_model_device(model).type, dtype=dtype)


# --------------------------------------------------------------------------- scoring


def _unwrap(model):
    """The plain ``PreTrainedModel`` under peft wrappers, or None if wrapped for distribution."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return None
    if type(model).__name__ in ("DeepSpeedEngine", "FullyShardedDataParallel") or lockstep_forwards(model):
        return None
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _split_head(model):
    """``(body, head, softcap)`` when the output head can be applied separately, else None.

    Distributed wrappers (DDP, DeepSpeed, FSDP) must see their own forward called, so
    they use the full forward with ``logits_to_keep`` instead.
    """
    inner = _unwrap(model)
    if inner is None:
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    prefix = getattr(inner, "base_model_prefix", None)
    body = getattr(inner, prefix, None) if prefix else None
    if not isinstance(head, nn.Linear) or body is None or body is inner:
        return None
    config = getattr(inner, "config", None)
    if getattr(config, "logit_scale", None) not in (None, 1, 1.0):
        return None
    softcap = getattr(config, "final_logit_softcapping", None)
    return body, head, softcap


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap,
                    head_fp32: bool = False) -> torch.Tensor:
    if head_fp32 and (hidden.dtype != torch.float32 or head.weight.dtype != torch.float32
                      or torch.is_autocast_enabled(hidden.device.type)):
        # the head's product in float32: bf16 logits are off by up to ~0.1 nats at |logit| ~ 30
        with torch.autocast(hidden.device.type, enabled=False):
            bias = head.bias.float() if head.bias is not None else None
            logits = nn.functional.linear(hidden.float(), head.weight.float(), bias)
    else:
        logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _logits_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunked(fn, rows: torch.Tensor, targets: torch.Tensor, chunk: int, *extra) -> torch.Tensor:
    outs = []
    use_ckpt = torch.is_grad_enabled()
    for start in range(0, rows.shape[0], chunk):
        args = (rows[start : start + chunk], targets[start : start + chunk], *extra)
        outs.append(checkpoint(fn, *args, use_reentrant=False) if use_ckpt else fn(*args))
    return torch.cat(outs) if outs else rows.new_zeros(0, dtype=torch.float32)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _vocab_size(model) -> int:
    inner = _unwrap(model) or model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if isinstance(head, nn.Linear):
        return head.out_features
    return int(getattr(getattr(inner, "config", None), "vocab_size", 50_000))


def _forward_group(model, contexts, responses, *, pad_token_id: int, chunk_tokens: int, head_mode: str,
                   head_fp32: bool = False):
    """Log-probs of each response under its context, for one micro-batch."""
    device = _model_device(model)
    n = len(contexts)
    ctx_len = max(len(c) for c in contexts)
    resp_len = max(len(r) for r in responses)
    ids = torch.full((n, ctx_len + resp_len), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, ctx_len + resp_len), dtype=torch.long)
    for i, (c, r) in enumerate(zip(contexts, responses)):
        ids[i, ctx_len - len(c) : ctx_len] = torch.tensor(c, dtype=torch.long)
        ids[i, ctx_len : ctx_len + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, ctx_len - len(c) : ctx_len + len(r)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, position_ids = ids.to(device), mask.to(device), position_ids.to(device)
    target_mask = mask[:, ctx_len:].bool()
    targets = ids[:, ctx_len:][target_mask]

    split = _split_head(model) if head_mode != "logits" else None
    if head_mode == "chunked" and split is None:
        raise ValueError("head_mode='chunked' is not possible for this model; use 'auto' or 'logits'")
    if split is not None:
        body, head, softcap = split
        hidden = body(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        hidden = hidden.last_hidden_state[:, ctx_len - 1 : ctx_len - 1 + resp_len][target_mask]
        flat = _chunked(_chunk_logprobs, hidden, targets, chunk_tokens, head, softcap, head_fp32)
    else:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=resp_len + 1,
        )
        logits = out.logits[:, :-1][target_mask]
        flat = _chunked(_logits_logprobs, logits, targets, chunk_tokens)
    return list(flat.split([len(r) for r in responses]))


def completion_logprobs(
    model,
    contexts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    max_batch_tokens: int | None = None,
    overhead_tokens: int | None = None,
    chunk_tokens: int | None = None,
    head_mode: str = "auto",
    max_groups: int | None = DEFAULT_MAX_GROUPS,
    min_saving: float = DEFAULT_MIN_SAVING,
    head_precision: str = "compute",
) -> list[torch.Tensor]:
    """``log p(completion_t | context, completion_<t)`` for each pair, float32, one tensor each.

    Runs under whatever autograd mode is active: wrap the call in ``torch.no_grad()``
    for a teacher, leave gradients on for a student. ``head_mode`` is ``auto`` (apply
    the output head only at completion positions, in chunks), ``chunked`` (require
    that) or ``logits`` (full model forward with ``logits_to_keep``; what distributed
    wrappers get automatically). Micro-batches: see :func:`plan_microbatches`; the
    per-forward overhead defaults to :func:`forward_overhead_tokens` (measured, cached).
    A model loaded with mixed precision (:func:`sdpo.models.load_model`, ``dtype=auto``
    on bf16 hardware) runs its matrix products under bf16 autocast; the log-softmax and
    everything after it stay in float32. ``head_precision``: ``compute`` (default) runs the
    output head's product in the compute dtype (bf16 under autocast), ``float32`` upcasts
    it (closer to float32 scores, but ~10 % slower, and on short contexts slower than a
    naive bf16 batch; measured in ``benchmarks/RESULTS.md``).
    """
    if len(contexts) != len(completions):
        raise ValueError("contexts and completions differ in length")
    for i, (c, r) in enumerate(zip(contexts, completions)):
        if len(c) == 0:
            raise SignalInputError(f"sequence {i}: the context has no tokens")
        if len(r) == 0:
            raise SignalInputError(f"sequence {i}: the completion has no tokens")
    if head_mode not in ("auto", "chunked", "logits"):
        raise ValueError(f"head_mode must be auto, chunked or logits, got {head_mode!r}")
    if head_precision not in ("float32", "compute"):
        raise ValueError(f"head_precision must be float32 or compute, got {head_precision!r}")
    device = _model_device(model)
    if (torch.is_grad_enabled() and _unwrap(model) is None) or lockstep_forwards(model):
        # DDP and friends reduce gradients once per forward: one forward per backward. Under
        # ZeRO-3/FSDP every forward gathers parameters, so every rank must run the same number.
        overhead_tokens, max_batch_tokens = 10**12, None
    elif overhead_tokens is None and len(contexts) > 1:
        overhead_tokens = int(_OVERHEAD_SAFETY * forward_overhead_tokens(model))
    if chunk_tokens is None:
        chunk_tokens = max(16, LOGITS_CHUNK_BYTES // (4 * _vocab_size(model)))
    groups = plan_microbatches(
        [(len(c), len(r)) for c, r in zip(contexts, completions)],
        overhead_tokens=overhead_tokens or 0,
        max_batch_tokens=max_batch_tokens,
        max_groups=max_groups,
        min_saving=min_saving,
    )
    results: list[torch.Tensor | None] = [None] * len(contexts)
    with _autocast(model):  # one autocast region: weights are cast to bf16 once per call
        for group in groups:
            outs = _forward_group(
                model,
                [contexts[k] for k in group],
                [completions[k] for k in group],
                pad_token_id=pad_token_id,
                chunk_tokens=chunk_tokens,
                head_mode=head_mode,
                head_fp32=head_precision == "float32",
            )
            for k, lp in zip(group, outs):
                results[k] = lp
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- shared-prefix scoring
#
# The student context and the teacher context agree up to the hindsight insertion point
# (system message + request; for TL;DR the whole post). The shared path runs that common
# prefix once and keeps its keys/values; only the continuations ``[rest of context | y]``
# run on top of it: the differentiable branch on the prefix's own cache tensors (the prefix
# forward stays in the graph), every other branch on detached copies under no_grad. Exact:
# each query attends to the same keys and values at the same positions as in a full forward
# (the padding between prefix and continuation is masked, position ids follow the mask).

KV_BUDGET_BYTES = 1 << 30  # bound on one micro-batch's cached keys/values (all layers)
SHARE_MIN_SAVED_PER_OVERHEAD = 1.0  # auto shares when the saved prefix tokens exceed this many forwards' overhead
_SHARE_MODES = ("auto", True, False)


class _NoSharing(RuntimeError):
    """The model's cache cannot be branched (found out after the prefix forward)."""


def shared_prefix_len(*contexts: Sequence[int]) -> int:
    """Length of the common token prefix of ``contexts``, leaving each at least one token of its
    own (the last context token predicts the first response token: it runs in the continuation)."""
    limit = min(len(c) for c in contexts) - 1
    first = contexts[0]
    n = 0
    while n < limit and all(c[n] == first[n] for c in contexts[1:]):
        n += 1
    return max(n, 0)


def _has_active_dropout(model) -> bool:
    if not model.training:
        return False
    config = getattr(_unwrap(model) or model, "config", None)
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def prefix_sharing_unsupported(model, head_mode: str = "auto") -> str | None:
    """None where shared-prefix scoring is exact for ``model``, else why it is not used."""
    if head_mode == "logits":
        return "head_mode='logits'"
    if lockstep_forwards(model) or _unwrap(model) is None:
        return "a distributed wrapper (its own forward, once per step)"
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        # whether sharing pays depends on each rank's batch: ranks could run different numbers of forwards,
        # and under ZeRO-3 every forward is a collective (a rank waiting for the others' forward aborts)
        return "several processes (forwards must stay in lockstep across ranks)"
    split = _split_head(model)
    if split is None:
        return "the output head cannot be applied separately"
    body = split[0]
    config = getattr(_unwrap(model), "config", None)
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or getattr(config, "use_sliding_window", False):
        return "sliding-window or non-attention layers"
    if getattr(body, "gradient_checkpointing", False) and body.training:
        return "gradient checkpointing (no cache in training mode)"
    if _has_active_dropout(model):
        return "active dropout (the branches would share the prefix's dropout masks)"
    return None


def _kv_bytes_per_token(model) -> int:
    inner = _unwrap(model) or model
    config = getattr(inner, "config", None)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    heads = int(getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", 1) or 1)
    head_dim = getattr(config, "head_dim", None) or (
        int(getattr(config, "hidden_size", 64)) // int(getattr(config, "num_attention_heads", 1) or 1))
    dtype = autocast_dtype(model) or next(inner.parameters()).dtype
    return 2 * layers * heads * int(head_dim) * torch.empty((), dtype=dtype).element_size()


def _cache_keyword(body) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier), as ``body.forward`` takes it."""
    import inspect

    try:
        params = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_layers(cache):
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        raise _NoSharing("the model's cache is not a plain dynamic cache")
    return layers


def _continuation(part, pad_token_id: int):
    """``[(prefix index, suffix ids, response ids)]`` -> ids and mask laid out as [suffix left-padded to
    the longest][response right-padded], with the suffix width."""
    s_len = max(len(s) for _, s, _ in part)
    r_len = max(len(r) for _, _, r in part)
    c_ids = torch.full((len(part), s_len + r_len), pad_token_id, dtype=torch.long)
    c_mask = torch.zeros((len(part), s_len + r_len), dtype=torch.long)
    for i, (_, s, r) in enumerate(part):
        c_ids[i, s_len - len(s) : s_len] = torch.tensor(s, dtype=torch.long)
        c_ids[i, s_len : s_len + len(r)] = torch.tensor(r, dtype=torch.long)
        c_mask[i, s_len - len(s) : s_len + len(r)] = 1
    return c_ids, c_mask, s_len, r_len


def _response_logprobs(hidden, c_ids, c_mask, s_len, r_len, device, chunk_tokens, head, softcap, head_fp32):
    """Log-probs of the response tokens from the continuation's hidden states (flat, row after row)."""
    target_mask = c_mask[:, s_len:].bool().to(device)
    hidden = hidden[:, s_len - 1 : s_len - 1 + r_len][target_mask]
    targets = c_ids.to(device)[:, s_len:][target_mask]
    return _chunked(_chunk_logprobs, hidden, targets, chunk_tokens, head, softcap, head_fp32)


def _prefix_group(model, prefixes, rows, *, pad_token_id: int, chunk_tokens: int, head_fp32: bool,
                  grad_rows: set[int]) -> list[torch.Tensor]:
    """One micro-batch of prefixes and their continuation ``rows`` = ``[(prefix index, suffix ids,
    response ids)]``; returns the log-probs of each row's response.

    Without gradient rows: one forward of ``prefixes`` (left-padded, with a cache), then every row in
    one continuation forward on that cache, under no_grad. With one gradient row per prefix (the
    student's, ``grad_first``): that row runs as one ordinary forward of prefix + suffix + response
    under the caller's autograd mode (the same graph, and the same backward, as scoring it alone), and
    the prefix columns of its cache, detached, serve the other rows' continuation under no_grad. (Sharing
    the prefix with the student too, i.e. a prefix forward with gradient and a continuation with
    gradient, saves nothing for the student and splits its graph: measured 1.04x / 1.01x slower on the
    TL;DR / long offline shapes in float32; ``benchmarks/RESULTS.md``.)"""
    body, head, softcap = _split_head(model)
    device = _model_device(model)
    n, width = len(prefixes), max(len(p) for p in prefixes)
    ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    lens = mask.sum(-1)
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=getattr(_unwrap(model), "config", None))
    cache_kw = {_cache_keyword(body): cache}
    results: list[torch.Tensor | None] = [None] * len(rows)
    grad = sorted(grad_rows)
    student_first = bool(grad) and torch.is_grad_enabled()
    if student_first:
        if [rows[k][0] for k in grad] != list(range(n)):
            raise ValueError("gradient rows must be one per prefix, in prefix order")
        part = [rows[k] for k in grad]
        c_ids, c_mask, s_len, r_len = _continuation(part, pad_token_id)
        full_ids, full_mask = torch.cat([ids, c_ids], dim=1), torch.cat([mask, c_mask], dim=1)
        hidden = body(input_ids=full_ids.to(device), attention_mask=full_mask.to(device),
                      position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True,
                      **cache_kw).last_hidden_state
        flat = _response_logprobs(hidden[:, width:], c_ids, c_mask, s_len, r_len, device, chunk_tokens, head,
                                  softcap, head_fp32)
        for k, lp in zip(grad, flat.split([len(r) for _, _, r in part])):
            results[k] = lp
        layers = _cache_layers(cache)
        for layer in layers:  # keep the prefix columns only, off the graph
            layer.keys, layer.values = layer.keys[:, :, :width].detach(), layer.values[:, :, :width].detach()
    else:
        with torch.no_grad():
            body(input_ids=ids.to(device), attention_mask=mask.to(device),
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True, **cache_kw)
        layers = _cache_layers(cache)
    prefix_kv = [(layer.keys, layer.values) for layer in layers]
    plain = [k for k in range(len(rows)) if k not in grad_rows] if student_first else list(range(len(rows)))
    if plain:
        part = [rows[k] for k in plain]
        c_ids, c_mask, s_len, r_len = _continuation(part, pad_token_id)
        index = torch.tensor([p for p, _, _ in part], dtype=torch.long)
        c_pos = (lens[index][:, None] + c_mask.cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([mask[index], c_mask], dim=1)
        same_rows = len(part) == n and bool((index == torch.arange(n)).all())
        dev_index = index.to(device)
        with torch.no_grad():
            for layer, (k, v) in zip(layers, prefix_kv):
                layer.keys, layer.values = (k, v) if same_rows else (k.index_select(0, dev_index),
                                                                      v.index_select(0, dev_index))
            hidden = body(input_ids=c_ids.to(device), attention_mask=full_mask.to(device),
                          position_ids=c_pos.to(device), use_cache=True, **cache_kw).last_hidden_state
            flat = _response_logprobs(hidden, c_ids, c_mask, s_len, r_len, device, chunk_tokens, head, softcap,
                                      head_fp32)
        for k, lp in zip(plain, flat.split([len(r) for _, _, r in part])):
            results[k] = lp
    return results  # type: ignore[return-value]


def shared_prefix_logprobs(
    model,
    contexts: Sequence[Sequence[Sequence[int]]],
    responses: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    grad_first: bool = False,
    max_batch_tokens: int | None = None,
    overhead_tokens: int | None = None,
    chunk_tokens: int | None = None,
    head_mode: str = "auto",
    max_groups: int | None = DEFAULT_MAX_GROUPS,
    min_saving: float = DEFAULT_MIN_SAVING,
    head_precision: str = "compute",
) -> list[list[torch.Tensor]]:
    """Log-probs of each ``responses[i]`` under each of the contexts ``contexts[i]``, their
    common token prefix computed once (see :func:`shared_prefix_len`).

    ``contexts[i]`` is ``[student context, teacher context, ...]``; with ``grad_first`` the
    first context's scores keep the autograd graph (the prefix forward included, so the
    gradient is the full-forward one) and the others are computed under no_grad from a
    detached copy of the prefix's keys/values. Without ``grad_first`` every branch of a
    micro-batch runs in one continuation forward. Items whose contexts share no token are
    scored with :func:`completion_logprobs`. Raises ``ValueError`` where sharing would not be
    exact (:func:`prefix_sharing_unsupported`).
    """
    if len(contexts) != len(responses):
        raise ValueError("contexts and responses differ in length")
    reason = prefix_sharing_unsupported(model, head_mode)
    if reason:
        raise ValueError(f"shared-prefix scoring is not exact here: {reason}")
    for i, (cs, r) in enumerate(zip(contexts, responses)):
        if not cs or any(len(c) == 0 for c in cs):
            raise SignalInputError(f"sequence {i}: a context has no tokens")
        if len(r) == 0:
            raise SignalInputError(f"sequence {i}: the completion has no tokens")
    if head_precision not in ("float32", "compute"):
        raise ValueError(f"head_precision must be float32 or compute, got {head_precision!r}")
    grad = grad_first and torch.is_grad_enabled()
    prefix = [shared_prefix_len(*cs) for cs in contexts]
    results: list[list[torch.Tensor | None]] = [[None] * len(cs) for cs in contexts]
    unshared = [i for i, p in enumerate(prefix) if p == 0]
    shared = [i for i, p in enumerate(prefix) if p > 0]
    batch_kwargs = dict(pad_token_id=pad_token_id, max_batch_tokens=max_batch_tokens, overhead_tokens=overhead_tokens,
                        chunk_tokens=chunk_tokens, head_mode=head_mode, max_groups=max_groups, min_saving=min_saving,
                        head_precision=head_precision)
    for b in range(max((len(contexts[i]) for i in unshared), default=0)):
        members = [i for i in unshared if b < len(contexts[i])]
        with torch.set_grad_enabled(grad and b == 0):
            outs = completion_logprobs(model, [contexts[i][b] for i in members], [responses[i] for i in members],
                                       **batch_kwargs)
        for i, lp in zip(members, outs):
            results[i][b] = lp
    if not shared:
        return results  # type: ignore[return-value]
    if chunk_tokens is None:
        chunk_tokens = max(16, LOGITS_CHUNK_BYTES // (4 * _vocab_size(model)))
    if overhead_tokens is None and len(shared) > 1:
        overhead_tokens = int(_OVERHEAD_SAFETY * forward_overhead_tokens(model))
    budget = max(1, KV_BUDGET_BYTES // _kv_bytes_per_token(model))
    budget = budget if max_batch_tokens is None else min(budget, max_batch_tokens)
    # a micro-batch costs rows * (prefix + branches * (suffix + response)) tokens, in 2-3 forwards
    lengths = [(prefix[i], sum(len(c) - prefix[i] + len(responses[i]) for c in contexts[i])) for i in shared]
    groups = plan_microbatches(lengths, overhead_tokens=2 * (overhead_tokens or 0), max_batch_tokens=budget,
                               max_groups=max_groups, min_saving=min_saving)
    with _autocast(model):
        for group in groups:
            members = [shared[g] for g in group]
            rows, owner, grad_rows = [], [], set()
            for j, i in enumerate(members):
                for b, c in enumerate(contexts[i]):
                    if grad and b == 0:
                        grad_rows.add(len(rows))
                    rows.append((j, list(c[prefix[i]:]), list(responses[i])))
                    owner.append((i, b))
            outs = _prefix_group(model, [list(contexts[i][0][: prefix[i]]) for i in members], rows,
                                 pad_token_id=pad_token_id, chunk_tokens=chunk_tokens,
                                 head_fp32=head_precision == "float32", grad_rows=grad_rows)
            for (i, b), lp in zip(owner, outs):
                results[i][b] = lp
    return results  # type: ignore[return-value]


def _sharing_pays(model, student_ctx, teacher_ctx, kwargs) -> bool:
    """Whether the prefix tokens saved (computed once instead of twice) outweigh the fixed
    cost of the one extra forward per micro-batch that sharing takes."""
    saved = sum(shared_prefix_len(s, t) for s, t in zip(student_ctx, teacher_ctx))
    overhead = kwargs.get("overhead_tokens")
    if overhead is None:
        overhead = int(_OVERHEAD_SAFETY * forward_overhead_tokens(model))
    return saved > SHARE_MIN_SAVED_PER_OVERHEAD * overhead


def hindsight_logprobs(
    model,
    encoded: Sequence[EncodedExample],
    *,
    pad_token_id: int,
    student_grad: bool = False,
    fuse: bool = True,
    share_prefix: bool | str = "auto",
    **kwargs,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Student and teacher log-probs of each response.

    With ``student_grad=False`` and ``fuse=True`` student and teacher rows are planned
    together, so both contexts can share forwards. With ``student_grad=True`` the
    student pass keeps the autograd graph and the teacher pass runs under
    ``no_grad`` (the signal is a fixed advantage).

    ``share_prefix``: the common token prefix of the two contexts (everything before the
    hindsight insertion point) is computed once and both continuations run on its cache
    (:func:`shared_prefix_logprobs`; exact, the student's gradient included). ``auto``
    (default) does so where it is exact (:func:`prefix_sharing_unsupported`) and the tokens
    it saves outweigh the fixed cost of the extra forward (:func:`forward_overhead_tokens`);
    ``True`` requires it, ``False`` never shares.
    """
    if share_prefix not in _SHARE_MODES:
        raise ValueError(f"share_prefix must be auto, True or False, got {share_prefix!r}")
    student_ctx = [e.student_context for e in encoded]
    teacher_ctx = [e.teacher_context for e in encoded]
    responses = [e.response for e in encoded]
    grad = student_grad and torch.is_grad_enabled()
    if share_prefix is not False and encoded:
        reason = prefix_sharing_unsupported(model, kwargs.get("head_mode", "auto"))
        if reason and share_prefix is True:
            raise ValueError(f"share_prefix=True: shared-prefix scoring is not exact here: {reason}")
        if not reason and (share_prefix is True or _sharing_pays(model, student_ctx, teacher_ctx, kwargs)):
            both = shared_prefix_logprobs(model, [[s, t] for s, t in zip(student_ctx, teacher_ctx)], responses,
                                          pad_token_id=pad_token_id, grad_first=grad, **kwargs)
            return [b[0] for b in both], [b[1] for b in both]
    if student_grad or not fuse:
        with torch.set_grad_enabled(student_grad and torch.is_grad_enabled()):
            student = completion_logprobs(model, student_ctx, responses, pad_token_id=pad_token_id, **kwargs)
        with torch.no_grad():
            teacher = completion_logprobs(model, teacher_ctx, responses, pad_token_id=pad_token_id, **kwargs)
        return student, teacher
    with torch.no_grad():
        both = completion_logprobs(
            model, student_ctx + teacher_ctx, responses + responses, pad_token_id=pad_token_id, **kwargs
        )
    return both[: len(encoded)], both[len(encoded) :]


def token_strings(tokenizer, ids: Sequence[int], *, window: int = 6) -> list[str]:
    """Readable text of each token.

    A character whose bytes span several tokens (emoji, CJK in byte-level BPE) is given
    to the token that completes it; the tokens before it get an empty string.
    """
    pieces: list[str] = []
    pending = 0  # first token whose text has not been emitted yet
    for i in range(len(ids)):
        start = max(0, pending - window)
        prev = tokenizer.decode(ids[start:pending], skip_special_tokens=False) if pending > start else ""
        full = tokenizer.decode(ids[start : i + 1], skip_special_tokens=False)
        piece = full[len(prev) :] if full.startswith(prev) else tokenizer.decode(ids[pending : i + 1])
        if piece.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")
            continue
        pieces.append(piece)
        pending = i + 1
    return pieces


class SignalScorer:
    """Scores hindsight examples with one model and template.

    >>> scorer = SignalScorer(model, tokenizer, template="hindsight")
    >>> [sig] = scorer.score([("What is 2+2?", "4", "Please explain your steps.")])
    >>> sig.tokens, sig.signal
    """

    def __init__(
        self,
        model,
        tokenizer,
        template: str | TeacherTemplate = DEFAULT_TEMPLATE,
        *,
        max_context_tokens: int | None = DEFAULT_MAX_CONTEXT_TOKENS,
        append_eos: bool = True,
        fuse: bool = True,
        max_batch_tokens: int | None = None,
        chunk_tokens: int | None = None,
        head_mode: str = "auto",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.max_context_tokens = max_context_tokens
        self.append_eos = append_eos
        self.fuse = fuse
        self.batch_kwargs = dict(max_batch_tokens=max_batch_tokens, chunk_tokens=chunk_tokens, head_mode=head_mode)

    def encode(self, examples: Sequence) -> list[EncodedExample]:
        return encode_examples(
            self.tokenizer,
            examples,
            self.template,
            max_context_tokens=self.max_context_tokens,
            append_eos=self.append_eos,
        )

    def score(self, examples: Sequence, *, batch_size: int = 16, progress: bool = False) -> list[TokenSignal]:
        """One :class:`TokenSignal` per ``(x, y, o)`` example."""
        items = [(x, y, [o]) for x, y, o in (_unpack(ex, i) for i, ex in enumerate(examples))]
        return [signals[0] for signals in self.score_followups(items, batch_size=batch_size, progress=progress)]

    def score_followups(
        self, items: Sequence[tuple], *, batch_size: int = 16, progress: bool = False
    ) -> list[list[TokenSignal]]:
        """Signals of each response ``y`` under several follow-ups: items are ``(x, y, [o1, o2, ...])``.

        The student pass (``log p(y | x)``) runs once per response, whatever the number of
        follow-ups; each follow-up adds one teacher pass.
        """
        flat = [(x, y, o) for x, y, followups in items for o in followups]
        encoded = self.encode(flat)  # validates every example before any forward pass
        owner = [k for k, (_, _, followups) in enumerate(items) for _ in followups]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[list[TokenSignal]] = [[] for _ in items]
        batches: Iterable[int] = range(0, len(items), batch_size)
        if progress:
            from sdpo.progress import progress_bar  # a bar in a terminal, plain lines in a log file

            batches = progress_bar(list(batches), desc="scoring", unit="batch")
        was_training = self.model.training
        self.model.eval()
        try:
            for start in batches:
                members = [j for j, k in enumerate(owner) if start <= k < start + batch_size]
                first = {}  # item -> its first encoded example, which carries the student context
                for j in members:
                    first.setdefault(owner[j], encoded[j])
                students = list(first.values())
                with torch.no_grad():
                    if self.fuse:
                        both = completion_logprobs(
                            self.model,
                            [e.student_context for e in students] + [encoded[j].teacher_context for j in members],
                            [e.response for e in students] + [encoded[j].response for j in members],
                            pad_token_id=pad,
                            **self.batch_kwargs,
                        )
                        student_lp, teacher_lp = both[: len(students)], both[len(students) :]
                    else:
                        student_lp = completion_logprobs(
                            self.model, [e.student_context for e in students], [e.response for e in students],
                            pad_token_id=pad, **self.batch_kwargs,
                        )
                        teacher_lp = completion_logprobs(
                            self.model, [encoded[j].teacher_context for j in members],
                            [encoded[j].response for j in members], pad_token_id=pad, **self.batch_kwargs,
                        )
                student_of = {k: lp.tolist() for k, lp in zip(first, student_lp)}
                tokens_of = {k: token_strings(self.tokenizer, e.response) for k, e in first.items()}
                for j, t in zip(members, teacher_lp):
                    enc, k = encoded[j], owner[j]
                    results[k].append(
                        TokenSignal(
                            token_ids=list(enc.response),
                            tokens=tokens_of[k],
                            student_logprobs=student_of[k],
                            teacher_logprobs=t.tolist(),
                            truncated_context_tokens=max(enc.student_truncated, enc.teacher_truncated),
                        )
                    )
        finally:
            self.model.train(was_training)
        return results


def compute_signal(model, tokenizer, examples: Sequence, template=DEFAULT_TEMPLATE, **kwargs) -> list[TokenSignal]:
    """One-call form of :class:`SignalScorer`: ``compute_signal(model, tok, [(x, y, o), ...])``."""
    batch_size = kwargs.pop("batch_size", 16)
    progress = kwargs.pop("progress", False)
    return SignalScorer(model, tokenizer, template, **kwargs).score(examples, batch_size=batch_size, progress=progress)
