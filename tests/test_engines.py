"""Generation engines for frozen models (sdpo.engines): same contract as the transformers path."""

from __future__ import annotations

import json
import sys
import types

import pytest

from sdpo import engines
from sdpo.engines import CTranslate2Engine, TransformersEngine, check_backend, open_engine, weights_dir

pytest.importorskip("ctranslate2", reason="the dev extra installs ctranslate2 (pip install -e '.[dev]')")


def _contexts(tokenizer, n=3):
    from sdpo.data.prompts import load_prompts
    from sdpo.templates import fit_context, get_template
    from tests.conftest import ROOT

    prompts = load_prompts(str(ROOT / "benchmarks" / "data" / "everyday_prompts.jsonl"))[:n]
    template = get_template(system_prompt="general")
    return [fit_context(tokenizer, template, p.messages, 512)[0] for p in prompts]


@pytest.fixture(scope="module")
def embedded_pair():
    from sdpo.models import load_model

    model, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    return model.eval(), tok


def test_ctranslate2_greedy_answers_are_the_transformers_answers(embedded_pair):
    model, tok = embedded_pair
    contexts = _contexts(tok)
    reference = TransformersEngine(model, tok).generate(contexts, max_new_tokens=40, temperature=0.0)
    ct2 = open_engine("ctranslate2", "smollm2-135m", device="cpu")
    ids, texts = ct2.generate_texts(contexts, max_new_tokens=40, temperature=0.0)
    assert ids == reference  # token for token, EOS kept where produced
    assert texts == [tok.decode(r, skip_special_tokens=True) for r in reference]
    assert all(0 < len(r) <= 40 for r in ids)
    # the converted model is cached: a second engine does not convert again
    from sdpo.models import cache_dir

    before = sorted(p.name for p in (cache_dir() / "ctranslate2").iterdir())
    assert any(name.startswith("smollm2-135m-instruct-") for name in before)
    open_engine("ctranslate2", "smollm2-135m", device="cpu")
    assert sorted(p.name for p in (cache_dir() / "ctranslate2").iterdir()) == before


def test_ctranslate2_stops_at_eos_int8_and_sampling(embedded_pair):
    _, tok = embedded_pair
    contexts = _contexts(tok, 2)
    int8 = open_engine("ctranslate2-int8", "smollm2-135m", device="cpu")
    assert int8.name == "ctranslate2-int8"
    for row in int8.generate(contexts, max_new_tokens=200, temperature=0.0):
        assert 0 < len(row) <= 200 and tok.eos_token_id not in row[:-1]
        assert row[-1] == tok.eos_token_id or len(row) == 200
    # sampling (not reproducible by a seed on CTranslate2's threads): at temperature 1 the 8 rows of one context
    # are not all the greedy answer, and every row is a valid reply of at most 12 tokens
    sampler = open_engine("ctranslate2", "smollm2-135m", device="cpu").as_sampler()
    sampled = sampler(None, tok, [contexts[0]] * 8, max_new_tokens=12, temperature=1.0)
    greedy = sampler(None, tok, [contexts[0]], max_new_tokens=12, temperature=0.0)[0]
    assert all(0 < len(r) <= 12 and max(r) < len(tok) for r in sampled)
    assert any(r != greedy for r in sampled) and len({tuple(r) for r in sampled}) > 1


def test_unknown_or_missing_backend_is_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"--generation_backend must be one of transformers, ctranslate2"):
        check_backend("llama.cpp")
    real = engines.importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name))
    with pytest.raises(ValueError, match=r"--judge_backend vllm needs the package 'vllm'.*pip install vllm"):
        check_backend("vllm", "--judge_backend")


def test_engines_refuse_an_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    from sdpo.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="a LoRA adapter .*merge the adapter"):
        weights_dir(str(tmp_path))
    with pytest.raises(ModelLoadError, match="local Hugging Face cache"):
        weights_dir("someone/not-downloaded-model")


