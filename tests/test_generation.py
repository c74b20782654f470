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


def test_local_simulator_fits_its_context_keeping_instructions_request_and_answer_ends(tiny):
    model, tok = tiny
    seen = []

    def sampler(model, tokenizer, contexts, *, max_new_tokens, temperature):
        seen.extend(contexts)
        return [tok("ok", add_special_tokens=False)["input_ids"]] * len(contexts)

    short = StyleUserSimulator("no_emojis", model=model, tokenizer=tok, sampler=sampler, max_context_tokens=400)
    full = short.fitted_context("What is 2+2?", "Four.")
    assert short.fitted_context("What is 2+2?", "Four.") == full and short.stats.truncated == 0  # fits: untouched

    history = " ".join(f"old turn {i} about gardening." for i in range(300)) + " FINAL QUESTION: name a colour?"
    with pytest.warns(UserWarning, match="simulator/truncated"):
        replies = short.followups([history, "Hi"], ["Blue, the colour of the sky. ANSWER END", "Hello!"])
    assert replies == ["ok", "ok"] and short.stats.truncated == 1
    assert short.stats.as_metrics()["simulator/truncated"] == 1
    text = tok.decode(seen[0])
    assert len(seen[0]) <= 400
    assert short.persona in text and "FINAL QUESTION: name a colour?" in text and "ANSWER END" in text
    assert "old turn 0 " not in text  # the oldest turns went first

    answer = "START " + " ".join(f"word{i}" for i in range(800)) + " STOP"
    ctx = short.fitted_context("Tell me a story.", answer)
    text = tok.decode(ctx)
    assert len(ctx) <= 400 and "START" in text and "STOP" in text and "[...]" in text and short.persona in text
    assert short.stats.truncated == 2
