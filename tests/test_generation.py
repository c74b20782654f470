"""The compacting sampler against ``model.generate`` (float64 model, so batch shape changes cannot flip a token)."""

import copy

import pytest
import torch

from sdpo.generation import _plain_cache, hf_generate, sample_compacting


@pytest.fixture(scope="module")
def tiny64(tiny):
    model, tok = tiny
    return copy.deepcopy(model).double(), tok


def _contexts(tok):
    texts = ["hello there", "a much longer question about many different things and more", "x", "what is 2 + 2?"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_greedy_equals_generate_while_rows_finish_early(tiny64):
    model, tok = tiny64
    assert _plain_cache(model) is not None  # the compacting loop runs, not the fallback
    contexts = _contexts(tok)
    plain = hf_generate(model, tok, contexts, max_new_tokens=12, temperature=0)
    # make a token that some rows emit early the end-of-sequence token, so rows end at different steps
    stop = plain[0][2]
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        expected = hf_generate(model, tok, contexts, max_new_tokens=12, temperature=0)
        got = sample_compacting(model, tok, contexts, max_new_tokens=12, temperature=0, compact_every=1)
    finally:
        model.generation_config.eos_token_id = saved
    lengths = sorted(len(r) for r in expected)
    assert lengths[0] < 12 and lengths[-1] == 12, lengths  # some rows finished early, some ran to the cap
    assert expected[0][-1] == stop
    assert got == expected


def test_sampling_consumes_randomness_like_generate(tiny64):
    model, tok = tiny64
    contexts = _contexts(tok)
    torch.manual_seed(3)
    expected = hf_generate(model, tok, contexts, max_new_tokens=10, temperature=0.7)
    torch.manual_seed(3)
    got = sample_compacting(model, tok, contexts, max_new_tokens=10, temperature=0.7)
    assert got == expected  # no row ended, so nothing was compacted: same draws, same tokens
    torch.manual_seed(4)
    other = sample_compacting(model, tok, contexts, max_new_tokens=10, temperature=0.7)
    assert other != got


def test_models_without_a_plain_cache_fall_back_to_generate(monkeypatch, tiny64):
    import sdpo.generation as generation

    model, tok = tiny64
    calls = []
    monkeypatch.setattr(generation, "_plain_cache", lambda m: None)
    monkeypatch.setattr(generation, "hf_generate", lambda *a, **k: calls.append(k) or [[1]])
    assert sample_compacting(model, tok, _contexts(tok), max_new_tokens=3, temperature=0) == [[1]]
    assert calls == [{"max_new_tokens": 3, "temperature": 0}]
