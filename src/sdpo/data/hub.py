"""Hub datasets through ``datasets.load_dataset``, with one clear line when the hub is out of reach.

Without a network, ``load_dataset`` retries for half a minute and ends in a long
traceback. :func:`load_hub_dataset` instead

* respects ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (the local cache only);
* otherwise (and with no HTTP(S) proxy configured) first checks, within a few seconds,
  that the hub endpoint (``HF_ENDPOINT`` or huggingface.co) accepts a connection; if
  not, it reads the local cache only, as offline mode would;
* turns a dataset that cannot be had (unreachable and not cached, unknown, gated) into
  a :class:`HubDatasetError`: one line naming the dataset and the fix (a bundled
  sample or a local file).
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from urllib.parse import urlparse

from sdpo.data.io import DataFileError

PROBE_SECONDS = 3.0
_TRUE = {"1", "on", "yes", "true"}


class HubDatasetError(DataFileError):
    """A hub dataset could not be loaded (offline, unreachable, unknown or gated)."""


def offline_variable() -> str | None:
    """The environment variable that puts the hub offline, if one is set."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    return None


def hub_endpoint() -> str:
    url = os.environ.get("HF_ENDPOINT", "").strip()
    if not url:
        try:
            from huggingface_hub import constants

            url = constants.ENDPOINT
        except Exception:  # noqa: BLE001 - any version without the constant
            url = "https://huggingface.co"
    return url.rstrip("/")


def unreachable_reason(url: str | None = None, timeout: float = PROBE_SECONDS) -> str | None:
    """None when a TCP connection to the hub endpoint opens within ``timeout`` seconds, else why not.

    Name resolution runs in a helper thread, so a resolver that hangs cannot stall the caller.
    """
    parsed = urlparse(url or hub_endpoint())
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or type(err).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else "no answer"


def _proxied() -> bool:
    return any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                  "ALL_PROXY", "all_proxy"))


@contextmanager
def _offline():
    """``datasets`` and ``huggingface_hub`` in offline mode (local cache only) for the duration."""
    import datasets.config
    from huggingface_hub import constants

    saved = [(mod, name, getattr(mod, name)) for mod, name in (
        (datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"), (constants, "HF_HUB_OFFLINE"))
        if hasattr(mod, name)]
    for mod, name, _ in saved:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def _not_available_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from datasets.exceptions import DatasetNotFoundError

        kinds.append(DatasetNotFoundError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        kinds += [HfHubHTTPError, LocalEntryNotFoundError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def load_hub_dataset(hub_id: str, config: str | None = None, *, split: str, hint: str):
    """``datasets.load_dataset(hub_id, config, split=split)``, or one :class:`HubDatasetError` line.

    ``hint`` says what to do instead, e.g. "use --input_file sample (the bundled sample) or
    --input_file FILE (a local export)".
    """
    import datasets

    name = hub_id + (f" (config {config})" if config else "") + f", split {split}"
    args = (hub_id, config) if config else (hub_id,)
    variable = offline_variable()
    reason = None
    if variable is None and not _proxied():  # behind a proxy a direct connection says nothing
        reason = unreachable_reason()
    try:
        if variable is None and reason is None:
            return datasets.load_dataset(*args, split=split)
        with _offline():
            return datasets.load_dataset(*args, split=split)
    except _not_available_errors() as err:
        if variable is not None:
            why = f"{variable} is set (offline) and it is not in the local cache"
        elif reason is not None:
            why = f"{hub_endpoint()} cannot be reached ({reason}) and it is not in the local cache"
        else:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            why = f"{type(err).__name__}: {detail}"
        raise HubDatasetError(f"cannot load hub dataset {name}: {why}; {hint}") from None


def input_file_hint(sample: bool = True) -> str:
    """The fix for a prepare command whose hub dataset is out of reach."""
    local = "--input_file FILE (a local parquet, JSON, JSONL or CSV export in the dataset's layout)"
    return f"use --input_file sample (the bundled sample) or {local}" if sample else f"use {local}"
