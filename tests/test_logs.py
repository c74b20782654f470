"""Extraction from logged conversations, checked by hand against the bundled samples."""

import json

import pytest

from sdpo.cli import main
from sdpo.data.logs import ConversationError, extract, normalize_messages, sample_path


def _rows(source):
    return [json.loads(line) for line in sample_path(source).read_text(encoding="utf-8").splitlines()]


def _by_id(records):
    return {r.id: r for r in records}


def test_wildfeedback_counts():
    records, stats = extract(_rows("wildfeedback"), "wildfeedback")
    assert stats.conversations_seen == 32
    assert stats.conversations_kept == 31
    # wf-014 (a pasted 4,807-character user message) is kept: the reference's WildFeedback filter
    # looks at assistant messages only
    assert stats.dropped == {"conversations with fewer than 3 messages": 1}  # wf-011: "hi" / "Hello!"
    assert len(records) == stats.records == 48
    assert {r.source for r in records} == {"wildfeedback"}


def test_wildchat_counts_and_language_filter():
    records, stats = extract(_rows("wildchat"), "wildchat")
    # es, fr, de, zh, pt, ru conversations are dropped; WildFeedback has no language column
    assert stats.dropped["conversations not in English (or without a language)"] == 6
    assert stats.conversations_kept == 24
    assert len(records) == 41
    assert not any(r.id.startswith(("wc005", "wc006", "wc010", "wc016", "wc023", "wc029")) for r in records)


def test_length_and_language_rules_as_the_reference():
    def conv(user_len, assistant_len, language="English", layout="wildchat"):
        msgs = [("user", "q" * user_len), ("assistant", "a" * assistant_len), ("user", "thanks, shorter")]
        if layout == "wildchat":
            row = {"conversation": [{"role": r, "content": c} for r, c in msgs]}
            if language is not ...:
                row["language"] = language
            return row
        return {"conversations": [{"from": {"user": "human", "assistant": "gpt"}[r], "value": c} for r, c in msgs]}

    # WildFeedback: a long user message is kept, a long assistant message drops the conversation
    _, stats = extract([conv(5000, 10, layout="wf"), conv(10, 4097, layout="wf"), conv(10, 4096, layout="wf")],
                       "wildfeedback")
    assert stats.conversations_kept == 2
    assert stats.dropped == {"conversations with an assistant message over 4096 characters": 1}
    # WildChat: both limits; "english"/"en" in any case; a missing language is dropped
    _, stats = extract([conv(5000, 10), conv(10, 5000), conv(10, 10, " EN "), conv(10, 10, "english"),
                        conv(10, 10, None), conv(10, 10, ...), conv(10, 10, "French")], "wildchat")
    assert stats.conversations_kept == 2
    assert stats.dropped == {"conversations with a user message over 4096 characters": 1,
                             "conversations with an assistant message over 4096 characters": 1,
                             "conversations not in English (or without a language)": 3}


def test_correction_conversation_exact_records():
    records = _by_id(extract(_rows("wildfeedback"), "wildfeedback")[0])
    r = records["wf-001:1"]
    assert r.x == [{"role": "user", "content": "What's the capital of Canada?"}]
    assert r.y == "The capital of Canada is Toronto."
    assert r.o == "No, it's Ottawa. Toronto is just the largest city."
    assert "wf-001:3" not in records  # the last assistant turn has no user reply


def test_consecutive_user_turns_are_merged():
    records = _by_id(extract(_rows("wildfeedback"), "wildfeedback")[0])
    r = records["wf-012:1"]  # "lol" + "another one" were two user messages in a row
    assert r.o == "lol\n\nanother one"
    r2 = records["wf-012:3"]
    assert [m["role"] for m in r2.x] == ["user", "assistant", "user"]
    assert r2.x[-1]["content"] == "lol\n\nanother one"
    assert r2.o == "Haha, good one."


def test_empty_message_is_removed_before_merging():
    records = _by_id(extract(_rows("wildfeedback"), "wildfeedback")[0])
    assert records["wf-013:1"].o == "And in Kelvin?"
    assert records["wf-013:3"].y == "373.15 K." and records["wf-013:3"].o == "Thanks."


def test_leading_system_message_is_trimmed_from_x():
    records = _by_id(extract(_rows("wildfeedback"), "wildfeedback")[0])
    r = records["wf-008:2"]
    assert r.x == [{"role": "user", "content": "What's 15% of 80?"}]
    assert r.o == "And 20% of 80?"


