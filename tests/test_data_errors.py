"""Bad data files and unreachable hub datasets end in one line that names the problem and the fix."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo.cli import main
from sdpo.data.interactions import RecordError, load_interactions
from sdpo.data.io import MAX_NAMED_LINES, DataFileError, load_local_table
from sdpo.data.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"x": [{"role": "user", "content": "hi"}], "y": "hello", "o": "thanks"}


def _write(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_every_bad_interaction_line_is_named_in_one_error(tmp_path):
    lines = [json.dumps(GOOD), "{not json", json.dumps({**GOOD, "o": ""}), json.dumps(GOOD),
             json.dumps({"x": [], "y": "a", "o": "b"}), b"\xff\xfe junk", ""]
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(RecordError) as info:
        load_interactions(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: 4 bad lines: line 2: invalid JSON")
    for part in ("line 3: field 'o' is empty", "line 5: field 'x' must be a non-empty list",
                 "line 6: not UTF-8 text (byte 1)", "(use --skip_invalid to count and skip such lines)"):
        assert part in msg
    assert "line 1:" not in msg and "line 4:" not in msg
    records, report = load_interactions(path, skip_invalid=True)  # the skipping mode still works
    assert len(records) == 2 and sum(report.skipped.values()) == 4


def test_one_bad_line_keeps_the_file_line_field_form(tmp_path):
    path = _write(tmp_path / "one.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "y": 3})])
    with pytest.raises(RecordError, match=r"one\.jsonl:2: field 'y' must be a string, got int \(use --skip_invalid"):
        load_interactions(path)


def test_bad_lines_beyond_the_cap_are_counted(tmp_path):
    n = MAX_NAMED_LINES + 7
    path = _write(tmp_path / "many.jsonl", [json.dumps({"prompt": i}) for i in range(n)])
    with pytest.raises(RecordError) as info:
        load_prompts(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {n} bad lines: line 1: field 'prompt' must be a string, got int")
    assert msg.count("field 'prompt' must be a string") == MAX_NAMED_LINES
    assert f"line {MAX_NAMED_LINES}:" in msg and f"line {MAX_NAMED_LINES + 1}:" not in msg
    assert msg.endswith("; and 7 more") and "\n" not in msg


@pytest.mark.parametrize("dataset", ["wildchat", "wildfeedback", "tldr", "helpsteer2"])
@pytest.mark.parametrize("content, says", [
    (b"", ": the file is empty"),
    (b"\n  \n", ": the file is empty"),
    (b"{broken", ":1: invalid JSON"),
    (b'{"conversation": []}\n[1]\n{x\n', ": 2 bad lines: line 2: expected a JSON object, got list; line 3: invalid JSON"),
])
def test_prepare_on_an_empty_or_unreadable_input_is_one_line(tmp_path, capsys, dataset, content, says):
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)
    assert main(["prepare", dataset, "--input_file", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sdpo prepare: error: --input_file {path}{says}")
    assert "--input_file sample" in err
    assert not (tmp_path / "out").exists()


def test_local_table_errors_name_the_file(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_local_table(tmp_path / "missing.parquet")
    with pytest.raises(DataFileError, match="not a file"):
        load_local_table(tmp_path)
    garbage = tmp_path / "export.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataFileError, match=r"export\.parquet: cannot be read as parquet \(") as info:
        load_local_table(garbage)
    assert "\n" not in str(info.value)
    empty_list = tmp_path / "rows.json"
    empty_list.write_text("[]")
    with pytest.raises(DataFileError, match=r"rows\.json: (no rows|cannot be read)"):
        load_local_table(empty_list)


HUB = {
    "tldr": "openai/summarize_from_feedback (config comparisons), split train",
    "helpsteer2": "nvidia/HelpSteer2, split train",
    "wildfeedback": "microsoft/WildFeedback (config wildfeedback), split train",
    "wildchat": "allenai/WildChat, split train",
}


@pytest.mark.parametrize("dataset", HUB)
def test_prepare_from_the_hub_while_offline_is_one_line_with_the_fix(monkeypatch, capsys, tmp_path, dataset):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["prepare", dataset, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"sdpo prepare: error: cannot load hub dataset {HUB[dataset]}: HF_HUB_OFFLINE is set")
    assert "use --input_file sample (the bundled sample) or --input_file FILE" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_hub_is_detected_quickly_without_offline_variables(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert main(["prepare", "wildchat", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot load hub dataset allenai/WildChat, split train: {endpoint} cannot be reached (" in err
    assert "--input_file sample" in err


def test_spo_generate_with_an_unreachable_hub_dataset_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["spo", "generate", "--dataset_id", "openbmb/UltraFeedback", "--output", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot load hub dataset openbmb/UltraFeedback, split train: HF_HUB_OFFLINE is set" in err
    assert "--dataset_id FILE" in err


def test_prepare_offline_in_a_fresh_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sdpo.cli", "prepare", "tldr", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "Traceback" not in done.stderr and "--input_file sample" in done.stderr


def test_the_probe_reports_a_closed_port_and_accepts_an_open_one():
    from sdpo.data.hub import unreachable_reason

    assert unreachable_reason(f"http://127.0.0.1:{_closed_port()}", timeout=2.0) is not None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert unreachable_reason(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2.0) is None
