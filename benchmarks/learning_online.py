"""Does online SDPO from user follow-ups improve held-out answers, without collapsing?

A fresh copy of the model trains online (``OnlineSDPOTrainer``, rule-based simulated user
of one persona) on training prompts, then answers held-out prompts it never saw, greedily.
Each answer is compared with the base model's answer to the same prompt:

* the fixed rule judge, both orders (``sdpo.judges.pairwise.RuleJudge``: a non-answer loses
  to an answer, then the persona's rules decide): wins / losses / ties, a sign test, and the
  win rate with its Wilson interval;
* the persona metric (share of answers that pass the persona's rule checks) and a paired
  exact McNemar test against the base model;
* words per answer and the non-answer rate (``sdpo.degeneracy``: apology/filler, loops,
  empty, off topic).

Variants (``--variants``, comma-separated):
  reference       the reference's signal: log p(y|x,o) - log p(y|x), centred per response
  contrastive     --contrastive_followup matched: log p(y|x,o) - log p(y|x,o0)
  complaint       --contrastive_followup complaint (o0 = a generic complaint for every follow-up)
  neutral         --contrastive_followup neutral (o0 = "Okay.")
  select          the reference signal with --selectivity_threshold 0.5 (o0 matched)
  kl              the reference signal + --kl_to_start 0.1
  contrastive+kl  contrastive and kl together
  frozen          the reference signal scored by the frozen starting weights (--teacher start)
  neutral+frozen  neutral and frozen together
  oracle          no training: the persona in the system prompt

Prompts: ``benchmarks/data/everyday_prompts.jsonl`` (302 everyday requests written for this
benchmark): the first ``--eval-size`` (default 200) are held out, training draws from the rest.
The personas (``--personas``; default: the 3 rule-checkable personas the base model violates
most on the held-out answers, from a fixed candidate list) are chosen before any training.

Each (persona, variant, seed) writes ``<out-dir>/runs/<persona>__<variant>__s<seed>.json``; a
re-run skips finished ones (resumable, one command per variant works too). The aggregate is
printed as one JSON line and written to ``<out-dir>/learning-online.json`` with a PNG.

    python benchmarks/learning_online.py --variants reference,contrastive --seeds 0,1 --steps 12
    python benchmarks/learning_online.py --model tiny-random --eval-size 4 --steps 1 --variants reference \\
        --personas concise_casual_beginner --seeds 0 --curve-every 1 --max-new-tokens 8   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "data" / "everyday_prompts.jsonl"
CANDIDATE_PERSONAS = ("concise_casual_beginner", "no_first_person", "exclamation", "no_lists", "more_lists",
                      "committing", "formatting", "concise_professional_expert", "no_filler_followup")
VARIANTS = {
    "reference": {},
    "contrastive": {"contrastive_followup": "matched"},
    "complaint": {"contrastive_followup": "complaint"},
    "neutral": {"contrastive_followup": "neutral"},
    "select": {"selectivity_threshold": 0.5},
    "kl": {"kl_to_start": 0.1},
    "contrastive+kl": {"contrastive_followup": "matched", "kl_to_start": 0.1},
    "frozen": {"teacher": "start"},
    "neutral+frozen": {"contrastive_followup": "neutral", "teacher": "start"},
    "oracle": None,
}


def mcnemar_p(up: int, down: int) -> float:
    from sdpo.judges.stats import sign_test_p

    return sign_test_p(up, down)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model alias / path ('tiny-random' for tests)")
    p.add_argument("--variants", default="reference,contrastive,contrastive+kl,oracle", help=", ".join(VARIANTS))
    p.add_argument("--personas", default="auto", help="comma-separated, or 'auto' (the 3 most violated)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=4, help="prompts (interactions) per step")
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--max-new-tokens", type=int, default=128, help="training and evaluation answers")
    p.add_argument("--eval-size", type=int, default=200, help="held-out prompts")
    p.add_argument("--curve-every", type=int, default=4, help="evaluate on --curve-size prompts every N steps")
    p.add_argument("--curve-size", type=int, default=48)
    p.add_argument("--eval-batch", type=int, default=50)
    p.add_argument("--out-dir", default="benchmarks/results/learning-online")
    p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table/PNG from finished runs")
    p.add_argument("--markdown", action="store_true", help="also print the table for RESULTS.md")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"--variants: unknown {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for name in ("steps", "batch_size", "max_new_tokens", "eval_size", "curve_every", "curve_size", "eval_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_split(eval_size: int):
    from sdpo.data.prompts import load_prompts

    prompts = load_prompts(PROMPTS)
    if eval_size >= len(prompts) - 8:
        raise SystemExit(f"learning_online.py: error: --eval-size {eval_size} leaves too few training prompts "
                         f"of {len(prompts)}")
    return prompts[:eval_size], prompts[eval_size:]


def greedy_answers(model, tokenizer, template, prompts, *, max_new_tokens, batch):
    import torch

    from sdpo.templates import fit_context
    from sdpo.trainers.online import generate

    texts = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            ctx = [fit_context(tokenizer, template, p.messages, 2048)[0] for p in prompts[start:start + batch]]
            texts += generate(model, tokenizer, ctx, max_new_tokens=max_new_tokens, temperature=0.0, device=device)[1]
    model.train(was_training)
    return texts


def score(persona, prompts, answers, base):
    """Metrics of ``answers`` and paired comparisons with ``base`` (same prompts)."""
    from sdpo.degeneracy import degeneracy_breakdown, degeneracy_rate
    from sdpo.feedback.simulators import rule_score
    from sdpo.judges.pairwise import RuleJudge, judge_both_orders
    from sdpo.judges.stats import sign_test_p, wilson_interval

    texts = [p.text for p in prompts]
    ok = [rule_score(persona, a) > 0 for a in answers]
    ok_base = [rule_score(persona, a) > 0 for a in base]
    up = sum(1 for x, y in zip(ok_base, ok) if not x and y)
    down = sum(1 for x, y in zip(ok_base, ok) if x and not y)
    out = {
        "n": len(answers),
        "persona_score": sum(ok) / len(ok),
        "persona_gained": up, "persona_lost": down, "persona_p": mcnemar_p(up, down),
        "words": sum(len(a.split()) for a in answers) / len(answers),
        "nonanswer_rate": degeneracy_rate(texts, answers),
        "nonanswers": degeneracy_breakdown(texts, answers),
        "changed": sum(a != b for a, b in zip(answers, base)),
    }
    outcomes = judge_both_orders(RuleJudge(persona), texts, answers, base)
    w, l = outcomes.count("win"), outcomes.count("loss")
    lo, hi = wilson_interval(w, w + l)
    out.update(judge_wins=w, judge_losses=l, judge_ties=len(outcomes) - w - l, judge_p=sign_test_p(w, l),
               win_rate=w / (w + l) if w + l else None, win_low=lo if w + l else None, win_high=hi if w + l else None)
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out_dir)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self.heldout, self.train = load_split(args.eval_size)
        self._base_model = None

    def base_model(self):
        from sdpo.models import load_model

        if self._base_model is None:
            self._base_model = load_model(self.args.model, dtype="float32", device="cpu")
        return self._base_model

    def fresh_model(self):
        import copy

        model, tok = self.base_model()
        return copy.deepcopy(model), tok

    def base_answers(self):
        """Greedy base answers on the held-out prompts (shared by every persona and variant; cached)."""
        from sdpo.templates import DEFAULT_TEMPLATE, get_template

        path = self.out / f"base__{self._tag()}.json"
        if path.is_file():
            return json.loads(path.read_text())["answers"]
        model, tok = self.base_model()
        template = get_template(DEFAULT_TEMPLATE, system_prompt="general")
        t0 = time.perf_counter()
        answers = greedy_answers(model, tok, template, self.heldout, max_new_tokens=self.args.max_new_tokens,
                                 batch=self.args.eval_batch)
        path.write_text(json.dumps({"answers": answers, "seconds": time.perf_counter() - t0}, ensure_ascii=False))
        return answers

    def _tag(self):
        a = self.args
        return f"{a.model.replace('/', '_')}_n{a.eval_size}_t{a.max_new_tokens}"

    def personas(self, base):
        from sdpo.feedback.simulators import rule_checkable, rule_score

        if self.args.personas != "auto":
            return [p.strip() for p in self.args.personas.split(",") if p.strip()]
        scores = {p: sum(rule_score(p, a) for a in base) / len(base) for p in CANDIDATE_PERSONAS if rule_checkable(p)}
        chosen = sorted(scores, key=lambda p: (scores[p], p))[:3]
        print(f"base persona scores on {len(base)} held-out answers: "
              + ", ".join(f"{p} {s:.2f}" for p, s in sorted(scores.items(), key=lambda kv: kv[1]))
              + f"; chosen: {', '.join(chosen)}", flush=True)
        (self.out / "personas.json").write_text(json.dumps({"scores": scores, "chosen": chosen}, indent=1))
        return chosen

    def run(self, persona, variant, seed, base):
        path = self.out / "runs" / f"{persona}__{variant}__s{seed}.json"
        if path.is_file():
            return json.loads(path.read_text())
        a = self.args
        t0 = time.perf_counter()
        if VARIANTS[variant] is None:  # the in-context oracle: persona in the system prompt, no training
            done = list((self.out / "runs").glob(f"{persona}__oracle__s*.json"))
            if done:  # greedy and untrained: one seed says it all
                return json.loads(done[0].read_text())
            from sdpo.eval.checkpoints import PERSONA_SYSTEM_PREFIX
            from sdpo.feedback.personas import persona_description
            from sdpo.templates import DEFAULT_TEMPLATE, get_template

            model, tok = self.base_model()
            template = get_template(DEFAULT_TEMPLATE,
                                    system_prompt=PERSONA_SYSTEM_PREFIX + persona_description(persona))
            answers = greedy_answers(model, tok, template, self.heldout, max_new_tokens=a.max_new_tokens,
                                     batch=a.eval_batch)
            row = {"persona": persona, "variant": variant, "seed": seed, "steps": 0, "curve": [],
                   "final": score(persona, self.heldout, answers, base), "examples": self._examples(answers, base)}
        else:
            row = self._train(persona, variant, seed, base)
        row["seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(row, indent=1, ensure_ascii=False))
        f = row["final"]
        print(f"{persona} {variant} s{seed}: persona {f['persona_score']:.3f} (base {row.get('base_persona', 0):.3f}), "
              f"judge {f['judge_wins']}W/{f['judge_losses']}L/{f['judge_ties']}T p={f['judge_p']:.3g}, "
              f"non-answers {f['nonanswer_rate']:.3f}, words {f['words']:.1f}, {row['seconds']:.0f}s", flush=True)
        return row

    def _examples(self, answers, base, k=3):
        return [{"prompt": p.text, "base": b, "after": x} for p, b, x in zip(self.heldout[:k], base, answers)]

    def _train(self, persona, variant, seed, base):
        from sdpo.trainers.online import OnlineSDPOConfig, OnlineSDPOTrainer

        a = self.args
        model, tok = self.fresh_model()
        with tempfile.TemporaryDirectory(prefix="learning-online-") as tmp:
            cfg = OnlineSDPOConfig(
                model_name_or_path=a.model, simulator="rule", style=persona, system_prompt="general",
                max_steps=a.steps, per_device_train_batch_size=a.batch_size, max_new_tokens=a.max_new_tokens,
                learning_rate=a.learning_rate, summary_prompts=0, report_to="none", progress=False,
                save_steps=10**9, seed=seed, output_dir=tmp, max_train_prompts=0, dtype="float32",
                **VARIANTS[variant])
            trainer = OnlineSDPOTrainer(cfg, model=model, tokenizer=tok, prompts=self.train)
            trainer.save_checkpoint = lambda: None  # the benchmark keeps no weights
            history, curve = [], []
            out = Path(tmp)
            curve_prompts = self.heldout[: a.curve_size]
            while trainer.step < trainer.max_steps:
                trainer._one_step(history, out, None, None)
                if trainer.step % a.curve_every == 0 and trainer.step < trainer.max_steps:
                    answers = greedy_answers(trainer.model, tok, trainer.template, curve_prompts,
                                             max_new_tokens=a.max_new_tokens, batch=a.eval_batch)
                    curve.append({"step": trainer.step,
                                  **score(persona, curve_prompts, answers, base[: len(curve_prompts)])})
            answers = greedy_answers(trainer.model, tok, trainer.template, self.heldout,
                                     max_new_tokens=a.max_new_tokens, batch=a.eval_batch)
        from sdpo.feedback.simulators import rule_score

        final = score(persona, self.heldout, answers, base)
        curve.append({"step": a.steps, **{k: v for k, v in final.items() if k != "nonanswers"}})
        keys = ("persona_rule_score", "nonanswer_rate", "filler_advantage_share", "signal_abs_mean",
                "advantage_abs_mean", "response_tokens_mean", "kl")
        return {"persona": persona, "variant": variant, "seed": seed, "steps": a.steps,
                "base_persona": sum(rule_score(persona, b) for b in base) / len(base),
                "train_metrics": [{k: h[k] for k in keys if k in h} for h in history],
                "curve": curve, "final": final, "examples": self._examples(answers, base)}


def aggregate(out: Path, seeds, variants) -> dict:
    from sdpo.judges.stats import sign_test_p, wilson_interval

    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    table = {}
    for r in rows:
        if r["variant"] not in variants:
            continue
        table.setdefault((r["persona"], r["variant"]), []).append(r)
    summary = []
    for (persona, variant), runs in sorted(table.items()):
        if variant == "oracle":  # untrained and greedy: every seed's file is the same run; count it once
            runs = sorted(runs, key=lambda r: r["seed"])[:1]
        f = [r["final"] for r in runs]
        w, l, t = (sum(x[k] for x in f) for k in ("judge_wins", "judge_losses", "judge_ties"))
        up, down = sum(x["persona_gained"] for x in f), sum(x["persona_lost"] for x in f)
        lo, hi = wilson_interval(w, w + l)
        per_seed_sig = [x["judge_p"] < 0.05 and x["judge_wins"] > x["judge_losses"] for x in f]
        summary.append({
            "persona": persona, "variant": variant, "seeds": [r["seed"] for r in runs], "n_per_seed": f[0]["n"],
            "wins": w, "losses": l, "ties": t, "win_rate": w / (w + l) if w + l else None,
            "win_low": lo if w + l else None, "win_high": hi if w + l else None, "judge_p_pooled": sign_test_p(w, l),
            "significant_win_every_seed": all(per_seed_sig) and len(f) >= (1 if variant == "oracle" else 2),
            "persona_score": sum(x["persona_score"] for x in f) / len(f),
            "base_persona": runs[0].get("base_persona"),
            "persona_gained": up, "persona_lost": down, "persona_p_pooled": sign_test_p(up, down),
            "nonanswer_rate": sum(x["nonanswer_rate"] for x in f) / len(f),
            "words": sum(x["words"] for x in f) / len(f),
        })
    per_seed = [{"persona": r["persona"], "variant": r["variant"], "seed": r["seed"], "wins": r["final"]["judge_wins"],
                 "losses": r["final"]["judge_losses"], "ties": r["final"]["judge_ties"], "p": r["final"]["judge_p"],
                 "persona_score": r["final"]["persona_score"], "nonanswer_rate": r["final"]["nonanswer_rate"],
                 "words": r["final"]["words"]}
                for r in sorted(rows, key=lambda r: (r["persona"], r["variant"], r["seed"]))
                if r["variant"] in variants and r["variant"] != "oracle"]
    return {"runs": len(rows), "table": summary, "per_seed": per_seed}


def bar_summary(table) -> dict:
    """Issue 25's bar per variant: a significant win on every seed (>= 2 seeds) for >= 2 personas without the
    non-answer rate rising by more than 2 points over the base model's (rows carry ``base`` by then)."""
    bar: dict[str, list] = {}
    for row in table:
        if row["variant"] == "oracle":
            continue
        base_na = (row.get("base") or {}).get("nonanswer_rate")
        ok = (row["significant_win_every_seed"] and base_na is not None
              and row["nonanswer_rate"] <= base_na + 0.02 + 1e-9)
        bar.setdefault(row["variant"], [])
        if ok:
            bar[row["variant"]].append(row["persona"])
    return {v: {"personas_won_every_seed": p, "meets_bar": len(p) >= 2} for v, p in bar.items()}


