"""Checkpoint evaluation as the reference's TL;DR evaluation: the task's system prompt, the
"TL;DR:" cue stripped, the persona added to the task's system prompt for the oracle."""

import pytest

from sdpo.data.prompts import PromptRecord
from sdpo.eval.checkpoints import GenerationCache, answers_for
from sdpo.templates import SYSTEM_PROMPT_PRESETS


@pytest.fixture
def captured_contexts(monkeypatch):
    seen = []

    def fake_generate(self, contexts, **kwargs):
        seen.extend(self.tokenizer.decode(c) for c in contexts)
        return [[self.tokenizer.eos_token_id]] * len(contexts), ["ok"] * len(contexts)

    from sdpo.engines import Engine

    monkeypatch.setattr(Engine, "generate_texts", fake_generate)  # every engine's answers pass through here
    return seen


def test_tldr_system_prompt_and_cue(tmp_path, tiny, captured_contexts):
    model, tok = tiny
    prompts = [PromptRecord([{"role": "user", "content": "My cat naps all day.\nTL;DR:\n"}])]
    answers_for("m", prompts, GenerationCache(tmp_path), max_new_tokens=4, max_prompt_tokens=256,
                system_prompt="tldr", loader=lambda name: (model, tok))
    text = captured_contexts[-1]
    assert SYSTEM_PROMPT_PRESETS["tldr"] in text and "My cat naps all day." in text and "TL;DR:\n" not in text
    answers_for("m", prompts, GenerationCache(tmp_path), max_new_tokens=4, max_prompt_tokens=256,
                system_prompt="tldr", persona="Likes short answers.", loader=lambda name: (model, tok))
    oracle = captured_contexts[-1]
    assert SYSTEM_PROMPT_PRESETS["tldr"] + "\nThe user you are interacting with has the following persona:\n" \
           "Likes short answers." in oracle
    # the general preset: an empty system message, the cue kept
    answers_for("m", prompts, GenerationCache(tmp_path / "g"), max_new_tokens=4, max_prompt_tokens=256,
                system_prompt="general", loader=lambda name: (model, tok))
    assert "<|im_start|>system\n<|im_end|>" in captured_contexts[-1] and "TL;DR:" in captured_contexts[-1]


def test_ckpts_all_skips_incomplete_checkpoints(tmp_path):
    from sdpo.eval.checkpoints import find_checkpoints

    run = tmp_path / "run"
    for step in (3, 6, 9):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    for step in (3, 6):
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"step": {step}}}')
    (run / "checkpoint-12.tmp").mkdir()
    with pytest.warns(UserWarning):
        found = find_checkpoints(str(run), None)
    assert [name for name, _ in found] == ["checkpoint-3", "checkpoint-6"]
    with pytest.raises(FileNotFoundError, match=r"step\(s\) \[9\]"):
        find_checkpoints(str(run), [9])
