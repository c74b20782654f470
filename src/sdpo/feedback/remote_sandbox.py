"""Run the sandbox harness on a remote code-execution service (SandboxFusion's API).

Large code-RL runs execute model-written code on a pool of sandbox servers rather
than on the trainer's nodes. :class:`RemoteSandbox` sends the same harness and spec
that the local backends run to ``POST {url}/run_code`` in SandboxFusion's request
format::

    {"code": <harness>, "language": "python", "stdin": <spec JSON>,
     "run_timeout": <s>, "compile_timeout": <s>, "memory_limit_MB": <MB>}

and reads ``run_result.stdout`` as the results channel (``run_result.status`` is
``"Finished"``, ``"TimeLimitExceeded"`` or ``"Error"``). The expected outputs never
leave this process, and the reply is validated and compared here exactly as for the
local sandbox.

At most ``max_concurrency`` requests are in flight per instance (shared by all
threads); connection errors, time-outs, HTTP 429/5xx and ``"SandboxError"`` replies
are retried ``retries`` times with exponential back-off; after that the call raises
:class:`RemoteSandboxError` (an outage must not be scored as wrong code).
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from .sandbox import Execution, SandboxLimits, _runner_source


class RemoteSandboxError(RuntimeError):
    """The remote service did not give a usable answer after the retries."""


class RemoteSandbox:
    name = "remote"

    def __init__(self, url: str, *, max_concurrency: int = 8, retries: int = 3, backoff_s: float = 0.5,
                 request_timeout_s: float | None = None, headers: dict[str, str] | None = None,
                 extra_fields: dict[str, Any] | None = None):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteSandbox: url must start with http:// or https://, got {url!r}")
        if max_concurrency < 1:
            raise ValueError(f"RemoteSandbox: max_concurrency must be at least 1, got {max_concurrency}")
        if retries < 0:
            raise ValueError(f"RemoteSandbox: retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.endpoint = self.url if self.url.endswith("/run_code") else self.url + "/run_code"
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self.request_timeout_s = request_timeout_s
        self.headers = dict(headers or {})
        self.extra_fields = dict(extra_fields or {})
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def _post(self, body: bytes, timeout: float) -> dict:
        request = urllib.request.Request(self.endpoint, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **self.headers})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - user-given URL
            return json.loads(response.read().decode("utf-8"))

    def execute(self, spec: dict, limits: SandboxLimits, hard_limit: float) -> Execution:
        spec = dict(spec, channel_fd=1)
        body = json.dumps({
            "code": _runner_source(), "language": "python", "stdin": json.dumps(spec),
            "run_timeout": hard_limit, "compile_timeout": 10, "memory_limit_MB": limits.memory_mb + 256,
            **self.extra_fields,
        }).encode("utf-8")
        timeout = self.request_timeout_s or hard_limit + 30.0
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff_s * (2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                with self._slots:
                    reply = self._post(body, timeout)
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code} from {self.endpoint}"
                if exc.code == 429 or exc.code >= 500:
                    continue
                raise RemoteSandboxError(f"remote sandbox: {last} (not retried)") from exc
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if not isinstance(reply, dict):
                last = "the reply was not a JSON object"
                continue
            if reply.get("status") == "SandboxError":
                last = f"SandboxError: {str(reply.get('message', ''))[:200]}"
                continue
            run = reply.get("run_result")
            if not isinstance(run, dict):
                last = f"no run_result in the reply (status {reply.get('status')!r})"
                continue
            stdout = run.get("stdout") or ""
            stderr = run.get("stderr") or ""
            code = run.get("return_code")
            return Execution(
                channel=str(stdout).encode("utf-8"), raw_output=str(stderr)[: max(limits.max_output_chars, 4000)],
                killed=run.get("status") == "TimeLimitExceeded",
                returncode=code if isinstance(code, int) else None,
                isolation=["remote", self.url, "two-process-harness"],
            )
        raise RemoteSandboxError(f"remote sandbox: no usable answer from {self.endpoint} after "
                                 f"{self.retries + 1} attempts ({last})")
