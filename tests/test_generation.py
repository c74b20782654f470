"""Batched generation for the local simulator: rows end at the model's EOS ids, padding is harmless."""

import copy

import pytest

from sdpo.feedback.simulators import StyleUserSimulator
from sdpo.generation import eos_ids, hf_generate, left_pad


def _contexts(tok):
    texts = ["hello there", "a much longer question about many different things and more", "x", "what is 2 + 2?"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_left_pad_puts_padding_first():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_rows_are_cut_at_the_generation_config_eos(tiny):
    model, tok = tiny
    contexts = _contexts(tok)
    plain = hf_generate(model, tok, contexts, max_new_tokens=12, temperature=0)
    stop = plain[0][2]  # a token row 0 emits early becomes an end-of-reply id
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        assert set(eos_ids(model, tok)) == {stop, tok.eos_token_id}
        cut = hf_generate(model, tok, contexts, max_new_tokens=12, temperature=0)
    finally:
        model.generation_config.eos_token_id = saved
    assert cut[0] == plain[0][: plain[0].index(stop) + 1]
    for row, full in zip(cut, plain):  # greedy: each row is a prefix of the uncut one, ending at EOS or the cap
        assert full[: len(row)] == row
        assert row[-1] == stop or len(row) == 12


def test_batched_rows_equal_one_at_a_time_greedy(tiny):
    model, tok = tiny
    model = copy.deepcopy(model).double()  # float64: padding cannot flip a near-tie
    contexts = _contexts(tok)
    batched = hf_generate(model, tok, contexts, max_new_tokens=6, temperature=0)
    single = [hf_generate(model, tok, [c], max_new_tokens=6, temperature=0)[0] for c in contexts]
    assert batched == single


def test_simulator_uses_the_given_sampler_and_batch_size(tiny):
    model, tok = tiny
    calls = []

    def sampler(m, t, contexts, *, max_new_tokens, temperature):
        calls.append((len(contexts), max_new_tokens, temperature))
        return [t("fine", add_special_tokens=False)["input_ids"]] * len(contexts)

    sim = StyleUserSimulator("no_emojis", model=model, tokenizer=tok, max_new_tokens=9, batch_size=2)
    replies = sim.followups_with(["a", "b", "c"], ["x", "y", "z"], sampler=sampler)
    assert replies == ["fine"] * 3 and calls == [(2, 9, pytest.approx(0.7)), (1, 9, pytest.approx(0.7))]
    calls.clear()
    sim.followups_with(["a", "b", "c"], ["x", "y", "z"], sampler=sampler, batch_size=1)
    assert [c[0] for c in calls] == [1, 1, 1] and sim.batch_size == 2 and sim.sampler is None