def test_context_is_cut_to_last_five_messages_starting_with_user():
    records = _by_id(extract(_rows("wildfeedback"), "wildfeedback")[0])
    r = records["wf-020:5"]  # 8 messages; the assistant's "Prego!" is message 5
    assert [m["role"] for m in r.x] == ["user", "assistant", "user", "assistant", "user"]
    assert r.x[0]["content"] == "Translate 'good morning' into Italian."
    assert r.x[-1]["content"] == "Grazie!"
    assert r.y == "Prego!" and r.o == "Now how do you say 'see you tomorrow'?"
    assert "wf-020:7" not in records  # "A domani." is the last message: no follow-up
    assert sorted(k for k in records if k.startswith("wf-020:")) == ["wf-020:1", "wf-020:3", "wf-020:5"]


def test_caps_shuffle_and_dedupe():
    rows = _rows("wildchat")
    a, _ = extract(rows, "wildchat", shuffle_seed=1, max_conversations=5)
    b, _ = extract(rows, "wildchat", shuffle_seed=1, max_conversations=5)
    c, _ = extract(rows, "wildchat", shuffle_seed=2, max_conversations=5)
    assert [r.id for r in a] == [r.id for r in b] != [r.id for r in c]
    assert len({r.id.split(":")[0] for r in a}) == 5
    capped, stats = extract(rows, "wildchat", max_pairs=10)
    assert len(capped) == 10 and stats.dropped["pairs over the cap"] == 31
    doubled, stats = extract(rows + rows, "wildchat", dedupe=True)
    assert len(doubled) == 41 and stats.dropped["duplicate records"] == 41


def test_bad_rows_are_named():
    with pytest.raises(ConversationError, match="row 1: missing column 'conversations'"):
        extract([{"conversation": []}], "wildfeedback")
    with pytest.raises(ConversationError, match="row 2: message 0 has unknown role 'robot'"):
        extract([{"conversations": []}, {"conversations": [{"from": "robot", "value": "x"}]}], "wildfeedback")
    with pytest.raises(ConversationError, match="needs 'role' and 'content'"):
        normalize_messages([{"role": "user"}], role_key="role", content_key="content", where="row 0")


def test_prepare_command_writes_records_and_stats(tmp_path, capsys):
    out = tmp_path / "wc.jsonl"
    assert main(["prepare", "wildchat", "--input_file", "sample", "--output", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 41
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert stats["records"] == 41 and stats["dropped"]["conversations not in English (or without a language)"] == 6
    assert "records written: 41" in capsys.readouterr().out
    # a local parquet export in the real layout goes through datasets.load_dataset too
    import datasets

    parquet = tmp_path / "wf.parquet"
    datasets.Dataset.from_list(_rows("wildfeedback")).to_parquet(str(parquet))
    assert main(["prepare", "wildfeedback", "--input_file", str(parquet), "--output", str(tmp_path / "wf.jsonl")]) == 0
    assert len((tmp_path / "wf.jsonl").read_text().splitlines()) == 48
    assert main(["prepare", "sharegpt"]) == 2
    assert main(["prepare", "wildchat", "--input_file", str(tmp_path / "missing.jsonl")]) == 2


@pytest.mark.parametrize("dataset", ["wildfeedback", "wildchat"])
def test_prepare_names_bad_rows_by_file_and_line_in_file_order(tmp_path, capsys, dataset):
    """Issue 28: 1-based line numbers of the input file, named, in file order (WildChat is shuffled after)."""
    import json

    column = "conversations" if dataset == "wildfeedback" else "conversation"
    good = json.loads(_sample_line(dataset))
    path = tmp_path / "logs.jsonl"
    lines = [json.dumps(good), "", json.dumps({"other": 1})] + [json.dumps(good)] * 6 + [json.dumps({"other": 2})]
    path.write_text("\n".join(lines) + "\n")
    assert main(["prepare", dataset, "--input_file", str(path), "--output", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"2 bad rows: {path}:3: missing column '{column}'" in err  # line 3: the blank line 2 is counted
    assert err.index(f"{path}:3:") < err.index(f"{path}:10: missing column '{column}'")
    path.write_text("\n".join(lines[:3]) + "\n")
    assert main(["prepare", dataset, "--input_file", str(path), "--output", str(tmp_path / "out.jsonl")]) == 2
    assert f"error: {path}:3: missing column '{column}'" in capsys.readouterr().err


def _sample_line(dataset):
    from sdpo.data.logs import sample_path

    return sample_path(dataset).read_text(encoding="utf-8").splitlines()[0]
