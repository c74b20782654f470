import json

import pytest

from sdpo.data.cases import CasesError, load_cases


def test_bundled_cases_load():
    cases = load_cases("bundled")
    assert len(cases) >= 3
    assert all(c.response and c.followup and c.unrelated_followup for c in cases)


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_json_and_jsonl_and_messages(tmp_path):
    case = {"prompt": "p", "response": "r", "followup": "f"}
    msgs = {"messages": [{"role": "user", "content": "a"}], "response": "r", "followup": "f", "name": "m"}
    assert len(load_cases(_write(tmp_path, "a.json", json.dumps([case, msgs])))) == 2
    assert len(load_cases(_write(tmp_path, "b.json", json.dumps({"cases": [case]})))) == 1
    cases = load_cases(_write(tmp_path, "c.jsonl", json.dumps(case) + "\n\n" + json.dumps(msgs) + "\n"))
    assert [c.name for c in cases] == ["case0", "m"]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", '[{"prompt": "p",\n "response": }]', r"bad.json:2: invalid JSON"),
        ("bad.jsonl", '{"prompt": "p", "response": "r", "followup": "f"}\n{oops}\n', r"bad.jsonl:2: invalid JSON"),
        ("x.json", '[{"prompt": "p", "followup": "f"}]', r"x.json: case 0: missing field 'response'"),
        ("x.json", '[{"prompt": "p", "response": "r", "followup": 3}]', r"case 0: field 'followup' must be a string"),
        ("x.json", '[{"prompt": "p", "response": " ", "followup": "f"}]', r"case 0: field 'response' is empty"),
        ("x.json", '[{"response": "r", "followup": "f"}]', r"exactly one of 'prompt' or 'messages'"),
        ("x.json", '[{"prompt": "p", "response": "r", "followup": "f", "typo": 1}]', r"unknown field\(s\) typo"),
        ("x.json", '{"a": 1}', r"expected a list of cases"),
        ("x.json", "[]", r"no cases"),
        ("x.jsonl", '{"prompt": "p", "response": "r", "followup": "f"}\n[1]\n', r"x.jsonl: line 2: expected an object"),
        (
            "x.json",
            '[{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],'
            ' "response": "r", "followup": "f"}]',
            r"case 0: field messages: the context must end with a user message",
        ),
    ],
)
def test_bad_files_are_named(tmp_path, name, text, message):
    with pytest.raises(CasesError, match=message):
        load_cases(_write(tmp_path, name, text))


def test_missing_file(tmp_path):
    with pytest.raises(CasesError, match="no such file"):
        load_cases(tmp_path / "missing.json")