def markdown(result: dict) -> str:
    """The table for benchmarks/RESULTS.md: one row per (persona, variant), seeds pooled."""
    head = ("| persona | variant | seeds | judge vs base: W / L / T | win rate (95 %) | sign p | persona score: "
            "base → after | McNemar p | non-answers: base → after | words: base → after |")
    lines = [head, "|" + "---|" * 10]
    for r in result["table"]:
        b = r.get("base") or {}
        rate = "-" if r["win_rate"] is None else (f"{100 * r['win_rate']:.0f} % "
                                                  f"({100 * r['win_low']:.0f}–{100 * r['win_high']:.0f})")
        lines.append(
            f"| {r['persona']} | {r['variant']} | {','.join(map(str, r['seeds']))} | {r['wins']} / {r['losses']} / "
            f"{r['ties']} | {rate} | {r['judge_p_pooled']:.2g} | {b.get('persona_score', float('nan')):.3f} → "
            f"{r['persona_score']:.3f} | {r['persona_p_pooled']:.2g} | {b.get('nonanswer_rate', float('nan')):.3f} → "
            f"{r['nonanswer_rate']:.3f} | {b.get('words', float('nan')):.0f} → {r['words']:.0f} |")
    if result.get("bar"):
        lines += ["", "Issue 25's bar (a significant win on every seed for >= 2 of 3 personas, non-answers up <= 2 "
                  "points): " + "; ".join(f"{v}: {', '.join(b['personas_won_every_seed']) or 'none'}"
                                          + (" (met)" if b["meets_bar"] else "")
                                          for v, b in result["bar"].items())]
    lines += ["", "Per seed:", "", "| persona | variant | seed | judge W / L / T | sign p | persona score | non-answers "
              "| words |", "|" + "---|" * 8]
    for r in result.get("per_seed", []):
        lines.append(f"| {r['persona']} | {r['variant']} | {r['seed']} | {r['wins']} / {r['losses']} / {r['ties']} | "
                     f"{r['p']:.2g} | {r['persona_score']:.3f} | {r['nonanswer_rate']:.3f} | {r['words']:.0f} |")
    return "\n".join(lines)


