"""``sdpo chat --simulate STYLE``: a headless session with a simulated user.

The same engine as the web chat (the same database, updates, checkpoints): each turn a
prompt from the prompt set is asked in a new conversation, the simulated user (one of
:mod:`sdpo.feedback.simulators`, persona ``STYLE``) answers the answer, and that
follow-up is learned from (one update). Every ``eval_every`` updates the current weights
answer held-out prompts greedily and a judge (:mod:`sdpo.judges.pairwise`, both orders,
disagreement = tie) compares them with the base model's answers; the win-rate curve goes
to ``<run_dir>/simulate/winrates.{csv,json,png}`` (the checkpoint evaluation's writer) and
the ``evals`` table.
"""

from __future__ import annotations

import json
from pathlib import Path


def _prompt_sets(cfg):
    from sdpo.data.prompts import load_prompts

    if cfg.prompts in ("tldr", "helpsteer2"):
        from sdpo.data import prompt_sources

        prepare = prompt_sources.prepare_tldr if cfg.prompts == "tldr" else prompt_sources.prepare_helpsteer2
        train, val, _ = prepare(prompt_sources.load_prompt_rows(cfg.prompts, "sample"))
    else:
        prompts = load_prompts(cfg.prompts)
        cut = max(1, len(prompts) - cfg.eval_n) if len(prompts) > 1 else len(prompts)
        train, val = prompts[:cut], prompts[cut:]
    if not train:
        raise ValueError(f"--prompts {cfg.prompts}: no prompts")
    return train, (val or train)[: cfg.eval_n]


def build_simulator(cfg, engine):
    from sdpo.feedback import simulators as sims

    if cfg.simulator == "rule":
        return sims.RuleUserSimulator(cfg.simulate)
    if cfg.simulator == "local":
        if cfg.simulator_model:
            return sims.StyleUserSimulator(cfg.simulate, model=cfg.simulator_model)
        import copy

        frozen = copy.deepcopy(engine.model).eval().requires_grad_(False)  # the user does not learn
        return sims.StyleUserSimulator(cfg.simulate, model=frozen, tokenizer=engine.tokenizer)
    cls = sims.ClaudeStyleUserSimulator if cfg.simulator == "claude" else sims.OpenAICompatibleUserSimulator
    kwargs = {"base_url": cfg.simulator_base_url}
    if cfg.simulator_model:
        kwargs["model"] = cfg.simulator_model
    return cls(cfg.simulate, **kwargs)  # the key comes from the environment, checked here


def build_judge(cfg):
    from sdpo.judges import pairwise

    if cfg.judge == "rule":
        return pairwise.RuleJudge(cfg.simulate)
    if cfg.judge == "local":
        return pairwise.LocalJudge(cfg.simulate, model=cfg.judge_model or cfg.model_name_or_path)
    from sdpo.feedback import simulators as sims

    cls = sims.ClaudeStyleUserSimulator if cfg.judge == "claude" else sims.OpenAICompatibleUserSimulator
    kwargs = {"base_url": cfg.judge_base_url, "max_tokens": 16}
    if cfg.judge_model:
        kwargs["model"] = cfg.judge_model
    return pairwise.APIJudge(cfg.simulate, client=cls(cfg.simulate, **kwargs))


def run_simulation(cfg, *, engine=None, progress: bool = True) -> list[dict]:
    """Run the session; returns the evaluation rows (one per ``eval_every`` updates)."""
    from tqdm.auto import tqdm

    from sdpo.chat.engine import ChatEngine
    from sdpo.eval.checkpoints import write_results
    from sdpo.feedback.simulators import rule_score
    from sdpo.judges.pairwise import judge_both_orders
    from sdpo.judges.stats import win_rate_summary

    train, heldout = _prompt_sets(cfg)
    judge = build_judge(cfg)  # API keys are checked before the model loads
    own = engine is None
    engine = engine or ChatEngine(cfg)
    out = Path(cfg.run_dir) / "simulate"
    out.mkdir(parents=True, exist_ok=True)
    try:
        simulator = build_simulator(cfg, engine)

        def greedy(prompts):
            return [engine.answer(p.messages, temperature=0.0, max_new_tokens=cfg.eval_max_new_tokens)[0]
                    for p in prompts]

        base_file = out / "base_answers.json"
        if base_file.is_file():
            base = json.loads(base_file.read_text())
        else:
            if engine.version:
                raise ValueError(f"--run_dir {cfg.run_dir}: its weights already hold {engine.version} update(s) and "
                                 "no base answers were saved; simulate in a new run directory")
            base = greedy(heldout)
            base_file.write_text(json.dumps(base, ensure_ascii=False))
        rows_file = out / "rows.json"  # the curve so far (a restarted session continues it)
        rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
        done = len(engine.store.interactions("source = 'simulated'"))
        bar = tqdm(total=cfg.turns, initial=min(done, cfg.turns), desc=f"simulated {cfg.simulate}", unit="turn",
                   disable=not progress)
        scores = []
        for turn in range(done, cfg.turns):
            prompt = train[turn % len(train)]
            cid = engine.new_conversation()
            got = engine.receive(cid, prompt.text)
            answer = ""
            for answer in engine.reply(cid, got["messages"]):
                pass
            scores.append(rule_score(cfg.simulate, answer))
            followup = simulator.followups([prompt.text], [answer])[0]
            got = engine.receive(cid, followup, source="simulated")
            engine.learn(got["interaction"])
            bar.update(1)
            bar.set_postfix(version=engine.version, persona=f"{sum(scores[-10:]) / len(scores[-10:]):.2f}")
            if (turn + 1) % cfg.eval_every == 0 or turn + 1 == cfg.turns:
                engine.wait_idle()
                answers = greedy(heldout)
                outcomes = judge_both_orders(judge, [p.text for p in heldout], answers, base)
                summary = win_rate_summary(outcomes)
                persona = sum(rule_score(cfg.simulate, a) for a in answers) / len(answers)
                engine.store.add_eval(updates=engine.version, turns=turn + 1, wins=summary["wins"],
                                      losses=summary["losses"], ties=summary["ties"],
                                      win_rate=_finite(summary["win_rate"]),
                                      wilson95_low=_finite(summary.get("wilson95_low")),
                                      wilson95_high=_finite(summary.get("wilson95_high")), persona_score=persona)
                rows.append({"name": f"update-{engine.version}", "step": engine.version, "turns": turn + 1,
                             "persona_score": persona, **summary})
                rows_file.write_text(json.dumps(rows, default=_finite))
                rate = summary["win_rate"]
                bar.write(f"after {turn + 1} turns ({engine.version} updates): win rate vs base "
                          f"{'-' if rate != rate else f'{100 * rate:.1f}%'} ({summary['wins']} W / "
                          f"{summary['losses']} L / {summary['ties']} T), persona rule score {persona:.2f}")
        bar.close()
        if rows:
            meta = {"baseline": f"{cfg.model_name_or_path} (base weights)", "judge": cfg.judge,
                    "judge_model": cfg.judge_model, "style": cfg.simulate, "eval_n": len(heldout),
                    "simulator": cfg.simulator, "turns": cfg.turns, "loss": cfg.loss, "update_mode": cfg.update_mode}
            write_results(rows, out, meta)
            print(f"wrote {out}/winrates.csv, winrates.json, winrates.png; database {Path(cfg.run_dir) / 'chat.db'}")
        return rows
    finally:
        if own:
            engine.close()


def _finite(x):
    return None if x is None or x != x else float(x)
