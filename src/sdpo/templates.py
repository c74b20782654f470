"""Teacher-context templates.

A template turns the student context ``x`` (chat messages ending with a user turn)
and a piece of hindsight ``o`` (what the user said next) into the teacher context.
The student sees ``x``; the teacher sees ``x`` with ``o`` placed where the template
says. Both contexts are then rendered by the tokenizer's chat template with a
generation prompt, so the same response tokens can be scored under each.

Built-in templates (select by name with :func:`get_template`):

* ``hindsight`` (online default, the reference's structure) - ``o`` goes inside the
  last user message, after the request, under a header and a one-line note saying it
  is a later message from the user that should guide the answer;
* ``hindsight-revise`` (offline default, the reference's structure) - the same place
  and header, with a note saying ``o`` is the user's reply to an earlier attempt that
  fell short;
* ``hindsight-system`` (ours, an option) - ``o`` goes into the system message instead
  (appended to an existing system message, or a new one).

A ``system_prompt`` of ``""`` still adds a system message (empty), as the reference's
online trainer always has one; ``None`` adds none. Named presets (``tldr``,
``general``) are resolved by :func:`resolve_system_prompt`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

Message = dict[str, Any]
Messages = list[Message]

# The reference's structure (lasgroup/user_interactions, see docs/FIDELITY.md): after the
# request, a header line, a one-line note, then the follow-up. Our own wording.
HINDSIGHT_HEADER = "\n\n--- HINDSIGHT ---\n"
USER_TURN_NOTE = (
    HINDSIGHT_HEADER
    + "[Below is a message this user will send later. Let it guide your answer to the request above.]\n"
    "{followup}"
)
REVISE_NOTE = (
    HINDSIGHT_HEADER
    + "[Below is the user's reply to an earlier answer to this request that fell short. Answer the request "
    "above better.]\n"
    "User's reply: {followup}"
)
# Our earlier user-turn wording (kept for comparisons in benchmarks/RESULTS.md).
LEGACY_USER_TURN_NOTE = (
    "\n\n(For context: after reading your answer, my next message will be the one quoted "
    "below. Write the answer that this reaction shows I actually wanted.)\n"
    "My next message: {followup}"
)
SYSTEM_NOTE = (
    "Hindsight about this conversation: after your upcoming reply, the user will answer "
    'with: "{followup}". Write the reply that this reaction shows the user wanted.'
)


class TemplateError(ValueError):
    """The messages cannot be turned into a context (wrong roles, empty follow-up...)."""


def as_messages(x: str | Sequence[Message], *, where: str = "x") -> Messages:
    """Normalise a prompt (a string or chat messages) to a list of message dicts."""
    if isinstance(x, str):
        if not x.strip():
            raise TemplateError(f"{where}: the prompt is empty")
        return [{"role": "user", "content": x}]
    messages = []
    for i, m in enumerate(x):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"{where}[{i}]: a message needs 'role' and 'content' keys, got {m!r}")
        if not isinstance(m["content"], str):
            raise TemplateError(f"{where}[{i}].content: expected a string, got {type(m['content']).__name__}")
        messages.append({"role": m["role"], "content": m["content"]})
    if not messages:
        raise TemplateError(f"{where}: no messages")
    if messages[-1]["role"] != "user":
        raise TemplateError(
            f"{where}: the context must end with a user message (the turn being answered), "
            f"it ends with role {messages[-1]['role']!r}"
        )
    return messages


@dataclass(frozen=True)
class TeacherTemplate:
    """Where the hindsight goes. ``placement`` is ``user`` or ``system``."""

    name: str
    placement: str
    note: str
    system_prompt: str | None = None
    strip_tldr_cue: bool = False  # set by the ``tldr`` system-prompt preset, as in the reference

    def student_messages(self, x: str | Sequence[Message]) -> Messages:
        return self._with_system_prompt(self._task_messages(x))

    def teacher_messages(self, x: str | Sequence[Message], followup: str) -> Messages:
        if not isinstance(followup, str) or not followup.strip():
            raise TemplateError("the follow-up o is empty; the teacher context needs hindsight text")
        messages = self._with_system_prompt(self._task_messages(x))
        note = self.note.format(followup=followup.strip())
        if self.placement == "user":
            last = messages[-1]
            messages[-1] = {**last, "content": last["content"] + note}
        elif self.placement == "system":
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + note}
            else:
                messages.insert(0, {"role": "system", "content": note})
        else:  # pragma: no cover - guarded by the registry
            raise TemplateError(f"unknown placement {self.placement!r}")
        return messages

    def _task_messages(self, x) -> Messages:
        messages = as_messages(x)
        if self.strip_tldr_cue:
            messages[-1] = {**messages[-1], "content": strip_tldr_cue(messages[-1]["content"])}
        return messages

    def _with_system_prompt(self, messages: Messages) -> Messages:
        messages = copy.deepcopy(messages)
        if self.system_prompt is None:
            return messages
        if messages[0]["role"] == "system":
            if self.system_prompt:
                messages[0]["content"] = self.system_prompt + "\n\n" + messages[0]["content"]
        else:  # "" still adds an (empty) system message, as the reference always has one
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages


_REGISTRY = {
    "hindsight": dict(placement="user", note=USER_TURN_NOTE),
    "hindsight-revise": dict(placement="user", note=REVISE_NOTE),
    "hindsight-system": dict(placement="system", note=SYSTEM_NOTE),
}
TEMPLATE_NAMES = tuple(_REGISTRY)
# The reference's placement and structure are the defaults (online: a later message;
# offline: a reply to an earlier attempt). On the embedded 135M model the system placement
# measured a higher pooled selectivity (benchmarks/RESULTS.md), so it stays an option: run
# `sdpo signal-analysis --template all` on your own model and pass --template to choose.
DEFAULT_TEMPLATE = "hindsight"
DEFAULT_OFFLINE_TEMPLATE = "hindsight-revise"

# System prompts by name (the reference's presets): the TL;DR task's, and the empty one.
SYSTEM_PROMPT_PRESETS = {
    "tldr": "Summarize the text in one or two sentences. Start with 'TL;DR:' and write nothing but the summary.",
    "general": "",
}


def resolve_system_prompt(value: str | None) -> str | None:
    """A preset name (``tldr``, ``general``) becomes its text; other strings and ``None`` pass through."""
    if value is None:
        return None
    return SYSTEM_PROMPT_PRESETS.get(value.strip().lower(), value)


TLDR_CUES = ("\nTL;DR:\n", "\nTL;DR:", "TL;DR:\n", "TL;DR:")


def strip_tldr_cue(text: str) -> str:
    """The post without its trailing "TL;DR:" cue (the reference strips it when the TL;DR system
    prompt asks for a summary that starts with "TL;DR:")."""
    s = text.rstrip()
    for cue in TLDR_CUES:
        if s.endswith(cue):
            return s[: -len(cue)].rstrip()
    return s


def get_template(
    name: str | TeacherTemplate = DEFAULT_TEMPLATE,
    *,
    system_prompt: str | None = None,
    note: str | None = None,
) -> TeacherTemplate:
    """A built-in template by name; ``note`` overrides its wording (must contain ``{followup}``)."""
    if isinstance(name, TeacherTemplate):
        if system_prompt is not None:
            import dataclasses

            return dataclasses.replace(name, system_prompt=resolve_system_prompt(system_prompt),
                                       strip_tldr_cue=name.strip_tldr_cue or system_prompt.strip().lower() == "tldr")
        return name
    if name not in _REGISTRY:
        raise TemplateError(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATE_NAMES)}")
    spec = dict(_REGISTRY[name])
    if system_prompt is not None and system_prompt.strip().lower() == "tldr":
        spec["strip_tldr_cue"] = True
    system_prompt = resolve_system_prompt(system_prompt)
    if note is not None:
        if "{followup}" not in note:
            raise TemplateError("a custom template note must contain the placeholder {followup}")
        spec["note"] = note
    return TeacherTemplate(name=name, system_prompt=system_prompt, **spec)


def supports_thinking_switch(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and "enable_thinking" in template


def render_context(tokenizer, messages: Messages) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt.

    Uses the tokenizer's chat template (``enable_thinking=False`` where the template
    knows that switch, as Qwen3's does). A tokenizer without a chat template gets a
    plain ``role: content`` transcript.
    """
    if getattr(tokenizer, "chat_template", None):
        kwargs = {"enable_thinking": False} if supports_thinking_switch(tokenizer) else {}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    # The chat template already wrote BOS and role markers.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_context(tokenizer, template: "TeacherTemplate", x, max_tokens: int | None,
                followup: str | None = None) -> tuple[list[int], int]:
    """Token ids of the student context (``followup=None``) or the teacher context, at most
    ``max_tokens`` long, cut so that what matters survives.

    Kept whole: the system message, the last user turn (the request being answered) and the
    hindsight follow-up. Cut, in this order: the oldest turns of the history (the history
    then restarts at a user turn), then the start of the request's text. Only when the kept
    parts alone are too long are the ids cut from the left. Returns the ids and how many
    tokens the uncut rendering had over the limit (0 = nothing was cut).
    """
    messages = template._task_messages(x)

    def render(msgs):
        built = template.student_messages(msgs) if followup is None else template.teacher_messages(msgs, followup)
        return render_context(tokenizer, built)

    ids = render(messages)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids, 0
    over = len(ids) - max_tokens
    head = [messages[0]] if messages[0]["role"] == "system" and len(messages) > 1 else []
    history, last = messages[len(head):-1], messages[-1]
    while history:
        history = history[1:]
        while history and history[0]["role"] != "user":
            history = history[1:]
        ids = render(head + history + [last])
        if len(ids) <= max_tokens:
            return ids, over
    request = list(tokenizer(last["content"], add_special_tokens=False)["input_ids"])
    cut = len(ids) - max_tokens
    while cut < len(request):
        shortened = {**last, "content": tokenizer.decode(request[cut:], skip_special_tokens=True).lstrip()}
        ids = render(head + [shortened])
        if len(ids) <= max_tokens:
            return ids, over
        cut += max(1, len(ids) - max_tokens)
    ids = render(head + [{**last, "content": "…"}])
    return ids[max(0, len(ids) - max_tokens):], over


