"""Speed paths: dtype selection, the mixed-precision (bf16 autocast) signal, the planner's
cap / fallback / cached overhead, and the fused optimizer choice."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest
import torch

import sdpo.models as models
import sdpo.signal as signal
from sdpo.models import adamw_options, autocast_dtype, enable_autocast, parameter_dtype, resolve_dtype
from sdpo.reference import reference_logprobs
from sdpo.signal import completion_logprobs, plan_microbatches

# Tolerances from the measurement on the embedded model (benchmarks/RESULTS.md, "bf16 by
# default") with margin; on the tiny random model the differences are far smaller.
MIXED_LOGPROB_TOL = 0.02
BF16_LOGPROB_TOL = 0.1


# --------------------------------------------------------------------------- dtype selection


@pytest.fixture(autouse=True)
def _bf16_measured_fast(monkeypatch):
    """The flag logic in isolation: the per-machine bf16 measurement (tests/test_bf16_choice.py)
    is stubbed as 'bf16 faster', so these tests do not depend on the machine running them."""
    monkeypatch.setattr(models, "cpu_bf16_measurement", lambda **kw: {"bf16": True, "speedup": 4.0})


@pytest.mark.parametrize("flags, fast", [
    ({"avx2", "avx512f", "avx512_bf16"}, True),
    ({"avx2", "amx_tile", "amx_bf16"}, True),
    ({"avx2", "avx512f"}, False),
    ({"neon", "asimd"}, False),
])
def test_cpu_dtype_follows_cpuinfo_flags(monkeypatch, flags, fast):
    monkeypatch.setattr(models, "cpu_flags", lambda: set(flags))
    assert models.bf16_is_fast("cpu") is fast
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)
    assert parameter_dtype("auto", "cpu") == ((torch.float32, torch.bfloat16) if fast else (torch.float32, None))
    # explicit choices are kept as given, never autocast
    assert parameter_dtype("float32", "cpu") == (torch.float32, None)
    assert parameter_dtype("bfloat16", "cpu") == (torch.bfloat16, None)


def test_cpu_without_cpuinfo_asks_torch(monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: set())
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16


def test_cpuinfo_parsing(tmp_path, monkeypatch):
    text = "processor\t: 0\nflags\t\t: fpu sse avx512_bf16 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    real_open = open

    def fake_open(path, *a, **k):
        return real_open(tmp_path / "cpuinfo", *a, **k) if path == "/proc/cpuinfo" else real_open(path, *a, **k)

    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr("builtins.open", fake_open)
    assert models.cpu_flags() == {"fpu", "sse", "avx512_bf16", "avx2"}


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float32), ((8, 0), torch.bfloat16),
                                                   ((9, 0), torch.bfloat16)])
def test_cuda_dtype_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_dtype("auto", "cuda") == expected
    # on a GPU auto keeps the parameters in the compute dtype (no autocast), as before
    assert parameter_dtype("auto", "cuda") == (expected, None)


def test_no_cuda_means_no_cuda_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.bf16_is_fast("cuda") is False


def test_load_model_auto_is_mixed_precision_only_where_bf16_is_fast(monkeypatch):
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx512_bf16"})
    mixed, _ = models.load_model("tiny-random", device="cpu")
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}  # float32 master weights
    assert autocast_dtype(mixed) == torch.bfloat16
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2"})
    plain, _ = models.load_model("tiny-random", device="cpu")
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    assert autocast_dtype(plain) is None


# --------------------------------------------------------------------------- mixed precision


def _tiny(tokenizer):
    return models.tiny_random_model(len(tokenizer), seed=0).eval()


def _random_pairs(seed, vocab, n=5):
    rng = random.Random(seed)
    ctx = [[rng.randrange(3, vocab) for _ in range(rng.randint(2, 20))] for _ in range(n)]
    comp = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 15))] for _ in range(n)]
    return ctx, comp


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_precision_signal_agrees_with_float64_reference(tokenizer, seed):
    base = _tiny(tokenizer)
    mixed = enable_autocast(copy.deepcopy(base), torch.bfloat16)
    ref64 = copy.deepcopy(base).double()
    ctx, comp = _random_pairs(seed, len(tokenizer))
    with torch.no_grad():
        got = completion_logprobs(mixed, ctx, comp, pad_token_id=tokenizer.pad_token_id)
        for c, r, lp in zip(ctx, comp, got):
            assert lp.dtype == torch.float32  # the log-softmax stays float32
            want = reference_logprobs(ref64, c, r)
            assert torch.allclose(lp.double(), want, atol=MIXED_LOGPROB_TOL), (lp, want)
    assert not torch.is_autocast_enabled("cpu")  # the region is closed again


def test_bf16_parameters_signal_agrees_with_float64_reference(tokenizer):
    base = _tiny(tokenizer)
    half = copy.deepcopy(base).to(torch.bfloat16)
    ref64 = copy.deepcopy(base).double()
    ctx, comp = _random_pairs(3, len(tokenizer))
    with torch.no_grad():
        for head in ("float32", "compute"):
            got = completion_logprobs(half, ctx, comp, pad_token_id=tokenizer.pad_token_id, head_precision=head)
            for c, r, lp in zip(ctx, comp, got):
                assert lp.dtype == torch.float32
                assert torch.allclose(lp.double(), reference_logprobs(ref64, c, r), atol=BF16_LOGPROB_TOL)


def test_mixed_precision_gradients_agree_with_float64(tokenizer):
    base = _tiny(tokenizer)
    mixed = enable_autocast(copy.deepcopy(base), torch.bfloat16).train()
    ref64 = copy.deepcopy(base).double().train()
    ctx, comp = _random_pairs(5, len(tokenizer), n=3)
    weights = [torch.linspace(-1, 1, len(r)) for r in comp]
    lps = completion_logprobs(mixed, ctx, comp, pad_token_id=tokenizer.pad_token_id)
    sum((w * lp).sum() for w, lp in zip(weights, lps)).backward()
    sum((w.double() * reference_logprobs(ref64, c, r)).sum() for w, c, r in zip(weights, ctx, comp)).backward()
    for (name, p), q in zip(mixed.named_parameters(), ref64.parameters()):
        assert p.grad.dtype == torch.float32  # float32 master gradients
        err = (p.grad.double() - q.grad).norm() / q.grad.norm().clamp(min=1e-12)
        assert err < 0.05, (name, float(err))


def test_autocast_model_forward_generate_and_copy(tokenizer):
    model = enable_autocast(_tiny(tokenizer), torch.bfloat16)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.dtype == torch.bfloat16  # products ran in bf16
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(Exception):
        model(input_ids=torch.tensor([[10**9]]))  # an error inside forward ...
    assert not torch.is_autocast_enabled("cpu")  # ... does not leave autocast switched on
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    twin = copy.deepcopy(model)
    assert twin.generate.__self__ is twin and autocast_dtype(twin) == torch.bfloat16
    with torch.no_grad():
        twin.get_input_embeddings().weight.mul_(0)  # the copy's generate must use the copy's weights
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0), out)


# --------------------------------------------------------------------------- planner


def _cost(groups, lengths, overhead):
    return sum(len(g) * (max(lengths[k][0] for k in g) + max(lengths[k][1] for k in g)) + overhead for g in groups)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_groups", [1, 2, 3])
def test_planner_is_optimal_under_a_group_cap(seed, max_groups):
    rng = random.Random(seed)
    lengths = [(rng.randint(1, 200), rng.randint(1, 100)) for _ in range(7)]
    overhead = rng.choice([0, 30, 300])
    groups = plan_microbatches(lengths, overhead_tokens=overhead, max_groups=max_groups)
    assert sorted(k for g in groups for k in g) == list(range(7)) and len(groups) <= max_groups
    order = sorted(range(7), key=lambda k: (sum(lengths[k]), lengths[k][0]))
    best = min(
        _cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, 7))], lengths, overhead)
        for g in range(max_groups)
        for cuts in itertools.combinations(range(1, 7), g)
    )
    assert _cost(groups, lengths, overhead) == best


def test_planner_falls_back_to_one_batch_when_planning_does_not_pay():
    lengths = [(100, 40), (100, 40), (90, 40), (100, 30), (20, 5), (20, 5)]
    split = plan_microbatches(lengths, overhead_tokens=10)
    assert len(split) > 1
    cost_single = len(lengths) * 140 + 10
    saving = 1 - _cost(split, lengths, 10) / cost_single
    assert 0 < saving < 0.5
    assert plan_microbatches(lengths, overhead_tokens=10, min_saving=saving + 0.01) == [
        sorted(range(6), key=lambda k: (sum(lengths[k]), lengths[k][0]))]
    assert len(plan_microbatches(lengths, overhead_tokens=10, min_saving=saving - 0.01)) > 1
    # equal rows: nothing to gain, one batch whatever the overhead
    assert len(plan_microbatches([(50, 20)] * 8, overhead_tokens=1)) == 1


def test_forward_overhead_is_measured_once_and_cached(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("SDPO_CACHE", str(tmp_path))
    monkeypatch.setattr(signal, "_overhead_memo", {})
    calls = []

    def fake_time(model, device, width, repeats=3):
        calls.append(width)
        return 0.010 + 0.0001 * width  # 10 ms fixed, 0.1 ms per token -> 100 tokens

    monkeypatch.setattr(signal, "_time_forward", fake_time)
    model = _tiny(tokenizer)
    assert signal.forward_overhead_tokens(model) == 100
    n = len(calls)
    assert signal.forward_overhead_tokens(model) == 100 and len(calls) == n  # memo
    monkeypatch.setattr(signal, "_overhead_memo", {})
    assert signal.forward_overhead_tokens(model) == 100 and len(calls) == n  # the cache file
    table = json.loads((tmp_path / "forward_overhead.json").read_text())
    assert list(table.values()) == [100]
    assert signal.forward_overhead_tokens(model, refresh=True) == 100 and len(calls) > n


def test_planner_options_do_not_change_the_scores(tokenizer):
    model = _tiny(tokenizer)
    ctx, comp = _random_pairs(7, len(tokenizer), n=6)
    with torch.no_grad():
        a = completion_logprobs(model, ctx, comp, pad_token_id=tokenizer.pad_token_id, overhead_tokens=0,
                                max_groups=None, min_saving=0.0)
        b = completion_logprobs(model, ctx, comp, pad_token_id=tokenizer.pad_token_id, overhead_tokens=0,
                                max_groups=1)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-5)


# --------------------------------------------------------------------------- optimizer


def test_adamw_options_fused_where_supported_and_same_algorithm():
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in init] for _ in range(3)]
    results = []
    for options in ({}, adamw_options([torch.nn.Parameter(p) for p in init])):
        params = [torch.nn.Parameter(p.clone()) for p in init]
        opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, **options)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        results.append(params)
    assert adamw_options([torch.nn.Parameter(p) for p in init]) == {"fused": True}
    for p, q in zip(*results):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    assert adamw_options([torch.nn.Parameter(torch.zeros(2, device="meta"))]) == {"foreach": True}
    assert adamw_options([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]) == {"foreach": True}
