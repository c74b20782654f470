import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sdpo.analysis.signal_report import load_signals, selectivity
from sdpo.cli import main
from sdpo.data.cases import load_cases

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ["followup.png", "unrelated.png", "stacked.png", "side_by_side.png"]


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    assert main(["signal-analysis", "--model", "tiny-random", "--n_cases", "5", "--out_dir", str(out)]) == 0
    return out


def test_shipped_cases_are_valid():
    cases = load_cases(ROOT / "auxiliary" / "signal_analysis_cases.json")
    assert len(cases) >= 24
    assert all(c.unrelated_followup and c.followup != c.unrelated_followup for c in cases)
    assert len({c.name for c in cases}) == len(cases)
    assert len(load_cases("analysis")) == len(cases)  # the packaged copy is the same file


def test_outputs_are_written(analysis_dir):
    from PIL import Image

    for name in PLOTS + [f"case{i}_tokens.png" for i in range(5)]:
        with Image.open(analysis_dir / name) as img:
            img.verify()
        assert (analysis_dir / name).stat().st_size > 5_000
    assert not (analysis_dir / "case5_tokens.png").exists()
    assert (analysis_dir / "report.html").is_file()


def test_json_roundtrips_and_selectivity_is_right(analysis_dir):
    data = load_signals(analysis_dir / "sdpo_signals.json")
    assert json.loads(json.dumps(data)) == data
    assert data["model"] == "tiny-random" and data["template"] == "hindsight" and data["n_cases"] == 5
    rel_all, unr_all = [], []
    for case in data["cases"]:
        n = len(case["tokens"])
        assert n == len(case["token_ids"]) == len(case["signal_followup"]) == len(case["signal_unrelated"])
        rel = np.asarray(case["signal_followup"], dtype=np.float64)
        unr = np.asarray(case["signal_unrelated"], dtype=np.float64)
        # the stored signal is teacher - student for each follow-up
        np.testing.assert_allclose(
            rel, np.subtract(case["teacher_logprobs_followup"], case["student_logprobs"]), atol=1e-6
        )
        np.testing.assert_allclose(
            unr, np.subtract(case["teacher_logprobs_unrelated"], case["student_logprobs"]), atol=1e-6
        )
        assert case["selectivity"] == pytest.approx(np.abs(rel).mean() / np.abs(unr).mean(), rel=1e-9)
        rel_all.append(rel)
        unr_all.append(unr)
    pooled = np.abs(np.concatenate(rel_all)).mean() / np.abs(np.concatenate(unr_all)).mean()
    assert data["overall"]["selectivity"] == pytest.approx(pooled, rel=1e-9)


def test_selectivity_definition():
    assert selectivity([1, -1], [0.5, -0.5]) == 2.0
    assert selectivity([0.1], [0.0]) == float("inf")


