import json

import pytest

from sdpo.data.interactions import RecordError, load_interactions

GOOD = {"x": [{"role": "user", "content": "hi"}], "y": "hello", "o": "thanks"}


def _file(tmp_path, lines):
    p = tmp_path / "records.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"x": [{"role": "user", "content": "hi"}], "y": "hello"}', "missing field 'o'"),
        ('{"x": [{"role": "user", "content": "hi"}], "y": " ", "o": "ok"}', "field 'y' is empty"),
        ('{"x": [{"role": "user", "content": "hi"}], "y": 3, "o": "ok"}', "field 'y' must be a string, got int"),
        ('{"x": "hi", "y": "a", "o": "b"}', "field 'x' must be a non-empty list"),
        ('{"x": [{"role": "user"}], "y": "a", "o": "b"}', r"field 'x\[0\]' must be an object"),
        ('{"x": [{"role": "bot", "content": "c"}], "y": "a", "o": "b"}', r"field 'x\[0\].role' is 'bot'"),
        ('{"x": [{"role": "assistant", "content": "c"}], "y": "a", "o": "b"}', "must end with a user message"),
        ('{"x": [oops', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_malformed_records_name_file_line_field(tmp_path, bad, message):
    path = _file(tmp_path, [json.dumps(GOOD), bad, json.dumps(GOOD)])
    with pytest.raises(RecordError, match=rf"records.jsonl:2: .*{message}"):
        load_interactions(path)
    records, report = load_interactions(path, skip_invalid=True)
    assert len(records) == 2 and report.kept == 2 and sum(report.skipped.values()) == 1
    assert "1 invalid skipped" in report.summary()
    assert report.first_errors[0].startswith(f"{path}:2:")


def test_good_file_and_empty_file(tmp_path):
    records, report = load_interactions(_file(tmp_path, [json.dumps({**GOOD, "id": "a:1", "source": "s"}), ""]))
    assert records[0].id == "a:1" and records[0].x == GOOD["x"] and report.summary().endswith("1 records")
    with pytest.raises(RecordError, match="no valid records"):
        load_interactions(_file(tmp_path, ["[1]"]), skip_invalid=True)
    with pytest.raises(RecordError, match="no such file"):
        load_interactions(tmp_path / "nope.jsonl")
