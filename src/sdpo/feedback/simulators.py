"""User simulators: a batch of ``(prompt, response)`` in, a batch of follow-ups out.

* :class:`RuleUserSimulator` - deterministic reactions from simple checks of the
  response against the persona (emojis, length, lists, first person, ...);
* :class:`StyleUserSimulator` - a local model prompted with the persona, batched
  generation (temperature 0.7, up to 128 new tokens by default);
* :class:`ClaudeStyleUserSimulator` - the ``anthropic`` SDK (default model
  ``claude-haiku-4-5-20251001``, temperature 0, up to 256 tokens);
* :class:`OpenAICompatibleUserSimulator` - the ``openai`` SDK against any base URL
  (a vLLM or other OpenAI-compatible server).

The API simulators send requests concurrently up to ``max_concurrency``. Each request
is tried up to ``max_retries + 1`` times: a 408/409/429/5xx answer, a timeout
(``timeout`` seconds), a connection error, a 200 answer whose body is not the
expected JSON, or a 200 answer with no text (an empty reply) is retried after an
exponential backoff (``retry_backoff`` seconds, doubling, at most
``retry_max_backoff``; a server's ``Retry-After`` of up to 60 s is honoured instead).
Other 4xx answers are not retried; 401/403/404 (wrong key, no access, no such model or
endpoint) stop the run with one line, since every later request would fail the same way.

**A follow-up that could not be obtained is marked, never passed off as the user's.**
A request whose last try fails, and a reply that is still empty after the last try, get
the neutral :data:`FALLBACK_FOLLOWUP` text (so the batch keeps its shape), and after
every :meth:`UserSimulator.followups` call ``simulator.last_failed[i]`` is True exactly
where follow-up ``i`` is that fallback (a failed request or an empty reply; local
simulators: an empty generation). Trainers leave those samples out of the update and
count them; ``last_failed`` has one entry per follow-up of the last call and is
replaced, never appended to, by the next call.

**An outage stops the run.** After ``max_consecutive_failures`` requests in a row
(default 8; 0 = never stop) have failed after all their tries (empty replies
included; any request that gets a reply resets the count, so a flapping server does
not stop a run), the API simulators raise :class:`SimulatorOutageError`, whose
one-line message names the endpoint (base URL and model) and says to resume with
``--resume_from_checkpoint last``; the commands print it as one line with exit
status 2. Requests still waiting in the same batch are not sent.

Requests, retries, failed requests, empty replies and fallbacks are counted in
:attr:`UserSimulator.stats` (logged as ``simulator/...`` metrics), and each batch with
failures logs one warning naming the endpoint actually used and the number of tries.
The API key is read from the environment when the simulator is built (so a missing key
fails before training starts) and is never printed, logged or written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from sdpo.feedback.personas import persona_description

FALLBACK_FOLLOWUP = "Okay."
MAX_RETRY_AFTER = 60.0  # a server's Retry-After above this is not waited for (the SDKs' own limit)

log = logging.getLogger(__name__)

SIMULATOR_INSTRUCTIONS = """You are playing the part of a person chatting with an AI assistant.
What this person wants from answers: {persona}

The person's message was:
<request>
{prompt}
</request>

The assistant replied:
<response>
{response}
</response>

