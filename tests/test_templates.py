import pytest

from sdpo.templates import (
    TEMPLATE_NAMES,
    TemplateError,
    as_messages,
    get_template,
    render_context,
    supports_thinking_switch,
)

HISTORY = [
    {"role": "user", "content": "Recommend a book."},
    {"role": "assistant", "content": "Try Dune."},
    {"role": "user", "content": "Something shorter?"},
]


def test_hindsight_puts_followup_in_last_user_turn():
    t = get_template("hindsight")
    student = t.student_messages(HISTORY)
    teacher = t.teacher_messages(HISTORY, "  Too long, just a title please.  ")
    assert student == HISTORY
    assert teacher[:2] == HISTORY[:2]  # history kept
    assert teacher[-1]["role"] == "user"
    assert teacher[-1]["content"].startswith("Something shorter?")
    assert teacher[-1]["content"].endswith("Too long, just a title please.")
    content = teacher[-1]["content"]
    # the reference's structure: request, then a header line, a one-line note, the follow-up
    request, header, note, followup = content.split("\n", 3)[0], *content.split("\n\n", 1)[1].split("\n", 2)
    assert request == "Something shorter?" and header == "--- HINDSIGHT ---"
    assert note.startswith("[") and "later" in note and followup == "Too long, just a title please."
    assert HISTORY[-1]["content"] == "Something shorter?"  # inputs not mutated


def test_system_variant_puts_followup_in_system_message():
    t = get_template("hindsight-system")
    teacher = t.teacher_messages(HISTORY, "Just a title.")
    assert teacher[0]["role"] == "system" and "Just a title." in teacher[0]["content"]
    assert teacher[1:] == HISTORY
    with_system = [{"role": "system", "content": "Be brief."}] + HISTORY
    teacher = t.teacher_messages(with_system, "Just a title.")
    assert teacher[0]["content"].startswith("Be brief.") and "Just a title." in teacher[0]["content"]
    assert len(teacher) == len(with_system)


def test_system_prompt_goes_to_both_contexts():
    t = get_template("hindsight", system_prompt="You are terse.")
    assert t.student_messages("hi")[0] == {"role": "system", "content": "You are terse."}
    assert t.teacher_messages("hi", "ok")[0] == {"role": "system", "content": "You are terse."}


def test_template_errors():
    with pytest.raises(TemplateError, match="unknown template 'nope'; choose one of: hindsight"):
        get_template("nope")
    with pytest.raises(TemplateError, match="follow-up o is empty"):
        get_template().teacher_messages("hi", " ")
    with pytest.raises(TemplateError, match="placeholder"):
        get_template("hindsight", note="no placeholder here")
    with pytest.raises(TemplateError, match="end with a user message"):
        as_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(TemplateError, match=r"x\[0\]: a message needs 'role' and 'content'"):
        as_messages([{"content": "a"}])
    with pytest.raises(TemplateError, match="prompt is empty"):
        as_messages("")
    assert set(TEMPLATE_NAMES) == {"hindsight", "hindsight-revise", "hindsight-system"}


def test_revise_template_is_the_offline_structure():
    t = get_template("hindsight-revise")
    teacher = t.teacher_messages(HISTORY, "Still too long.")
    assert teacher[:2] == HISTORY[:2] and len(teacher) == 3
    body = teacher[-1]["content"]
    assert body.startswith("Something shorter?\n\n--- HINDSIGHT ---\n[")
    assert "earlier answer" in body and body.endswith("User's reply: Still too long.")


def test_empty_system_prompt_adds_an_empty_system_message_and_presets():
    from sdpo.templates import DEFAULT_OFFLINE_TEMPLATE, DEFAULT_TEMPLATE, SYSTEM_PROMPT_PRESETS

    assert (DEFAULT_TEMPLATE, DEFAULT_OFFLINE_TEMPLATE) == ("hindsight", "hindsight-revise")
    t = get_template("hindsight", system_prompt="general")
    assert t.student_messages("hi") == [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert t.teacher_messages("hi", "ok")[0] == {"role": "system", "content": ""}
    assert get_template("hindsight").student_messages("hi") == [{"role": "user", "content": "hi"}]
    tldr = get_template("hindsight", system_prompt="tldr")
    msgs = tldr.student_messages("My cat naps all day.\nTL;DR:\n")
    assert msgs == [{"role": "system", "content": SYSTEM_PROMPT_PRESETS["tldr"]},
                    {"role": "user", "content": "My cat naps all day."}]
    assert tldr.teacher_messages("My cat naps.\nTL;DR:", "shorter")[-1]["content"].startswith("My cat naps.\n\n---")
    # an existing system message is kept; an empty preset does not add a second one
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert t.student_messages(with_system) == with_system


def test_custom_note():
    t = get_template("hindsight", note="\nLater the user said: {followup}")
    assert t.teacher_messages("hi", "bye")[-1]["content"] == "hi\nLater the user said: bye"


def test_render_uses_chat_template(tokenizer):
    ids = render_context(tokenizer, [{"role": "user", "content": "Hello"}])
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def test_enable_thinking_is_passed_when_the_template_knows_it(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
        "{% endif %}"
    )
    assert supports_thinking_switch(tok) and not supports_thinking_switch(tokenizer)
    text = tok.decode(render_context(tok, [{"role": "user", "content": "Hi"}]))
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_render_without_chat_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    text = tok.decode(render_context(tok, [{"role": "user", "content": "Hi"}]))
    assert text == "user: Hi\nassistant: "


@pytest.mark.parametrize("name", ["hindsight", "hindsight-revise", "hindsight-system"])
def test_long_contexts_keep_system_request_and_followup(tokenizer, name):
    from sdpo.templates import fit_context

    t = get_template(name, system_prompt="SYSTEM-RULES")
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"old question {i} " + "blah " * 30},
                    {"role": "assistant", "content": f"old answer {i} " + "meh " * 30}]
    x = history + [{"role": "user", "content": "FIRST-WORDS " + "detail " * 100 + "LAST-WORDS"}]
    followup = "FOLLOWUP-MARKER please be brief"
    full_student = render_context(tokenizer, t.student_messages(x))
    full_teacher = render_context(tokenizer, t.teacher_messages(x, followup))
    for limit in (len(full_teacher) // 2, 260, 180):
        for fu in (None, followup):
            ids, over = fit_context(tokenizer, t, x, limit, followup=fu)
            text = tokenizer.decode(ids)
            assert len(ids) <= limit and over == len(full_teacher if fu else full_student) - limit
            assert "SYSTEM-RULES" in text and "LAST-WORDS" in text, (limit, fu)
            if fu:
                assert "FOLLOWUP-MARKER please be brief" in text
            assert "old question 0 " not in text  # the oldest turn goes first
    # mid-size limit: recent history survives, whole turns only, starting at a user turn
    ids, _ = fit_context(tokenizer, t, x, len(full_student) - 50)
    text = tokenizer.decode(ids)
    assert "old question 11" in text and "old answer 11" in text and "FIRST-WORDS" in text
    # so small that the request itself is shortened from its start
    ids, _ = fit_context(tokenizer, t, x, 150, followup=followup)
    text = tokenizer.decode(ids)
    assert "FIRST-WORDS" not in text and "LAST-WORDS" in text and "FOLLOWUP-MARKER" in text
    # within the limit: untouched
    assert fit_context(tokenizer, t, x, len(full_teacher), followup=followup) == (full_teacher, 0)