def base_row(out: Path, persona: str, tag: str):
    from sdpo.degeneracy import degeneracy_rate
    from sdpo.feedback.simulators import rule_score

    path = out / f"base__{tag}.json"
    if not path.is_file():
        return None
    answers = json.loads(path.read_text())["answers"]
    heldout, _ = load_split(len(answers))
    return {"persona_score": sum(rule_score(persona, x) for x in answers) / len(answers),
            "nonanswer_rate": degeneracy_rate([p.text for p in heldout], answers),
            "words": sum(len(x.split()) for x in answers) / len(answers)}


def plot(out: Path, variants):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    personas = sorted({r["persona"] for r in rows})
    if not personas:
        return None
    from sdpo.degeneracy import degeneracy_rate

    bases = sorted(out.glob("base__*.json"))  # step 0: the base model's held-out non-answer rate
    base_nonanswer = float("nan")
    if bases:
        answers = json.loads(bases[0].read_text())["answers"]
        base_nonanswer = degeneracy_rate([p.text for p in load_split(len(answers))[0]], answers)
    fig, axes = plt.subplots(2, len(personas), figsize=(4.6 * len(personas), 7), squeeze=False)
    colours = {v: c for v, c in zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2)}
    for j, persona in enumerate(personas):
        for r in rows:
            if r["persona"] != persona or r["variant"] not in variants:
                continue
            style = "-" if r["seed"] == min(x["seed"] for x in rows) else "--"
            label = f"{r['variant']} s{r['seed']}"
            base = r.get("base_persona")
            pts = [(0, base)] + [(c["step"], c["persona_score"]) for c in r["curve"]] if base is not None else []
            if r["variant"] == "oracle":
                axes[0, j].axhline(r["final"]["persona_score"], color=colours["oracle"], ls=":", label="oracle")
                continue
            axes[0, j].plot([p[0] for p in pts], [p[1] for p in pts], style, color=colours[r["variant"]],
                            label=label, marker="o", ms=3)
            pts = [(0, base_nonanswer)] + [(c["step"], c["nonanswer_rate"]) for c in r["curve"]]
            axes[1, j].plot([p[0] for p in pts], [p[1] for p in pts], style, color=colours[r["variant"]],
                            label=label, marker="o", ms=3)
        axes[0, j].set_title(persona)
        axes[0, j].set_ylabel("persona score (held-out, greedy)")
        axes[1, j].set_ylabel("non-answer rate (held-out)")
        axes[1, j].set_xlabel("optimizer step (4 interactions each)")
        # the scores here are small: a 0..1 axis would show flat lines
        for row, floor in ((0, 0.15), (1, 0.5)):
            top = max([floor] + [y for line in axes[row, j].get_lines() for y in line.get_ydata()
                                 if y == y])  # NaN-safe
            axes[row, j].set_ylim(-0.01, min(1.02, 1.1 * top))
    handles, labels = axes[0, -1].get_legend_handles_labels()
    for ax in axes.flat:  # one legend for all panels, beside them
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle("online SDPO on the embedded model: held-out persona score and non-answers (curves: first "
                 "48 prompts; last point: all held-out)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.88, 0.97))
    fig.savefig(out / "learning-online.png", dpi=100)
    return out / "learning-online.png"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.manual_seed(0)
    bench = Bench(args)
    started = time.perf_counter()
    if not args.aggregate_only:
        base = bench.base_answers()
        personas = bench.personas(base)
        for seed in args.seeds:
            for persona in personas:
                for variant in args.variants:
                    bench.run(persona, variant, seed, base)
    result = aggregate(bench.out, args.seeds, args.variants)
    for row in result["table"]:
        row["base"] = base_row(bench.out, row["persona"], bench._tag())
    result["bar"] = bar_summary(result["table"])
    result.update(machine=platform.processor() or platform.machine(), python=sys.version.split()[0],
                  date=time.strftime("%Y-%m-%d"), command=" ".join(["python", "benchmarks/learning_online.py"]
                                                                   + (argv if argv is not None else sys.argv[1:])),
                  seconds=time.perf_counter() - started, png=str(plot(bench.out, args.variants)))
    (bench.out / "learning-online.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    if args.markdown:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