def test_template_all_compares(tmp_path, capsys):
    assert main(["signal-analysis", "--model", "tiny-random", "--n_cases", "2", "--template", "all",
                 "--no_token_images", "--out_dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "selectivity_by_template.json").read_text())
    assert set(summary) == {"hindsight", "hindsight-revise", "hindsight-system"}
    for name in summary:
        assert (tmp_path / name / "report.html").is_file()
        assert not (tmp_path / name / "case0_tokens.png").exists()
    out = capsys.readouterr().out
    assert "templates compared" in out
    # the final message names a report.html that exists: an index linking every template's report
    named = re.search(r"open (\S+report\.html) in a browser", out.replace("\n", " "))
    assert named and Path(named.group(1)).is_file() and Path(named.group(1)) == tmp_path / "report.html"
    index = (tmp_path / "report.html").read_text()
    for name in summary:
        assert f"href='{name}/report.html'" in index and f"src='{name}/side_by_side.png'" in index


def test_display_units_merge_split_characters_and_sum_their_signal():
    from sdpo.analysis.signal_report import display_units, extremes
    from sdpo.models import load_model
    from sdpo.signal import token_strings

    _, tok = load_model("tiny-random")
    text = "Great job 🎉 you did it 😀 — café ☕"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tokens = token_strings(tok, ids)
    rng = np.random.default_rng(0)
    values = rng.normal(size=len(ids))
    units = display_units(tokens, values)
    assert "".join(u[0] for u in units) == text  # every character once, none as a lone byte
    assert not any(u[0] == "" or "\ufffd" in u[0] for u in units)
    assert any(len(u[2]) > 1 for u in units)  # the emoji span several byte tokens here
    # a unit's value is the float64 sum of its tokens' values, and all values are kept in order
    np.testing.assert_allclose([u[1] for u in units], [np.sum(np.float64(u[2])) for u in units], rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate([u[2] for u in units]), values)
    low, high = extremes(tokens, values, k=50)
    assert all(v < 0 for _, v in low) and all(v > 0 for _, v in high)
    assert len(low) + len(high) == sum(1 for u in units if u[1] != 0)
    assert [v for _, v in low] == sorted(v for _, v, _ in units if v < 0)
    # all positive: nothing is "discouraged"
    low, high = extremes(["a", "b"], [0.5, 0.1])
    assert low == [] and [t for t, _ in high] == ["a", "b"]


def test_one_colour_scale_for_terminal_report_and_images():
    from sdpo.analysis import signal_report
    from sdpo.commands import signal as signal_command

    assert signal_command.SCALE == signal_report.FULL_COLOUR_NATS
    assert signal_report._scale({"cases": [{"signal_followup": [0.1], "signal_unrelated": [9.0]}]}) == \
        signal_report.FULL_COLOUR_NATS
    full = signal_report.FULL_COLOUR_NATS
    # full colour reached exactly at the constant in both renderers, and not before
    assert signal_report._colour(full, full) == signal_report._colour(10 * full, full)
    assert signal_report._colour(0.9 * full, full) != signal_report._colour(full, full)
    assert signal_command._shade(full) == signal_command._shade(10 * full)
    assert signal_command._shade(0.9 * full) != signal_command._shade(full)


def test_image_text_spells_out_glyphs_the_font_lacks():
    from sdpo.analysis.signal_report import drawable

    assert drawable("café — ok") == "café — ok"
    assert drawable("party 🎉!") == "party [party popper]!"
    assert drawable("あ") == "[U+3042]"


def test_terminal_lists_only_negative_as_discouraged(capsys, monkeypatch):
    import sdpo.commands.signal as cmd

    result = {"model": "m", "template": "t", "cases": [{
        "name": "c", "prompt": "p", "response": "r", "followup": "f", "tokens": ["a", "", " 🎉", "[b"],
        "signal": [0.3, -0.5, -0.25, 0.2], "mean_abs_signal": 0.3125}]}
    cmd._print_rich(result, force=True)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "most discouraged: ' 🎉' -0.75" in out  # the emoji once, with the sum of its two tokens
    assert "most encouraged:  'a' +0.30, '[b' +0.20" in out
    result["cases"][0]["signal"] = [0.3, 0.5, 0.25, 0.2]
    cmd._print_rich(result, force=True)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "most discouraged: (no token below 0)" in out


def test_cases_without_control_are_rejected(tmp_path, capsys):
    bad = tmp_path / "cases.json"
    bad.write_text(json.dumps([
        {"prompt": "p", "response": "r", "followup": "f", "unrelated_followup": "u"},
        {"name": "no-control", "prompt": "p", "response": "r", "followup": "f"},
    ]))
    assert main(["signal-analysis", "--model", "tiny-randm", "--cases", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "case 1 (no-control): missing field 'unrelated_followup'" in err  # before the bad model name
    assert main(["signal-analysis", "--model", "tiny-random", "--template", "nope"]) == 2


def _script(env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run(["bash", str(ROOT / "scripts" / "run_signal_analysis.sh"), "--dry-run", "--batch_size", "4"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_script_dry_run_resolves_overrides():
    env = {k: v for k, v in os.environ.items() if k != "SCRATCH"}
    done = subprocess.run(["bash", "scripts/run_signal_analysis.sh", "--dry-run"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model Qwen/Qwen3-8B" in done.stdout and "--n_cases 24" in done.stdout
    assert re.search(r"--out_dir \./runs/signal-analysis/\d{8}-\d{6}", done.stdout)
    done = _script({"MODEL": "tiny-random", "N_CASES": "3", "SCRATCH": "/scratch/me", "CASES_JSON": "x.json"})
    assert done.returncode == 0, done.stderr
    assert "--model tiny-random" in done.stdout and "--n_cases 3" in done.stdout and "--cases x.json" in done.stdout
    assert "--out_dir /scratch/me/signal-analysis/" in done.stdout and done.stdout.rstrip().endswith("--batch_size 4")


CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.mark.system_package("chromium")  # checked before the fixtures run
def test_report_renders_in_headless_chromium(analysis_dir, tmp_path):
    from tests.system_packages import require

    browser = require("chromium")  # skipped without it (a failure where SDPO_REQUIRE_SYSTEM_PACKAGES=1)
    url = (analysis_dir / "report.html").as_uri()
    data = load_signals(analysis_dir / "sdpo_signals.json")

    def run(*args):
        profile = tempfile.mkdtemp(dir=tmp_path)
        done = subprocess.run([browser, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    dom = run("--dump-dom", url + "#sort=desc")
    sections = re.findall(r'<section class="case" id="case(\d+)" data-index="\d+" data-selectivity="([\d.]+)"', dom)
    assert len(sections) == data["n_cases"]  # every case rendered
    shown = [float(s) for _, s in sections]
    assert shown == sorted(shown, reverse=True)  # the page's own script sorted them by selectivity
    from sdpo.analysis.signal_report import display_units

    # one span per shown unit (a character split over byte tokens is one span), under both follow-ups
    n_units = sum(len(display_units(c["tokens"], c["signal_followup"])) for c in data["cases"])
    assert n_units < sum(len(c["tokens"]) for c in data["cases"])  # case 2's emojis are split in the tokenizer
    assert len(re.findall(r'<span class="tok"', dom)) == 2 * n_units
    assert "\ufffd" not in dom and "🎉" in dom

    shot = tmp_path / "report.png"
    run("--window-size=1280,1200", f"--screenshot={shot}", url)
    from PIL import Image

    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    non_white = (pixels.min(axis=1) < 235).mean()
    assert non_white > 0.02, f"screenshot looks blank ({non_white:.3%} non-white pixels)"
    assert len(np.unique(pixels, axis=0)) > 50


def _fake_result(n_tokens=12):
    tokens = ["Sure", ",", " here", " is", " a", " short", " answer", ".\n", "🎉", " Bye", "!", "<|im_end|>"][:n_tokens]
    case = {"name": "demo", "tokens": tokens, "signal_followup": [((-1) ** i) * 0.3 * i for i in range(len(tokens))],
            "signal_unrelated": [0.01] * len(tokens)}
    return {"template": "hindsight", "cases": [case, dict(case, name="again")],
            "overall": {"selectivity": 2.0}}


def test_heatmap_cells_show_their_tokens():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdpo.analysis.signal_report import _heatmap, cell_label

    fig, ax = plt.subplots(figsize=(12, 3))
    _heatmap(ax, _fake_result(), "signal_followup", "t", 1.0, 96)
    texts = [t.get_text() for t in ax.texts]
    assert "Sure" in texts and "·here" in texts and ".\\n" in texts and "[party popper]"[:3] in "".join(texts)
    plt.close(fig)
    assert cell_label(" answer", 4) == "·an…" and cell_label("\n", 5) == "\\n"


def test_heatmap_with_many_tokens_still_writes(tmp_path):
    from sdpo.analysis.signal_report import write_plots

    result = _fake_result()
    result["cases"] = [dict(c, tokens=c["tokens"] * 10, signal_followup=c["signal_followup"] * 10,
                            signal_unrelated=c["signal_unrelated"] * 10) for c in result["cases"]]
    paths = write_plots(result, tmp_path, max_tokens=96, token_images=False)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
