import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Converted models are cached inside the checkout unless the caller chose a place.
os.environ.setdefault("SDPO_CACHE", str(ROOT / ".sdpo-cache"))
# Tests never reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# trackio (the default tracker) logs into this folder during tests, not the user's cache.
os.environ.setdefault("TRACKIO_DIR", str(ROOT / ".sdpo-cache" / "trackio"))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    from sdpo.models import load_tokenizer

    return load_tokenizer("tiny-random")


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """(model, tokenizer): a 2-layer random Llama model in float32, eval mode."""
    from sdpo.models import tiny_random_model

    model = tiny_random_model(len(tokenizer), seed=0).eval()
    return model, tokenizer