# ---------------------------------------------------------------------------
# Reprompt teacher contexts (rich feedback): the original request, a successful
# peer attempt and/or the environment's feedback, then the same response is scored.
# ---------------------------------------------------------------------------

DEFAULT_REPROMPT_TEMPLATE = "{prompt}{demonstration}{feedback}\n\nWith this in mind, answer the original request correctly.\n"
DEFAULT_DEMONSTRATION_TEMPLATE = "\n\nHere is an attempt at this request that was judged correct:\n\n{demonstration}\n"
DEFAULT_FEEDBACK_TEMPLATE = "\n\nAn earlier attempt received this feedback:\n\n{feedback}\n"
REPROMPT_FIELDS = {"prompt", "demonstration", "feedback"}


def template_fields(template: str, *, name: str) -> set[str]:
    """Placeholders of a ``str.format`` template; a malformed template raises TemplateError."""
    import string

    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise TemplateError(f"{name} is not a valid format string ({exc}); write literal braces as {{{{ and }}}}") from exc


def check_reprompt_templates(teacher: str, demonstration: str, feedback: str) -> None:
    """Fail early, naming the template, when a placeholder is missing or unknown."""
    fields = template_fields(teacher, name="teacher_prompt_template")
    if "prompt" not in fields:
        raise TemplateError("teacher_prompt_template must contain {prompt} (the original request)")
    unknown = fields - REPROMPT_FIELDS
    if unknown:
        raise TemplateError(
            f"teacher_prompt_template has unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(REPROMPT_FIELDS)}"
        )
    for name, text, needed in (("demonstration_template", demonstration, "demonstration"),
                               ("feedback_template", feedback, "feedback")):
        got = template_fields(text, name=name)
        if got != {needed}:
            raise TemplateError(f"{name} must contain exactly the placeholder {{{needed}}}, found {sorted(got)}")


def strip_thinking(text: str, tag: str | None = "<think>") -> str:
    """Remove ``<think>...</think>`` blocks (for ``tag='<think>'``); an unclosed block runs to the end."""
    if not tag:
        return text.strip()
    import re

    close = "</" + tag[1:]
    text = re.sub(re.escape(tag) + r".*?" + re.escape(close), "", text, flags=re.DOTALL)
    if tag in text:
        text = text[: text.index(tag)]
    return text.replace(close, "").strip()


def render_reprompt(
    prompt: str,
    *,
    demonstration: str | None,
    feedback: str | None,
    teacher_template: str = DEFAULT_REPROMPT_TEMPLATE,
    demonstration_template: str = DEFAULT_DEMONSTRATION_TEMPLATE,
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE,
) -> str:
    """The teacher's version of the last user message."""
    demo = demonstration_template.format(demonstration=demonstration) if demonstration is not None else ""
    fb = feedback_template.format(feedback=feedback) if feedback is not None else ""
    return teacher_template.format(prompt=prompt, demonstration=demo, feedback=fb)
