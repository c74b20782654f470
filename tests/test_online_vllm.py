"""``sdpo train-online --use_vllm true`` without vLLM or a GPU: a stand-in ``vllm`` module.

The stand-in implements the surface TRL's ``VLLMGeneration`` (our engine, ``sdpo.vllm_backend``)
calls in colocate mode: ``LLM(model=path, ...)`` loading the saved policy with transformers,
``LLM.generate(prompts, sampling_params=...)`` returning ``.outputs[0].token_ids``,
``SamplingParams``, the weight-load entry point
``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights`` and
``reset_prefix_cache``. It decodes its own way (a plain loop of full forwards, no KV cache,
no padding), stopping as vLLM does: at a ``stop_token_ids`` id (kept), and at the EOS unless
``ignore_eos``. TRL binds ``LLM`` / ``SamplingParams`` and checks ``is_vllm_available`` (package
metadata) when its module is imported, so the test sets those three names there too, and the
CUDA check of colocate mode is ``sdpo.vllm_backend.cuda_available``.
"""

import copy
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdpo.cli import main
from tests.test_online import _args


class FakeSamplingParams:
    def __init__(self, n=1, temperature=1.0, max_tokens=16, stop_token_ids=None, ignore_eos=False, **other):
        self.n, self.temperature, self.max_tokens = n, temperature, max_tokens
        self.stop_token_ids, self.ignore_eos, self.other = list(stop_token_ids or []), ignore_eos, other


