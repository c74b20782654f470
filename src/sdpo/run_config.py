"""A run's resolved options as YAML: ``sdpo <command> --config <that file>`` runs it again.

:func:`save_resolved_config` writes every option of the command's dataclass (the values after defaults,
``--config`` and flags were applied and checked) next to the JSON copy the trainers keep. Secrets
(fields named like ``*token*``, ``*key*``, ``*secret*``, ``*password*``; not ``*_tokens`` counts) are
left out, never written.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

_SECRET_WORDS = ("token", "key", "secret", "password")
# inherited options that TrainingArguments.__post_init__ derives from others or from the machine: a rerun derives
# them again (where it runs), so they are not written
_DERIVED = {"disable_tqdm", "dataloader_pin_memory", "accelerator_config", "debug", "run_name", "logging_dir",
            "use_cpu", "activation_checkpointing"}


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(("_tokens", "_token_id"))


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. TrainingArguments.accelerator_config
        return _plain(dataclasses.asdict(value))
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def resolved_options(cfg) -> dict:
    """The options of ``cfg`` (a dataclass instance) as plain YAML values: every option sdpo declares, and
    of those inherited from transformers / TRL (``TrainingArguments``: ~150) the ones not at their default.
    Secrets and non-init fields are left out."""
    inherited = set()
    for cls in type(cfg).__mro__:
        if cls.__module__.split(".")[0] in ("transformers", "trl"):
            inherited |= set(vars(cls).get("__annotations__", {}))
    for cls in type(cfg).__mro__:  # a field we redeclare is ours
        if cls.__module__.split(".")[0] not in ("transformers", "trl"):
            inherited -= set(vars(cls).get("__annotations__", {}))
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init or f.name.startswith("_") or _secret(f.name):
            continue
        value = getattr(cfg, f.name)
        if f.name in inherited and (value == _default(f) or value is None or f.name in _DERIVED):
            continue
        out[f.name] = _plain(value)
    return out


def save_resolved_config(cfg, out_dir, name: str = "config.yaml") -> Path:
    """Write :func:`resolved_options` of ``cfg`` to ``<out_dir>/<name>`` (atomically); returns the path."""
    import yaml

    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# resolved options of this run ({type(cfg).__name__}); run it again with\n"
              f"#   sdpo <command> --config {path}\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(resolved_options(cfg), sort_keys=False, allow_unicode=True),
                   encoding="utf-8")
    tmp.replace(path)
    return path