Write the next message this person sends, reacting to the reply from their own point of view: brief (one to three \
sentences) and specific about what suits or bothers them in it, given what they want. Write only the message itself, \
with no quotes or labels."""


class MissingAPIKeyError(RuntimeError):
    pass


class SimulatorAPIError(RuntimeError):
    """An API error that retrying cannot fix (wrong key, no access, unknown model or endpoint)."""


class SimulatorOutageError(SimulatorAPIError):
    """``max_consecutive_failures`` requests in a row failed: the endpoint is down; resuming later continues."""


class EmptyReplyError(ValueError):
    """A 200 answer with no text (retried like any other fault)."""


class MalformedReplyError(ValueError):
    """A 200 answer whose body is not the JSON the API promises."""


@dataclass
class SimulatorStats:
    """Running totals since the simulator was built (every field is a metric).

    ``requests`` counts follow-ups asked for; each is a real reply or a fallback
    (``fallbacks = failed + empty``). ``retries`` counts extra API tries, ``failed`` the
    requests whose last try failed, ``empty`` the replies with no text.
    """

    requests: int = 0
    fallbacks: int = 0
    seconds: float = 0.0
    retries: int = 0
    failed: int = 0
    empty: int = 0
    truncated: int = 0  # local simulator: prompts cut to fit its max_context_tokens

    def as_metrics(self, prefix: str = "simulator/") -> dict[str, float]:
        return {f"{prefix}requests": self.requests, f"{prefix}fallbacks": self.fallbacks,
                f"{prefix}seconds": round(self.seconds, 4), f"{prefix}retries": self.retries,
                f"{prefix}failed_requests": self.failed, f"{prefix}empty_replies": self.empty,
                f"{prefix}truncated": self.truncated}


@dataclass
class UserSimulator:
    """Base class; subclasses implement :meth:`_followups`."""

    style: str
    stats: SimulatorStats = field(default_factory=SimulatorStats, init=False, repr=False)
    # after each followups() call: True where that follow-up is the fallback (failed request / empty reply)
    last_failed: list = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.persona = persona_description(self.style)  # fails early on an unknown style

    def followups(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        start = time.perf_counter()
        replies = self._followups(list(prompts), list(responses))
        self.stats.seconds += time.perf_counter() - start
        self.stats.requests += len(replies)
        out, failed = [], []
        for reply in replies:
            if reply is None:  # no usable answer after the last try (logged where it failed)
                self.stats.failed += 1
                text = ""
            else:
                text = reply.strip()
                self.stats.empty += not text
            failed.append(not text)
            if not text:
                self.stats.fallbacks += 1
                text = FALLBACK_FOLLOWUP
            out.append(text)
        self.last_failed = failed
        return out

    def prompt_for(self, prompt: str, response: str) -> str:
        return SIMULATOR_INSTRUCTIONS.format(persona=self.persona, prompt=prompt, response=response)

    def _followups(self, prompts: list[str], responses: list[str]) -> list[str]:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- rules

_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf\U0001f000-\U0001f2ff]")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'd|me|my|mine)\b")
_MARKDOWN = re.compile(r"^\s*#{1,6}\s|\*\*[^*]+\*\*", re.M)
_HEDGES = re.compile(r"\b(?:might|perhaps|maybe|possibly|it depends)\b", re.I)
_FILLER_END = re.compile(r"(?:let me know|would you like|feel free|hope this helps)[^.?!]*[.?!]?\s*$", re.I)
_PRAISE = re.compile(r"\b(?:great|excellent|fantastic|wonderful) question\b", re.I)
_TICS = re.compile(r"\b(?:delve|tapestry|testament)\b|—", re.I)


def _words(text: str) -> int:
    return len(text.split())


def rule_violations(style: str, response: str) -> list[str]:
    """Complaints a user with this persona would make about ``response`` (empty: satisfied)."""
    persona_description(style)
    parts = set(style.split("_"))
    out = []
    if style == "no_emojis" and _EMOJI.search(response):
        out.append("Please don't use emojis.")
    if "concise" in parts and _words(response) > 60:
        out.append("That's too long, keep it short.")
    if "detailed" in parts and _words(response) < 80:
        out.append("That's too thin, can you go into more detail?")
    if style == "no_lists" and _LIST_LINE.search(response):
        out.append("Please write in sentences, not lists.")
    if style == "more_lists" and not _LIST_LINE.search(response):
        out.append("Could you put that in a list?")
    if style == "no_first_person" and _FIRST_PERSON.search(response):
        out.append("Leave yourself out of it, no 'I' or 'my'.")
    if style == "exclamation" and "!" not in response:
        out.append("Sound a bit more excited!")
    if style == "no_punctuation" and re.search(r"[.,;:!?]", response):
        out.append("no punctuation please")
    if style in ("answer_directly_reduce_formatting", "less_formatting") and _MARKDOWN.search(response):
        out.append("Too much formatting, just plain text please.")
    if style in ("formatting", "more_formatting") and not _MARKDOWN.search(response):
        out.append("Can you structure that with headers or bold key points?")
    if style == "committing" and _HEDGES.search(response):
        out.append("Stop hedging and commit to an answer.")
    if style == "no_filler_followup" and _FILLER_END.search(response):
        out.append("Skip the offer at the end, I'll ask if I need more.")
    if style in ("less_filler_praise_sycophancy", "no_sycophantic") and _PRAISE.search(response):
        out.append("No need to praise my question, just answer.")
    if style == "writing_tics" and _TICS.search(response):
        out.append("Drop the fancy words and dashes, write plainly.")
    if "casual" in parts and not re.search(r"\b(?:you|you're|yeah|hey|so)\b", response, re.I):
        out.append("Can you say that more casually?")
    return out


_RULE_PROBES = (
    "Hello there \U0001f600", "I think I would say yes, perhaps.", "- one\n- two\n- three", "word " * 120,
    "# Title\n**Bold** point.", "Great question! Let me know if you need anything else.",
    "It is a rich tapestry \u2014 let us delve in.", "A plain sentence", "yeah so you know, hey",
)


def rule_checkable(style: str) -> bool:
    """Whether :func:`rule_violations` has a check for ``style`` (some probe answer fails it)."""
    return any(rule_violations(style, probe) for probe in _RULE_PROBES)


def rule_score(style: str, response: str) -> float:
    """1 when the persona's checks all pass, 0 when any fails (the persona metric)."""
    return 0.0 if rule_violations(style, response) else 1.0


