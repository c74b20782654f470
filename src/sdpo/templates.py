"""Teacher-context templates.

A template turns the student context ``x`` (chat messages ending with a user turn)
and a piece of hindsight ``o`` (what the user said next) into the teacher context.
The student sees ``x``; the teacher sees ``x`` with ``o`` placed where the template
says. Both contexts are then rendered by the tokenizer's chat template with a
generation prompt, so the same response tokens can be scored under each.

Built-in templates (select by name with :func:`get_template`):

* ``hindsight`` - ``o`` goes inside the last user message, after the request,
  under a short note saying it is the user's next message and should guide the answer.
* ``hindsight-system`` - ``o`` goes into the system message instead (appended to an
  existing system message, or a new one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

Message = dict[str, Any]
Messages = list[Message]

USER_TURN_NOTE = (
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

    def student_messages(self, x: str | Sequence[Message]) -> Messages:
        messages = as_messages(x)
        return self._with_system_prompt(messages)

    def teacher_messages(self, x: str | Sequence[Message], followup: str) -> Messages:
        if not isinstance(followup, str) or not followup.strip():
            raise TemplateError("the follow-up o is empty; the teacher context needs hindsight text")
        messages = self._with_system_prompt(as_messages(x))
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

    def _with_system_prompt(self, messages: Messages) -> Messages:
        messages = copy.deepcopy(messages)
        if self.system_prompt:
            if messages[0]["role"] == "system":
                messages[0]["content"] = self.system_prompt + "\n\n" + messages[0]["content"]
            else:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages


_REGISTRY = {
    "hindsight": dict(placement="user", note=USER_TURN_NOTE),
    "hindsight-system": dict(placement="system", note=SYSTEM_NOTE),
}
TEMPLATE_NAMES = tuple(_REGISTRY)
# Chosen by measurement (`sdpo signal-analysis --template all`, benchmarks/RESULTS.md): on the
# embedded model the system placement separated relevant from unrelated follow-ups better
# (pooled selectivity 0.997 vs 0.862 for the user-turn placement). Neither exceeds 1 on a
# 135M model; re-measure on your model and pass --template to choose.
DEFAULT_TEMPLATE = "hindsight-system"


def get_template(
    name: str | TeacherTemplate = DEFAULT_TEMPLATE,
    *,
    system_prompt: str | None = None,
    note: str | None = None,
) -> TeacherTemplate:
    """A built-in template by name; ``note`` overrides its wording (must contain ``{followup}``)."""
    if isinstance(name, TeacherTemplate):
        return name
    if name not in _REGISTRY:
        raise TemplateError(f"unknown template {name!r}; choose one of: {', '.join(TEMPLATE_NAMES)}")
    spec = dict(_REGISTRY[name])
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
