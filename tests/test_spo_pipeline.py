"""The SPO LLM pipeline end to end on tiny random models (policy and reward model), as scripts."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sdpo.models import load_tokenizer, tiny_random_model

    root = tmp_path_factory.mktemp("spo-models")
    tok = load_tokenizer("tiny-random")
    policy = tiny_random_model(len(tok), seed=1)
    policy.generation_config.eos_token_id = tok.eos_token_id
    policy.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "reward")
    tok.save_pretrained(root / "reward")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Tell me about topic {i}."}) + "\n" for i in range(12)))
    return root


def script(name, *args, check=True):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=900, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_generate_train_evaluate_analyze(models, tmp_path):
    prefs = tmp_path / "prefs.jsonl"
    script("generate_preferences.py", "--dataset_id", models / "prompts.jsonl", "--num_samples", 8,
           "--model_id", models / "policy", "--reward_model_id", models / "reward", "--output", prefs,
           "--link_shift", 1.0, "--link_temperature", 1.0, "--seed", 3, "--gen_max_new_tokens", 6)
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert len(rows) == 8
    assert all(r["z"] in (0, 1) and r["link_shift"] == 1.0 and r["seed"] == 3 for r in rows)
    diffs = torch.tensor([r["diff"] for r in rows])
    assert diffs.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)  # unit population std (np.std)
    for method in ("dpo", "pspo", "ospo", "rspo"):
        out = tmp_path / method
        script("train_policy.py", "--pref_path", prefs, "--method", method, "--base_model_id", models / "policy",
               "--output_dir", out, "--max_steps", 3, "--batch_size", 4, "--grad_accum_steps", 1,
               "--learning_rate", 1e-3, "--refit_every", 2, "--lora_r", 4)
        meta = json.loads((out / f"{method}_final" / "spo_meta.json").read_text())
        assert meta["method"] == method and meta["n"] == 8 and meta["link_shift"] == 1.0
        assert meta["sign"] in (1.0, -1.0) and (method == "ospo" or meta["sign"] == 1.0)
        if method == "pspo":  # fitted on all pairs at step 0, refitted at step 2
            assert meta["pspo_refit_steps"] == [0, 2]
        logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(logs) == 3
    evals = tmp_path / "eval"
    # the OSPO orientation stored with the model is applied at evaluation (sign / beta)
    meta_path = tmp_path / "ospo" / "ospo_final" / "spo_meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "sign": -1.0}))
    for method in ("dpo", "pspo", "ospo"):
        script("evaluate_policy.py", "--model_id", tmp_path / method / f"{method}_final",
               "--ref_model_id", models / "policy", "--reward_model_id", models / "reward",
               "--output", evals / f"{method}.csv", "--prompts_path", prefs, "--betas", "0.5,1,2",
               "--eval_samples", 4, "--eval_max_new_tokens", 5)
    with open(evals / "ospo.csv") as f:
        assert {r["sign"] for r in csv.DictReader(f)} == {"-1.0"}
    with open(evals / "dpo.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in table] == [0.5, 1.0, 2.0]
    for r in table:
        for key in ("model_id", "ref_model_id", "reward_model_id", "link_shift", "link_temperature", "seed",
                    "method", "n", "beta", "reward", "kl"):
            assert r[key] != "", key
        assert r["method"] == "dpo" and r["n"] == "8"
    proc = script("analyze_results.py", "--results_dir", evals)
    assert "reward at KL" in proc.stdout
    assert (evals / "analysis" / "pareto.png").exists() and (evals / "analysis" / "reward_vs_shift.png").exists()


def test_beta_one_mixture_is_the_policy_and_kl_matches_exact_logprobs(models):
    """At beta = 1 the mixture is the policy; the reported KL is sum log pi(y) - log pi_ref(y) of the sample."""
    from sdpo.models import load_model
    from sdpo.spo.pipeline import sample_mixture
    from sdpo.reference import reference_logprobs

    policy, tok = load_model(str(models / "policy"), dtype="float32", device="cpu")
    ref, _ = load_model("tiny-random", dtype="float32", device="cpu", seed=5)
    prompt = [tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]]
    g = torch.Generator().manual_seed(0)
    texts, kls = sample_mixture(policy, ref, tok, [list(prompt[0])], 1.0, 6, g)
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    if not ids:
        pytest.skip("sampled an immediate EOS")
    # re-score the sampled tokens (the sample may end with EOS, which decode drops)
    g = torch.Generator().manual_seed(0)
    _, kls2 = sample_mixture(policy, ref, tok, [list(prompt[0])], 1.0, 6, g)
    assert kls == kls2  # deterministic for a seed
    lp = reference_logprobs(policy, list(prompt[0]), ids)
    lr = reference_logprobs(ref, list(prompt[0]), ids)
    if len(ids) == 6:  # no EOS: the KL covers exactly these tokens
        assert kls[0] == pytest.approx(float((lp - lr).sum().detach()), abs=1e-3)


def test_killed_grid_resumes_without_redoing_finished_cells(models, tmp_path):
    grid = tmp_path / "grid"
    def grid_args(shifts="0,1", methods="dpo,rspo"):
        return ["--seeds", "1", "--link_shifts", shifts, "--n_list", 6, "--methods", methods, *common]

    common = ["--gpus", "cpu,cpu", "--grid_dir", grid, "--dataset_id", models / "prompts.jsonl", "--model_id", models / "policy",
              "--reward_model_id", models / "reward", "--max_steps", 2, "--batch_size", 3,
              "--gen_max_new_tokens", 4, "--eval_max_new_tokens", 4, "--eval_samples", 3, "--betas", "1,2"]
    # a "killed" grid: one cell finished before the kill
    first = script("run_grid.py", *grid_args(shifts="0", methods="dpo"))
    assert "1 cells, 0 already finished, 1 to run" in first.stdout
    finished = sorted(p.name for p in (grid / "eval").glob("*.csv"))
    assert finished == ["dpo_seed1_shift0_n6.csv"]
    stamp = (grid / "eval" / finished[0]).stat().st_mtime_ns
    dry = script("run_grid.py", *grid_args(), "--dry_run", "true")
    assert "4 cells, 1 already finished, 3 to run" in dry.stdout
    script("run_grid.py", *grid_args())
    assert len(list((grid / "eval").glob("*.csv"))) == 4
    assert (grid / "eval" / finished[0]).stat().st_mtime_ns == stamp  # not redone
    again = script("run_grid.py", *grid_args())
    assert "4 already finished, 0 to run" in again.stdout


def test_bad_preference_file_names_the_line(tmp_path):
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "y0": "a", "y1": "b", "z": 1}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    proc = script("train_policy.py", "--pref_path", bad, "--base_model_id", "tiny-random", check=False)
    assert proc.returncode == 2
    assert f"{bad}:2: missing field 'y0'" in proc.stderr
    proc = script("train_policy.py", "--pref_path", bad, "--method", "ppo", check=False)
    assert proc.returncode == 2 and "method must be one of" in proc.stderr
