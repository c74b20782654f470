"""Experiment trackers, named as TRL / transformers name them in ``report_to``.

``report_to`` takes what a TRL config takes: ``none``, one tracker (``trackio``, the local default here;
``wandb``; ``tensorboard``; any other transformers integration where a Hugging Face ``Trainer`` runs), ``all``
(every installed one), a list (YAML) or a comma-separated string (``trackio,tensorboard``).

- :func:`parse_report_to` turns any of those into a list of names (``[]`` for none) and refuses an unknown
  name or a tracker whose package is missing with one line that says what to install;
- :func:`start_tracker` starts them for a loop of our own (``train-online``): one object with
  ``log(metrics, step=)`` and ``finish()``, as the ``trackio`` and ``wandb`` modules have; TensorBoard
  goes through ``torch.utils.tensorboard.SummaryWriter`` (``pip install tensorboard``, or
  ``pip install 'sdpo[tensorboard]'``) into ``<output_dir>/runs``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# the trackers our own loops can write to, and the package each needs
OWN_TRACKERS = {"trackio": "trackio", "wandb": "wandb", "tensorboard": "tensorboard"}
# transformers' integrations (a Trainer reports to these; transformers.integrations.INTEGRATION_TO_CALLBACK)
HF_INTEGRATIONS = ("azure_ml", "comet_ml", "mlflow", "neptune", "tensorboard", "trackio", "wandb", "codecarbon",
                   "clearml", "dagshub", "flyte", "dvclive", "swanlab", "kubeflow")
INSTALL = {"trackio": "pip install trackio", "wandb": "pip install wandb",
           "tensorboard": "pip install tensorboard (or pip install 'sdpo[tensorboard]')"}


class TrackerError(ValueError):
    """A ``report_to`` value that cannot be used; the message names the value and the fix."""


def installed(name: str) -> bool:
    package = OWN_TRACKERS.get(name, name)
    return importlib.util.find_spec(package) is not None


def parse_report_to(value, *, allowed=tuple(HF_INTEGRATIONS), check_installed: bool = True) -> list[str]:
    """``report_to`` as a list of tracker names (see the module doc); ``[]`` for none.

    ``allowed``: the names the caller can write to (our own loops: :data:`OWN_TRACKERS`); ``all`` means
    the installed ones among them."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().lower()
            if part and part not in names:
                names.append(part)
    if names in ([], ["none"]):
        return []
    if "none" in names:
        raise TrackerError(f"report_to {value!r}: 'none' cannot be combined with trackers")
    if "all" in names:
        if names != ["all"]:
            raise TrackerError(f"report_to {value!r}: 'all' cannot be combined with trackers")
        return [name for name in allowed if name in OWN_TRACKERS and installed(name)]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise TrackerError(f"report_to: unknown tracker {', '.join(unknown)}; choose from none, all, "
                           f"{', '.join(allowed)} (one, or several separated by commas)")
    if check_installed:
        for name in names:
            if name in OWN_TRACKERS and not installed(name):
                raise TrackerError(f"report_to={name} needs the {OWN_TRACKERS[name]} package: {INSTALL[name]}")
    return names


def report_to_text(names: list[str]) -> str:
    """The canonical string of a parsed ``report_to``: ``none``, ``trackio``, ``trackio,tensorboard``."""
    return ",".join(names) if names else "none"


class _TensorBoard:
    def __init__(self, logdir: Path, config: dict | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))
        if config:
            import json

            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, metrics: dict, step: int | None = None) -> None:
        for key, value in metrics.items():
            try:
                self.writer.add_scalar(key, float(value), global_step=step)
            except (TypeError, ValueError):
                continue  # not a number
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class Trackers:
    """Several trackers behind the ``log(metrics, step=)`` / ``finish()`` of one."""

    def __init__(self, parts: dict):
        self.parts = parts

    @property
    def names(self) -> list[str]:
        return list(self.parts)

    def log(self, metrics: dict, step: int | None = None) -> None:
        for part in self.parts.values():
            part.log(metrics, step=step)

    def finish(self) -> None:
        for part in self.parts.values():
            part.finish()


def start_tracker(report_to, *, project: str, name: str, config: dict | None = None,
                  output_dir: str | Path = ".") -> Trackers | None:
    """Start the trackers ``report_to`` names (None for none). ``config`` is logged with the run; keys that
    look secret (``key``, ``token``, ``secret``, ``password``) are left out. TensorBoard writes to
    ``<output_dir>/runs``."""
    names = parse_report_to(report_to, allowed=tuple(OWN_TRACKERS))
    if not names:
        return None
    safe = {k: v for k, v in (config or {}).items()
            if not any(word in k.lower() for word in ("key", "secret", "password", "token"))
            or k.lower().endswith("_tokens")}
    parts: dict = {}
    for tracker in names:
        if tracker == "trackio":
            from sdpo.progress import quiet_trackio

            module = quiet_trackio()  # one line instead of trackio's banner
            module.init(project=project, name=name, config=safe, resume="allow")
            parts[tracker] = module
        elif tracker == "wandb":
            import wandb

            wandb.init(project=project, name=name, config=safe, resume="allow")
            parts[tracker] = wandb
        else:
            parts[tracker] = _TensorBoard(Path(output_dir) / "runs", safe)
            print(f"tensorboard: logging to {Path(output_dir) / 'runs'} (view it: tensorboard --logdir "
                  f"{Path(output_dir) / 'runs'})", flush=True)
    return Trackers(parts)
