"""`sdpo chat`: the web chat in a real browser, undo, export, kill/restart, async weights,
simulated sessions, top-k distillation vs a float64 reference, and the localhost rule."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from sdpo.chat.config import ChatConfig
from sdpo.chat.engine import ChatEngine, ChatError
from sdpo.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT / "src")}


def _cfg(run_dir, **kw):
    base = dict(run_dir=str(run_dir), model_name_or_path="tiny-random", max_new_tokens=10, learning_rate=1e-3)
    base.update(kw)
    return ChatConfig(**base)


def _say(engine, cid, text):
    info = {}
    for _ in engine.send(cid, text, info=info):
        pass
    return info


def _weights(engine):
    return [p.detach().clone() for p in engine.params]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- safety


def test_non_local_host_without_auth_refuses(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["chat", "--host", "0.0.0.0", "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--auth" in err and "0.0.0.0" in err
    assert not run.exists()  # refused before anything was written or loaded
    assert main(["chat", "--host", "0.0.0.0", "--auth", "nopassword", "--run_dir", str(run)]) == 2
    assert "--auth" in capsys.readouterr().err


# ---------------------------------------------------------------------------- undo


def test_undo_restores_weights_bit_for_bit(tmp_path):
    with ChatEngine(_cfg(tmp_path / "run", undo_depth=2)) as engine:
        cid = engine.new_conversation()
        _say(engine, cid, "Tell me about the sea.")
        first = _say(engine, cid, "Shorter, please.")  # update 1
        kept = _weights(engine)
        kept_opt = {k: v.clone() for k, v in engine.optimizer.state[engine.params[0]].items()}
        second = _say(engine, cid, "Even shorter.")  # update 2
        third = _say(engine, cid, "No lists.")  # update 3
        assert engine.version == 3
        assert any(not torch.equal(a, b) for a, b in zip(kept, engine.params))
        with pytest.raises(ChatError, match="only 2"):
            engine.undo(3)  # undo_depth 2
        undone = engine.undo(2)
        assert sorted(undone) == sorted([second["interaction"], third["interaction"]])
        assert all(torch.equal(a, b) for a, b in zip(kept, engine.params))  # bit for bit
        state = engine.optimizer.state[engine.params[0]]
        assert all(torch.equal(kept_opt[k], state[k]) for k in kept_opt)
        assert engine.version == 1
        rows = {r["id"]: r for r in engine.store.interactions()}
        assert rows[first["interaction"]]["status"] == "applied" and not rows[first["interaction"]]["excluded"]
        for iid in undone:
            assert rows[iid]["status"] == "undone" and rows[iid]["excluded"] == 1
    # the undo is durable: a restart has the same weights
    with ChatEngine(_cfg(tmp_path / "run")) as again:
        assert again.version == 1
        assert all(torch.equal(a, b) for a, b in zip(kept, again.params))


# ---------------------------------------------------------------------------- export


def test_export_is_read_by_the_offline_loader(tmp_path, capsys):
    from sdpo.data.interactions import load_interactions

    run = tmp_path / "run"
    with ChatEngine(_cfg(run)) as engine:
        cid = engine.new_conversation()
        _say(engine, cid, "What is a prime number?")
        _say(engine, cid, "Explain it like I'm five.")
        _say(engine, cid, "Thanks, and an example?")
        engine.undo(1)
        cid2 = engine.new_conversation()
        _say(engine, cid2, "Name a colour.")
        _say(engine, cid2, "A warmer one.", )
    out = tmp_path / "interactions.jsonl"
    assert main(["chat", "export", "--run_dir", str(run), "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    records, report = load_interactions(out)  # what sdpo train-offline reads
    with ChatEngine(_cfg(run)) as engine:
        rows = engine.store.interactions()
        kept = [r for r in rows if not r["excluded"] and r["y"].strip()]
    assert len(records) == len(kept) == 2 and report.kept == 2
    first = records[0]
    assert first.x[-1] == {"role": "user", "content": "What is a prime number?"}
    assert first.o == "Explain it like I'm five." and first.source == "sdpo-chat"
    assert first.y == kept[0]["y"]
    assert main(["chat", "export", "--run_dir", str(run), "--output", str(out), "--include_excluded", "true"]) == 0
    assert len(load_interactions(out)[0]) == 3
    assert main(["chat", "export", "--run_dir", str(tmp_path / "none"), "--output", str(out)]) == 2


def test_export_after_undoing_the_only_interaction_says_it_is_excluded(tmp_path, capsys):
    run = tmp_path / "run"
    with ChatEngine(_cfg(run)) as engine:
        cid = engine.new_conversation()
        _say(engine, cid, "What is a prime number?")
        _say(engine, cid, "Explain it like I'm five.")
        engine.undo(1)
    out = tmp_path / "interactions.jsonl"
    assert main(["chat", "export", "--run_dir", str(run), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no interactions to export yet" not in err
    assert "1 interaction, 1 undone (excluded; --include_excluded true exports it)" in err
    assert main(["chat", "export", "--run_dir", str(run), "--output", str(out), "--include_excluded", "true"]) == 0


# ---------------------------------------------------------------------------- kill -9 and restart


CHILD = textwrap.dedent("""
    import os, sys, time, torch
    from safetensors.torch import save_file
    from sdpo.chat.config import ChatConfig
    from sdpo.chat.engine import ChatEngine
    run, marker = sys.argv[1], sys.argv[2]
    e = ChatEngine(ChatConfig(run_dir=run, model_name_or_path="tiny-random", max_new_tokens=10,
                              learning_rate=1e-3, save_every=2))
    cid = e.new_conversation()
    def say(t):
        for _ in e.send(cid, t):
            pass
    say("Hello there."); say("Shorter."); say("No, shorter."); say("Use no lists.")   # 3 updates
    save_file({n: p.detach().clone().contiguous() for n, p in e.named_params}, marker + ".weights")
    def stuck():
        open(marker, "w").close()
        time.sleep(600)
    e.optimizer.step = stuck            # the 4th update never finishes
    say("And no emojis.")
