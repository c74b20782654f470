"""``sdpo models``: list the model aliases; ``--prepare`` converts and caches the embedded model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelsArguments:
    prepare: bool = field(
        default=False, metadata={"help": "convert the embedded GGUF model to safetensors now (cached)"}
    )


ARGUMENTS = ModelsArguments


def run(args: ModelsArguments) -> int:
    from sdpo import models

    if args.prepare:
        path = models.embedded_model_dir()
        print(f"embedded model ready: {path}")
    print(f"cache directory (SDPO_CACHE): {models.cache_dir()}")
    for alias, what in models.ALIASES.items():
        state = ""
        if alias == models.EMBEDDED_ALIAS:
            cached = (models.cache_dir() / "smollm2-135m-instruct").is_dir()
            state = " [converted]" if cached else " [converted on first use, ~20 s]"
        print(f"  {alias:14s} {what}{state}")
    print("Any local directory, .gguf file or Hugging Face hub id is accepted as well.")
    return 0