@dataclass
class RuleUserSimulator(UserSimulator):
    """Deterministic follow-ups from :func:`rule_violations`; for tests and the CPU demo."""

    satisfied: str = "Thanks, that's just what I wanted."

    def _followups(self, prompts, responses):
        out = []
        for response in responses:
            problems = rule_violations(self.style, response)
            out.append(" ".join(problems) if problems else self.satisfied)
        return out


# --------------------------------------------------------------------------- local model

@dataclass
class StyleUserSimulator(UserSimulator):
    """A local model plays the user; one batched ``generate`` per ``batch_size`` pairs."""

    model: object = None
    tokenizer: object = None
    temperature: float = 0.7
    max_new_tokens: int = 128
    batch_size: int = 16
    sampler: object = None  # None: sdpo.generation.hf_generate; any function with its signature
    max_context_tokens: int = 2048  # the simulator's prompt (instructions + conversation + answer)
    backend: str = "transformers"  # the generation engine (sdpo.engines); others load the model by name

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be >= 1, got {self.max_context_tokens}")
        if self.backend != "transformers":
            from sdpo.engines import open_engine

            if self.model is not None and not isinstance(self.model, str):
                raise ValueError(f"simulator backend {self.backend} loads the simulator model by name; pass its "
                                 "name, not a loaded model")
            engine = open_engine(self.backend, self.model or "smollm2-135m", option="--simulator_backend")
            self.model, self.tokenizer, self.sampler = None, engine.tokenizer, engine.as_sampler()
        elif self.model is None or isinstance(self.model, str):
            from sdpo.models import load_model

            self.model, self.tokenizer = load_model(self.model or "smollm2-135m")
        self._warned_truncation = False

    def fitted_context(self, prompt: str, response: str) -> list[int]:
        """The simulator's token context for one pair, within ``max_context_tokens``.

        The instructions and persona always stay. What gives way first is the start of the
        conversation (``prompt``; its end, the request being answered, is kept); then the middle of
        the answer (its start and end stay, which is what a reader's reaction is about)."""
        from sdpo.templates import render_context

        tok, limit = self.tokenizer, self.max_context_tokens

        def ids(p: str, r: str) -> list[int]:
            return render_context(tok, [{"role": "user", "content": self.prompt_for(p, r)}])

        full = ids(prompt, response)
        if len(full) <= limit:
            return full
        self.stats.truncated += 1
        if not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"local simulator: a prompt of {len(full)} tokens is cut to max_context_tokens={limit} "
                          "(oldest conversation first, then the middle of the answer); counted as "
                          "simulator/truncated", stacklevel=3)
        p_ids = tok.encode(prompt, add_special_tokens=False)
        r_ids = tok.encode(response, add_special_tokens=False)
        over = len(full) - limit
        if over < len(p_ids):  # the oldest part of the conversation goes (a little extra: re-tokenising)
            keep = max(0, len(p_ids) - over - 8)
            candidate = ids("..." + tok.decode(p_ids[len(p_ids) - keep:]), response)
            if len(candidate) <= limit:
                return candidate
        # the whole conversation is not enough: keep its last 64 tokens, cut the answer's middle
        tail = "..." + tok.decode(p_ids[-64:]) if len(p_ids) > 64 else prompt
        base = len(ids(tail, ""))
        room = max(0, limit - base - 16)
        head, end = r_ids[: room - room // 3], r_ids[len(r_ids) - room // 3:] if room // 3 else []
        candidate = ids(tail, tok.decode(head) + " [...] " + tok.decode(end))
        return candidate[-limit:] if len(candidate) > limit else candidate

    def _followups(self, prompts, responses):
        from sdpo.generation import hf_generate

        sampler = self.sampler or hf_generate
        tok = self.tokenizer
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            contexts = [
                self.fitted_context(p, r)
                for p, r in zip(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            ]
            new = sampler(self.model, tok, contexts, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
            out += tok.batch_decode(new, skip_special_tokens=True)
        return out

    def followups_with(self, prompts, responses, *, sampler, batch_size: int | None = None) -> list[str]:
        """Follow-ups through another sampler (``sampler(model, tokenizer, contexts, *, max_new_tokens,
        temperature)`` -> new token ids per row) or batch size: the baselines of the benchmarks."""
        saved = self.batch_size, self.sampler
        self.batch_size, self.sampler = batch_size or self.batch_size, sampler
        try:
            return self.followups(prompts, responses)
        finally:
            self.batch_size, self.sampler = saved

    def followups_one_at_a_time(self, prompts, responses) -> list[str]:
        """The unbatched baseline (one ``model.generate`` per item), for benchmarks."""
        return self.followups_with(prompts, responses, sampler=self.sampler, batch_size=1)


# --------------------------------------------------------------------------- API simulators

def _require_key(env_var: str, who: str) -> str:
    key = os.environ.get(env_var, "")
    if not key.strip():
        raise MissingAPIKeyError(f"{who} needs the environment variable {env_var} (an API key); it is not set")
    return key


@dataclass
class APICallResult:
    """One request's outcome: ``text`` is None when no try gave a usable answer."""

    text: str | None
    tries: int
    error: str = ""  # the last failure ("HTTP 500", "timeout after 60s", ...), empty on success


def _retry_after(err) -> float | None:
    """Seconds from a ``Retry-After-Ms`` / ``Retry-After`` header of an HTTP error, if any."""
    headers = getattr(getattr(err, "response", None), "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = float(headers.get(name))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value >= 0:
            return value * scale
    return None


@dataclass
class _APISimulator(UserSimulator):
    model: str = ""
    base_url: str | None = None
    api_key_env: str = ""
    max_concurrency: int = 8
    max_retries: int = 6  # retries after the first try of a request
    timeout: float = 60.0  # seconds per try
    retry_backoff: float = 0.5  # first wait; doubles per retry (with up to 25% jitter)
    retry_max_backoff: float = 8.0
    temperature: float | None = 0.0
    max_tokens: int = 256
    max_consecutive_failures: int = 8  # failed requests in a row that stop the run (0 = never stop)

    outage_hint = "when it answers again, resume with --resume_from_checkpoint last"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_concurrency",):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_retries", "max_consecutive_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("timeout", "retry_max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.retry_backoff < 0:
            raise ValueError(f"retry_backoff must be >= 0 seconds, got {self.retry_backoff}")
        # the SDK's own retries are off: every try goes through _call, which counts it
        self._client = self._make_client(_require_key(self.api_key_env, type(self).__name__))
        self._lock = threading.Lock()
        self._consecutive_failures = 0  # requests in a row whose last try failed (across batches)
        self._stop: SimulatorAPIError | None = None  # set once the run must stop: later requests are not sent

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(style={self.style!r}, model={self.model!r}, base_url={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL the client really sends to (an explicit one, the SDK's environment variable, or its default)."""
        client = getattr(self, "_client", None)
        url = str(getattr(client, "base_url", "") or self.base_url or "")
        return url.rstrip("/")

    @property
    def tries(self) -> int:
        return self.max_retries + 1

    def _who(self) -> str:
        return f"{type(self).__name__} ({self.model} at {self.endpoint})"

    def _followups(self, prompts, responses):
        return self.complete([self.prompt_for(p, r) for p, r in zip(prompts, responses)])

    def complete(self, texts: Sequence[str]) -> list[str | None]:
        """Raw completions of ``texts`` (concurrent, retried); None where every try failed. Judges reuse this."""
        return [r.text for r in self.complete_detailed(texts)]

    def complete_detailed(self, texts: Sequence[str]) -> list[APICallResult]:
        """One result per text; ``text`` is None where every try failed and "" where every reply was empty.
        Raises :class:`SimulatorAPIError` (or its :class:`SimulatorOutageError`) when the run must stop."""
        self._stop = None
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(self._call, texts))
        self.stats.retries += sum(r.tries - 1 for r in results)
        failed = [r for r in results if r.text is None]
        empty = sum(r.text == "" for r in results)
        if empty:  # every try answered with no text
            log.warning("%s: %d of %d replies were still empty after %d tries; they get %s", self._who(), empty,
                        len(results), self.tries, self.failure_outcome.replace("a 'failed' verdict", "no verdict"))
        if failed:
            kinds = sorted({r.error for r in failed})
            low, high = min(r.tries for r in failed), max(r.tries for r in failed)  # not retried: 1 try
            tries = f"{low} tries" if low == high else f"{low} to {high} tries"
            log.warning("%s: %d of %d requests failed after %s (%s); they get %s", self._who(), len(failed),
                        len(results), tries.replace("1 tries", "1 try"), ", ".join(kinds), self.failure_outcome)
        return results

    failure_outcome = "the fallback follow-up"  # how a failed request is reported (judges: a 'failed' verdict)

    def _call(self, text: str) -> APICallResult:
        result = self._tries(text)
        with self._lock:
            if result.text:
                self._consecutive_failures = 0
                return result
            self._consecutive_failures += 1
            limit = self.max_consecutive_failures
            if limit and self._consecutive_failures >= limit and self._stop is None:
                self._stop = SimulatorOutageError(
                    f"{self._who()}: {self._consecutive_failures} requests in a row failed after up to "
                    f"{self.tries} tries each (last: {result.error}); the endpoint looks down, so the run "
                    f"stopped; {self.outage_hint}")
            if self._stop is not None:
                raise self._stopped()
        return result

    def _stopped(self) -> SimulatorAPIError:
        """A fresh copy of the stop error for this thread (one exception object is not raised twice)."""
        return type(self._stop)(str(self._stop))

    def _tries(self, text: str) -> APICallResult:
        error, wait = "", None
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self._backoff(attempt, wait))
            if self._stop is not None:  # another request found the run must stop: send nothing more
                raise self._stopped()
            try:
                reply = self._request(text)
                if not (reply or "").strip():
                    raise EmptyReplyError("empty reply")
                return APICallResult(reply, attempt + 1)
            except Exception as err:  # noqa: BLE001 - sorted into retry / give up / stop below
                retry, error, wait = self._classify(err)
                if retry is None:  # cannot succeed on any request: stop, naming who and why (never the key)
                    with self._lock:
                        if self._stop is None:
                            self._stop = SimulatorAPIError(f"{self._who()}: {error}; not retried")
                    raise self._stopped() from None
                if not retry:
                    return APICallResult(None, attempt + 1, error)
        # still empty after the last try: a reply with no text (counted as empty, not as failed)
        return APICallResult("" if error == "empty reply" else None, self.tries, error)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
            return retry_after
        delay = min(self.retry_max_backoff, self.retry_backoff * 2 ** (attempt - 1))
        return delay * (1 - 0.25 * random.random())

    def _classify(self, err: Exception) -> tuple[bool | None, str, float | None]:
        """(retry?, description, server's Retry-After): retry None means stop the run."""
        sdk = self._sdk
        if isinstance(err, sdk.APITimeoutError):
            return True, f"timeout after {self.timeout:g}s", None
        if isinstance(err, sdk.APIConnectionError):
            return True, "connection error", None
        if isinstance(err, sdk.APIStatusError):
            status = err.status_code
            if status in (401, 403):
                return None, f"HTTP {status}: the key in {self.api_key_env} was refused", None
            if status == 404:
                return None, f"HTTP 404: no model {self.model!r} or no such endpoint", None
            if status in (408, 409, 429) or status >= 500:
                return True, f"HTTP {status}", _retry_after(err)
            return False, f"HTTP {status}", None
        if isinstance(err, EmptyReplyError):
            return True, "empty reply", None
        if isinstance(err, (json.JSONDecodeError, MalformedReplyError, sdk.APIResponseValidationError)):
            return True, "malformed response body", None
        raise err  # a bug of ours, not an API fault

    def _make_client(self, key: str):  # pragma: no cover
        raise NotImplementedError

    def _request(self, text: str) -> str:  # pragma: no cover
        raise NotImplementedError


@dataclass
class ClaudeStyleUserSimulator(_APISimulator):
    model: str = "claude-haiku-4-5-20251001"
    api_key_env: str = "ANTHROPIC_API_KEY"

    def _make_client(self, key: str):
        import anthropic

        self._sdk = anthropic
        return anthropic.Anthropic(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout)

    def _request(self, text: str) -> str:
        # anthropic 2.x no longer lists sampling parameters in create(); the API field is
        # sent as-is (temperature=None leaves it out, for models that reject it).
        extra = {"temperature": self.temperature} if self.temperature is not None else None
        reply = self._client.messages.create(
            model=self.model,
            max_tokens=self.max_tokens,
            messages=[{"role": "user", "content": text}],
            extra_body=extra,
        )
        try:
            return "".join(getattr(block, "text", None) or "" for block in reply.content)
        except (AttributeError, TypeError) as err:
            raise MalformedReplyError(f"unexpected Messages reply ({type(err).__name__})") from None


@dataclass
class OpenAICompatibleUserSimulator(_APISimulator):
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"

    def _make_client(self, key: str):
        import openai

        self._sdk = openai
        return openai.OpenAI(api_key=key, base_url=self.base_url, max_retries=0, timeout=self.timeout)

    def _request(self, text: str) -> str:
        reply = self._client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": text}],
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )
        try:
            content = reply.choices[0].message.content
        except (AttributeError, TypeError, IndexError, KeyError) as err:
            raise MalformedReplyError(f"unexpected chat-completion reply ({type(err).__name__})") from None
        if content is not None and not isinstance(content, str):
            raise MalformedReplyError("chat-completion content is not text")
        return content or ""


SIMULATORS = {
    "rule": RuleUserSimulator,
    "local": StyleUserSimulator,
    "claude": ClaudeStyleUserSimulator,
    "openai": OpenAICompatibleUserSimulator,
}