""")


def test_kill_during_update_then_restart(tmp_path):
    from safetensors.torch import load_file

    run, marker = tmp_path / "run", tmp_path / "in-update"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(marker)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if marker.exists() or child.poll() is not None:
                break
            time.sleep(0.2)
        assert marker.exists(), child.communicate()[1][-3000:]
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    expected = load_file(str(marker) + ".weights")
    with ChatEngine(_cfg(run)) as engine:
        report = engine.restored
        assert report["interrupted_updates"] == 1
        assert report["checkpoint"].endswith("checkpoint-1")  # saved after update 2 (save_every 2)
        assert report["replayed"] == 1  # update 3 came after the checkpoint: applied again from the log
        assert engine.version == 3
        for name, p in engine.named_params:
            assert torch.allclose(p, expected[name], rtol=0, atol=1e-6), name
        rows = engine.store.interactions()
        assert [r["status"] for r in rows] == ["applied", "applied", "applied", "interrupted"]
        assert "not in the weights" in rows[-1]["error"]
        turns = engine.store.turns(1)
        assert [t["role"] for t in turns] == ["user", "assistant"] * 4 + ["user"]  # nothing else is missing
        assert all(t["status"] == "complete" for t in turns)
        assert engine.messages(1)[-1]["content"] == "And no emojis."


# ---------------------------------------------------------------------------- async


def test_async_generation_never_sees_half_updated_weights(tmp_path):
    with ChatEngine(_cfg(tmp_path / "run", update_mode="async", undo_depth=0)) as engine:
        params = engine.params
        first0, last0 = params[0].detach().clone(), params[-1].detach().clone()
        seen = []

        def record(module, args):  # the weights every forward sees: how far the first and last have moved
            seen.append((round(float((params[0].detach() - first0).mean()), 3),
                         round(float((params[-1].detach() - last0).mean()), 3)))

        def slow_step():  # changes the parameters one at a time, slowly
            with torch.no_grad():
                for p in params:
                    p.add_(1.0)
                    time.sleep(0.02)

        # the check can fail: the same slow step without the lock is seen half-way
        hook = engine.model.register_forward_pre_hook(record)
        worker = threading.Thread(target=slow_step)
        worker.start()
        while worker.is_alive():
            engine.model(input_ids=torch.tensor([[1, 2, 3]]))
        assert any(a != b for a, b in seen), "the probe did not see the unguarded step half-way"
        first0, last0 = params[0].detach().clone(), params[-1].detach().clone()
        seen.clear()

        engine.optimizer.step = slow_step
        cid = engine.new_conversation()
        _say(engine, cid, "Hello.")
        info = _say(engine, cid, "Be brief.")  # queued update; this answer comes at once
        versions = [info["version"]]
        messages = engine.messages(cid)[:-1]  # up to the last user message
        while engine.pending():
            versions.append(engine.answer(messages)[2])
        versions.append(engine.answer(messages)[2])
        hook.remove()
        assert seen and all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:3]
        assert {a for a, _ in seen} <= {0.0, 1.0}
        assert versions[-1] == 1 and set(versions) <= {0, 1}
        assert engine.store.interaction(info["interaction"])["status"] == "applied"


# ---------------------------------------------------------------------------- loss modes


def test_topk_distillation_update_matches_float64_reference(tokenizer):
    from sdpo.models import tiny_random_model
    from sdpo.templates import fit_context, get_template
    from sdpo.trainers.update import UpdateExample, UpdateOptions, sdpo_update

    torch.manual_seed(0)
    model = tiny_random_model(len(tokenizer), seed=3)
    template = get_template("hindsight")
    gen = torch.Generator().manual_seed(1)
    examples = []
    for i in range(3):
        x = [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}]
        resp = torch.randint(5, len(tokenizer) - 1, (4 + 3 * i,), generator=gen).tolist()
        if i == 1:
            resp.append(tokenizer.eos_token_id)
        examples.append(UpdateExample(x, resp, ["Shorter.", "No lists.", "Use French."][i]))
    opts = UpdateOptions(loss="topk_distillation", distillation_topk=7, ignore_first_tokens=1, mask_eos_advantage=True)

    # reference: float64, written out directly
    ref_model = tiny_random_model(len(tokenizer), seed=3).double()
    total, count = 0.0, 0
    for ex in examples:
        s_ctx = fit_context(tokenizer, template, ex.messages, None)[0]
        t_ctx = fit_context(tokenizer, template, ex.messages, None, followup=ex.followup)[0]
        resp = ex.response[:-1] if ex.response[-1] == tokenizer.eos_token_id else ex.response
        with torch.no_grad():
            s_logits = ref_model(torch.tensor([s_ctx + ex.response])).logits[0, len(s_ctx) - 1: len(s_ctx) - 1 + len(resp)]
            t_logits = ref_model(torch.tensor([t_ctx + ex.response])).logits[0, len(t_ctx) - 1: len(t_ctx) - 1 + len(resp)]
        for pos in range(1, len(resp)):
            s_all = torch.log_softmax(s_logits[pos], -1)
            t_all = torch.log_softmax(t_logits[pos], -1)
            idx = torch.topk(s_all, 7).indices
            s, t = s_all[idx], t_all[idx]
            s = torch.cat([s, torch.log1p(-s.exp().sum()).reshape(1)])
            t = torch.cat([t, torch.log1p(-t.exp().sum()).reshape(1)])
            total += float((s.exp() * (s - t)).sum())
            count += 1
    expected = total / count

    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = sdpo_update(model, optimizer, tokenizer, template, examples, opts)
    assert result.loss == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert result.stats["response_tokens"] == count
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ---------------------------------------------------------------------------- simulate


def test_simulate_with_rule_user_and_rule_judge_writes_the_curve(tmp_path, capsys):
    run = tmp_path / "sim"
    assert main(["chat", "--simulate", "no_emojis", "--turns", "4", "--eval_every", "2", "--eval_n", "3",
                 "--model_name_or_path", "tiny-random", "--run_dir", str(run), "--max_new_tokens", "10",
                 "--eval_max_new_tokens", "8", "--learning_rate", "1e-3"]) == 0
    assert "winrates.png" in capsys.readouterr().out
    for name in ("winrates.png", "winrates.csv", "winrates.json", "base_answers.json"):
        assert (run / "simulate" / name).is_file(), name
    lines = (run / "simulate" / "winrates.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("name,step")
    assert [line.split(",")[1] for line in lines[1:]] == ["2", "4"]
    with ChatEngine(_cfg(run)) as engine:
        rows = engine.store.interactions()
        assert len(rows) == 4 and {r["status"] for r in rows} == {"applied"}
        assert {r["source"] for r in rows} == {"simulated"}
        assert [e["updates"] for e in engine.store.evals()] == [2, 4]


# ---------------------------------------------------------------------------- the browser


def _browser():
    from tests.system_packages import require, required

    chromium = require("chromium")  # skipped without it (a failure where SDPO_REQUIRE_SYSTEM_PACKAGES=1)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required("chromium"):
            pytest.fail("playwright is required (pip install -e .[dev])")
        pytest.skip("needs playwright (pip install -e .[dev])")
    return chromium


def _wait_for_answers(run, n, timeout=120):
    import sqlite3

    deadline = time.time() + timeout
    while time.time() < deadline:
        db = sqlite3.connect(f"file:{run / 'chat.db'}?mode=ro", uri=True)
        try:
            done = db.execute("SELECT COUNT(*) FROM turns WHERE role = 'assistant' AND status = 'complete'").fetchone()
        finally:
            db.close()
        if done[0] >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"no {n} complete answers in {run / 'chat.db'} after {timeout}s")


@pytest.mark.system_package("chromium")
def test_chat_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright
    from safetensors.torch import load_file

    from sdpo.models import load_model

    chromium = _browser()
    run, port = tmp_path / "run", _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sdpo.cli import main; sys.exit(main(sys.argv[1:]))", "chat",
         "--model_name_or_path", "tiny-random", "--run_dir", str(run), "--port", str(port), "--max_new_tokens", "12",
         "--learning_rate", "1e-3", "--save_every", "1"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in server.stdout:
            lines.append(line)
            if "open http://127.0.0.1:" in line:
                break
        assert server.poll() is None, "".join(lines)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_selector("#sdpo-input textarea", timeout=60_000)
            page.fill("#sdpo-input textarea", "Hello! What is the capital of France?")
            page.click("#sdpo-send")
            page.wait_for_function("() => document.querySelectorAll('#sdpo-chatbot .message-row.bot-row').length >= 1",
                                   timeout=120_000)
            _wait_for_answers(run, 1)  # the first answer is complete (committed) before the follow-up
            page.fill("#sdpo-input textarea", "Too long. Answer in one word.")
            page.click("#sdpo-send")
            page.wait_for_function(
                "() => /Updates applied: 1\\b/.test(document.querySelector('#sdpo-status').innerText)",
                timeout=300_000)  # generous: the machine may be busy with other jobs
            page.wait_for_selector("#sdpo-signal span.tok", timeout=60_000)
            page.wait_for_function("() => document.querySelectorAll('#sdpo-chatbot .message-row.bot-row').length >= 2",
                                   timeout=120_000)
            _wait_for_answers(run, 2)  # the second answer finished streaming (committed) before the server stops
            # the panel may be re-rendered by the second answer's update: wait until its tokens are back
            page.wait_for_function("() => document.querySelectorAll('#sdpo-signal span.tok').length > 0",
                                   timeout=60_000)
            tokens = page.query_selector_all("#sdpo-signal span.tok")
            titles = [t.get_attribute("title") for t in tokens]
            styles = [t.get_attribute("style") for t in tokens]
            colours = {page.evaluate("(e) => getComputedStyle(e).backgroundColor", t) for t in tokens}
            if os.environ.get("SDPO_CHAT_SCREENSHOT"):
                page.screenshot(path=os.environ["SDPO_CHAT_SCREENSHOT"], full_page=True)
            browser.close()
        assert tokens and all(re.match(r"[+-]\d+\.\d{4}", t) for t in titles)  # the value on hover
        assert all(s.startswith("background:rgb(") for s in styles)
        assert len(colours) > 1 and any(c != "rgb(255, 255, 255)" for c in colours)  # coloured by signal
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    with ChatEngine(_cfg(run)) as engine:
        turns = engine.store.turns(1)
        assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
        assert turns[2]["content"] == "Too long. Answer in one word." and all(t["status"] == "complete" for t in turns)
        rows = engine.store.interactions()
        assert len(rows) == 1 and rows[0]["status"] == "applied" and rows[0]["o"] == turns[2]["content"]
        assert rows[0]["y"] == turns[1]["content"] and len(rows[0]["signal_values"]) >= len(tokens)
        assert engine.version == 1
    base, _ = load_model("tiny-random", device="cpu")
    saved = load_file(str(sorted((run / "checkpoints").glob("checkpoint-*"))[-1] / "trainable.safetensors"))
    moved = [name for name, p in base.named_parameters() if not torch.equal(p, saved[name])]
    assert moved  # the weights changed


def _one_update_keeps_the_start_frozen(engine):
    """One answer, one follow-up (one update); the frozen starting copy is unchanged. Returns its weights."""
    start = [p.detach().clone() for p in engine.reference_model.parameters()]
    cid = engine.new_conversation()
    _say(engine, cid, "Tell me about the sea.")
    _say(engine, cid, "Shorter, please.")  # one update
    assert engine.version == 1
    assert all(torch.equal(a, b) for a, b in zip(start, engine.reference_model.parameters()))
    return start


def test_chat_update_with_the_options_against_collapse(tmp_path):
    """The chat takes the contrastive / selectivity / KL options (docs/online.md); the KL anchor is the
    starting weights, frozen, and an update reports the KL to them."""
    cfg = _cfg(tmp_path / "run", contrastive_followup="matched", selectivity_threshold=0.01, kl_to_start=0.1)
    with ChatEngine(cfg) as engine:
        _one_update_keeps_the_start_frozen(engine)
        assert not any(p.requires_grad for p in engine.reference_model.parameters())
    from sdpo.cli import main

    assert main(["chat", "--kl_to_start", "nan", "--run_dir", str(tmp_path / "never")]) == 2
    assert main(["chat", "--teacher", "ema", "--run_dir", str(tmp_path / "never")]) == 2


def test_chat_update_with_the_frozen_start_teacher(tmp_path):
    """--teacher start: the starting weights, frozen, score the follow-up; the policy still learns."""
    cfg = _cfg(tmp_path / "run", teacher="start")
    with ChatEngine(cfg) as engine:
        assert engine.reference_model is not None
        start = _one_update_keeps_the_start_frozen(engine)
        moved = [p for p, s in zip(engine.params, start) if not torch.equal(p.detach(), s)]
        assert moved