def test_local_judge_and_simulator_on_ctranslate2_match_transformers():
    from sdpo.feedback.simulators import StyleUserSimulator
    from sdpo.judges.pairwise import LocalJudge

    prompts, a, b = ["How do I boil an egg?"] * 2, ["Boil it 8 minutes.", "Eggs."], ["Put it in water.", "Boil."]
    hf = LocalJudge("concise_casual_beginner", model="tiny-random")
    ct2 = LocalJudge("concise_casual_beginner", model="tiny-random", backend="ctranslate2")
    assert ct2.cache_id.endswith(":ctranslate2") and not hf.cache_id.endswith("ctranslate2")
    assert ct2._replies(prompts, a, b) == hf._replies(prompts, a, b)
    sim_hf = StyleUserSimulator("concise_casual_beginner", model="tiny-random", temperature=0.0, max_new_tokens=8)
    sim_ct2 = StyleUserSimulator("concise_casual_beginner", model="tiny-random", temperature=0.0, max_new_tokens=8,
                                 backend="ctranslate2")
    assert sim_ct2.model is None  # no torch model loaded for the engine's simulator
    # the transformers simulator also stops at the generation config's EOS ids; the tiny model has one, the same
    assert sim_ct2.followups(prompts, a) == sim_hf.followups(prompts, a)


def test_online_config_checks_the_simulator_backend():
    from sdpo.trainers.online import OnlineSDPOConfig

    with pytest.raises(ValueError, match="--simulator_backend must be one of"):
        OnlineSDPOConfig(simulator_backend="onnx", output_dir="unused")


def test_eval_answers_through_ctranslate2(tmp_path, capsys):
    from sdpo.cli import main
    from sdpo.data.prompts import PromptRecord, write_prompts

    prompts = write_prompts([PromptRecord([{"role": "user", "content": f"Say something about topic {i}."}])
                             for i in range(4)], tmp_path / "p.jsonl")
    run = tmp_path / "run"
    assert main(["train-online", "--train_jsonl", str(prompts), "--model_name_or_path", "tiny-random",
                 "--simulator", "rule", "--style", "no_emojis", "--max_steps", "1", "--save_steps", "1",
                 "--per_device_train_batch_size", "2", "--max_new_tokens", "4", "--summary_prompts", "0",
                 "--progress", "false", "--output_dir", str(run)]) == 0
    args = ["eval", "checkpoints", "--run_dir", str(run), "--data_path", str(prompts), "--ckpts", "1",
            "--eval_n", "4"]
    assert main(args + ["--output_dir", str(tmp_path / "hf")]) == 0
    assert main(args + ["--output_dir", str(tmp_path / "ct2"), "--generation_backend", "ctranslate2"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-1: generating 4 of 4 answers" in out

    def answers(d):
        rows = [json.loads(line) for f in sorted((tmp_path / d / "generations").glob("*.jsonl"))
                for line in f.read_text().splitlines()]
        return sorted(r["answer"] for r in rows)

    assert answers("ct2") == answers("hf")  # float32 greedy: the same answers, cached under other keys
    assert json.loads((tmp_path / "ct2" / "winrates.json").read_text())["generation_backend"] == "ctranslate2"
    assert main(args + ["--generation_backend", "llama.cpp"]) == 2


def test_vllm_engine_maps_the_sampling_settings(monkeypatch, tmp_path):
    """vLLM needs a CUDA GPU: a stand-in module records what the engine asks of vllm.LLM."""
    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            calls["params"] = kw

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, params, use_tqdm=False):
            calls["prompts"] = prompts
            out = types.SimpleNamespace
            return [out(outputs=[out(token_ids=[5, 6, 2, 7])]), out(outputs=[out(token_ids=[8, 9])])]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: object())
    tok = types.SimpleNamespace(eos_token_id=2, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    engine = open_engine("vllm", "tiny-random", tokenizer=tok)
    assert calls["llm"]["model"] == str(weights_dir("tiny-random"))
    ids = engine.generate([[1, 3], [1, 4, 4]], max_new_tokens=16, temperature=0.0)
    assert ids == [[5, 6, 2], [8, 9]]  # cut after the tokenizer's EOS, which is kept
    assert calls["prompts"] == [{"prompt_token_ids": [1, 3]}, {"prompt_token_ids": [1, 4, 4]}]
    assert calls["params"]["max_tokens"] == 16 and calls["params"]["temperature"] == 0.0
    assert calls["params"]["stop_token_ids"] == [2] and calls["params"]["ignore_eos"] is True