class FakeLLM:
    instances: list = []

    def __init__(self, model, **kwargs):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        assert Path(model, "config.json").is_file(), model  # built from the policy's weights on disk
        self.kwargs = kwargs
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.eos = AutoTokenizer.from_pretrained(model).eos_token_id
        self.generate_calls = 0
        self.prompts = []
        self.pushes = []  # one dict name -> tensor per weight sync (closed by reset_prefix_cache)
        self._open = {}
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self._load_weights))
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner)))
        FakeLLM.instances.append(self)

    def _load_weights(self, pairs):
        params = dict(self.model.named_parameters())
        for name, tensor in pairs:
            self._open[name] = tensor.detach().clone()
            with torch.no_grad():
                params[name].copy_(tensor)

    def reset_prefix_cache(self):
        self.pushes.append(self._open)
        self._open = {}

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm=False):
        self.generate_calls += 1
        sp = sampling_params
        assert sp.n == 1
        outputs = []
        for prompt in prompts:
            ids = list(prompt["prompt_token_ids"])
            self.prompts.append(ids)
            new = []
            for _ in range(sp.max_tokens):
                logits = self.model(torch.tensor([ids + new])).logits[0, -1].float()
                if sp.temperature > 0:
                    token = int(torch.multinomial(torch.softmax(logits / sp.temperature, -1), 1))
                else:
                    token = int(logits.argmax())
                new.append(token)
                if token in sp.stop_token_ids or (token == self.eos and not sp.ignore_eos):
                    break
            outputs.append(types.SimpleNamespace(prompt_token_ids=ids, outputs=[
                types.SimpleNamespace(token_ids=new, logprobs=None)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    import trl.generation.vllm_generation as trl_vllm

    import sdpo.vllm_backend as backend

    FakeLLM.instances.clear()
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(trl_vllm, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(trl_vllm, "LLM", FakeLLM, raising=False)
    monkeypatch.setattr(trl_vllm, "SamplingParams", FakeSamplingParams, raising=False)
    monkeypatch.setattr(backend, "cuda_available", lambda: True)
    # colocate mode sets the rendezvous variables for vLLM's external launcher: restore them afterwards
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    yield FakeLLM
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_two_step_run_generates_through_vllm_and_pushes_weights(fake_vllm, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(prompts_file, out, "--max_steps", "2", "--save_steps", "1", "--use_vllm", "true")) == 0
    assert "online SDPO: 2 steps" in capsys.readouterr().out
    [llm] = fake_vllm.instances
    assert llm.generate_calls == 2  # one call per optimizer step (2 prompts, one batch)
    assert len(llm.prompts) == 4 and llm.kwargs["max_model_len"] == 2048 + 8
    for name in ("checkpoint-1/model.safetensors", "checkpoint-2/model.safetensors", "metrics.jsonl", "summary.json"):
        assert (out / name).exists(), name
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["time/vllm_sync"] >= 0 and m["response_tokens_mean"] > 0 for m in steps)
    # a push when the engine is built (the starting weights), then one after each optimizer step
    assert len(llm.pushes) == 3
    for step in (1, 2):
        saved = load_file(out / f"checkpoint-{step}" / "model.safetensors")
        pushed = llm.pushes[step]
        shared = set(saved) & set(pushed)
        assert "model.embed_tokens.weight" in shared and len(shared) >= len(saved) - 1
        assert max((saved[k] - pushed[k]).abs().max().item() for k in shared) == 0.0, step
    moved = max((llm.pushes[2][k] - llm.pushes[0][k]).abs().max().item() for k in llm.pushes[0])
    assert moved > 1e-4  # it trained, and the engine got the trained weights


def _contexts(tokenizer, n=3):
    from sdpo.templates import fit_context, get_template

    template = get_template("hindsight", system_prompt="general")
    texts = ["Name three colors.", "Explain rain to a child, please, in a few words.", "hi"][:n]
    return [fit_context(tokenizer, template, [{"role": "user", "content": t}], 2048)[0] for t in texts]


def _generator(model, tokenizer, tmp_path, max_new_tokens):
    from accelerate import Accelerator

    from sdpo.trainers.online import OnlineSDPOConfig
    from sdpo.vllm_backend import VLLMPolicyGenerator

    cfg = OnlineSDPOConfig(train_jsonl="x", output_dir=str(tmp_path / "o"), use_vllm=True, temperature=0.0,
                           max_new_tokens=max_new_tokens, per_device_train_batch_size=3)
    return VLLMPolicyGenerator(model, Accelerator(cpu=True), tokenizer, cfg)


def test_greedy_token_ids_equal_the_transformers_path(fake_vllm, tokenizer, tmp_path):
    from sdpo.models import tiny_random_model
    from sdpo.trainers.online import generate

    model = tiny_random_model(len(tokenizer), seed=3).eval()
    contexts = _contexts(tokenizer)
    want, want_texts = generate(model, tokenizer, contexts, max_new_tokens=12, temperature=0.0, device="cpu")
    got, got_texts = _generator(model, tokenizer, tmp_path, 12).generate(contexts)
    assert got == want and got_texts == want_texts
    assert all(len(r) == 12 for r in got)  # the random model never says EOS here: no cut on either side

    # a tokenizer whose EOS is a token greedy decoding produces mid-response: both paths stop there, EOS kept
    eos = want[1][4]
    tok = copy.deepcopy(tokenizer)
    tok.eos_token = tok.convert_ids_to_tokens(eos)
    assert tok.eos_token_id == eos
    want, _ = generate(model, tok, contexts, max_new_tokens=12, temperature=0.0, device="cpu")
    got, _ = _generator(model, tok, tmp_path, 12).generate(contexts)
    assert got == want and want[1][-1] == eos and len(want[1]) <= 5


def test_vllm_missing_or_bad_mode_is_one_line_before_the_model_loads(prompts_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # not importable, whatever this machine has
    args = _args(prompts_file, tmp_path / "a", "--use_vllm", "true")
    args[args.index("--model_name_or_path") + 1] = "/no/such/model"  # would fail later if the check did not
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "needs vLLM" in err and "pip install vllm" in err and "\n" not in err, err

    assert main(_args(prompts_file, tmp_path / "b", "--vllm_mode", "nowhere")) == 2
    err = capsys.readouterr().err.strip()
    assert "vllm_mode must be colocate or server, got 'nowhere'" in err and "\n" not in err, err


def test_colocate_without_cuda_is_refused(prompts_file, tmp_path, capsys, monkeypatch):
    import sdpo.vllm_backend as backend

    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    args = _args(prompts_file, tmp_path / "a", "--use_vllm", "true")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device" in err and "--vllm_mode server" in err and "\n" not in err, err


class FakeClient:
    """TRL's ``VLLMClient`` as ``VLLMGeneration`` uses it in server mode, serving a :class:`FakeLLM`."""

    instances: list = []
    model_dir = None

    def __init__(self, base_url=None, group_port=51216, connection_timeout=0.0):
        self.base_url, self.group_port = base_url, group_port
        self.llm = FakeLLM(str(FakeClient.model_dir))
        self.sampling = []
        FakeClient.instances.append(self)

    def init_communicator(self, device=0):
        self.device = device

    def generate(self, prompts, features=None, n=1, temperature=1.0, max_tokens=16, generation_kwargs=None, **other):
        assert features is None
        sp = FakeSamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, **(generation_kwargs or {}))
        self.sampling.append(sp)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=sp)
        return {"prompt_ids": [o.prompt_token_ids for o in outs],
                "completion_ids": [o.outputs[0].token_ids for o in outs], "logprobs": None}

    def update_named_params(self, metadata, params):
        self.metadata = metadata
        self.llm._load_weights(list(params))

    def reset_prefix_cache(self):
        self.llm.reset_prefix_cache()


def test_server_mode_goes_through_trls_client(fake_vllm, monkeypatch, prompts_file, tiny_dir, tmp_path):
    import trl.generation.vllm_generation as trl_vllm

    import sdpo.vllm_backend as backend

    FakeClient.instances.clear()
    FakeClient.model_dir = tiny_dir
    monkeypatch.setattr(trl_vllm, "VLLMClient", FakeClient)
    monkeypatch.setattr(backend, "cuda_available", lambda: pytest.fail("server mode needs no local CUDA check"))
    out = tmp_path / "run"
    args = _args(prompts_file, out, "--max_steps", "1", "--save_steps", "1", "--use_vllm", "true", "--vllm_mode",
                 "server", "--vllm_server_base_url", "http://gpu-box:8000", "--temperature", "0.7")
    args[args.index("--model_name_or_path") + 1] = str(tiny_dir)
    assert main(args) == 0
    [client] = FakeClient.instances
    assert client.base_url == "http://gpu-box:8000" and client.llm.generate_calls == 1
    [sp] = client.sampling
    assert (sp.temperature, sp.max_tokens, sp.ignore_eos) == (0.7, 8, True) and len(sp.stop_token_ids) == 1
    assert len(client.llm.pushes) == 2  # at start, after the step
    saved = load_file(out / "checkpoint-1" / "model.safetensors")
    pushed = client.llm.pushes[1]
    assert "model.embed_tokens.weight" in pushed
    assert max((saved[k] - pushed[k]).abs().max().item() for k in set(saved) & set(pushed)) == 0.0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # GRPOConfig's own deprecated names
def test_vllm_is_off_by_default_with_trls_option_defaults():
    from trl import GRPOConfig

    from sdpo.trainers.online import OnlineSDPOConfig

    cfg, trl_cfg = OnlineSDPOConfig(train_jsonl="x"), GRPOConfig(output_dir="unused", report_to="none")
    assert cfg.use_vllm is False  # the reference's use_vllm=False: transformers' generate, as before
    for name in ("use_vllm", "vllm_mode", "vllm_server_base_url", "vllm_server_host", "vllm_server_port",
                 "vllm_server_timeout", "vllm_group_port", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
                 "vllm_max_model_length"):
        assert getattr(cfg, name) == getattr(trl_cfg, name), name
