"""Checkpoint evaluation: pairwise win rate of each checkpoint against a baseline.

For each checkpoint and the baseline: greedy answers to the same held-out prompts
(fixed seed, prompts cut from the left to a token limit), cached on disk keyed by the
model and the prompt, so a re-run or a new judge does not regenerate. Each pair is
judged in both orders (:func:`sdpo.judges.pairwise.judge_both_orders`); the judge's
replies are cached too (``judgments/``), so a re-run resumes judging and asks again
only for what is missing or failed. Result files hold ``null`` where a rate is
undefined (no decisive pair), never ``NaN``.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from sdpo.data.io import write_jsonl
from sdpo.data.prompts import load_prompts
from sdpo.judges.pairwise import judge_both_orders
from sdpo.judges.stats import json_safe, win_rate_summary


PERSONA_SYSTEM_PREFIX = "The user you are interacting with has the following persona:\n"  # the oracle's


def _key(model_id: str, prompt: str, max_new_tokens: int) -> str:
    return hashlib.sha1(json.dumps([model_id, prompt, max_new_tokens]).encode()).hexdigest()


class GenerationCache:
    """``<dir>/<sha1(model)>.jsonl``: one line per (prompt, answer)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, model_id: str) -> Path:
        return self.dir / (hashlib.sha1(model_id.encode()).hexdigest()[:16] + ".jsonl")

    def load(self, model_id: str) -> dict[str, str]:
        path = self._path(model_id)
        if not path.is_file():
            return {}
        return {row["key"]: row["answer"] for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}

    def save(self, model_id: str, rows: dict[str, str]) -> None:
        write_jsonl(({"key": k, "answer": v, "model": model_id} for k, v in rows.items()), self._path(model_id))


def answers_for(model_id: str, prompts, cache: GenerationCache, *, max_new_tokens: int, max_prompt_tokens: int,
                system_prompt: str | None = None, persona: str | None = None, loader=None,
                state=None, label: str | None = None, backend: str = "transformers") -> list[str]:
    """Greedy answers, from the cache where present; the model is loaded only if something is missing.

    With a ``label`` the main process prints one line saying what is generated (or cached)
    and shows a progress bar while generating. ``backend`` is the generation engine
    (:mod:`sdpo.engines`); answers from another engine than transformers are cached apart.

    With an accelerate ``state`` of several processes, each process generates its share
    of the missing answers; all shares are gathered and the main process writes the cache.
    """
    cached = cache.load(model_id)
    engine_tag = "" if backend == "transformers" else f"@{backend}"  # greedy answers may differ between engines
    keys = [_key(model_id + (system_prompt or "") + (persona or "") + engine_tag, p.text, max_new_tokens)
            for p in prompts]
    missing = [i for i, k in enumerate(keys) if k not in cached]
    world = state.num_processes if state is not None else 1
    mine = missing[state.process_index :: world] if world > 1 else missing
    produced: dict[str, str] = {}
    main = state is None or state.is_main_process
    if label and main:
        done = len(prompts) - len(missing)
        print(f"{label}: {len(prompts)} answers from the cache" if not missing else
              f"{label}: generating {len(missing)} of {len(prompts)} answers" + (f" ({done} cached)" if done else "")
              + (f" on {world} processes" if world > 1 else ""), flush=True)
    if mine:
        import dataclasses

        from sdpo.engines import TransformersEngine, open_engine
        from sdpo.templates import fit_context, get_template

        device = str(state.device) if state is not None else "auto"
        if loader is not None:
            model, tok = loader(model_id)
            engine = TransformersEngine(model.eval(), tok, batch_size=8)
        else:
            engine = open_engine(backend, model_id, device=device)
            tok = engine.tokenizer
        template = get_template(system_prompt=system_prompt)  # a preset (tldr, general) or the text
        if persona:  # the oracle: the persona added to the task's system prompt, as the reference
            task = template.system_prompt
            template = dataclasses.replace(
                template, system_prompt=(task + "\n" if task else "")
                + PERSONA_SYSTEM_PREFIX + persona)
        from sdpo.progress import progress_bar

        bar = progress_bar(total=len(mine), desc=f"generate {label or model_id}"[:60], unit="answer",
                   disable=not (label and main))
        for start in range(0, len(mine), 8):
            chunk = mine[start : start + 8]
            ctx = [fit_context(tok, template, prompts[i].messages, max_prompt_tokens)[0] for i in chunk]
            _, texts = engine.generate_texts(ctx, max_new_tokens=max_new_tokens, temperature=0.0)
            for i, text in zip(chunk, texts):
                produced[keys[i]] = text
            bar.update(len(chunk))
        bar.close()
    if world > 1:
        from accelerate.utils import gather_object

        for part in gather_object([produced]):
            cached.update(part)
    else:
        cached.update(produced)
    if missing and (state is None or state.is_main_process):
        cache.save(model_id, cached)
    if state is not None:
        state.wait_for_everyone()
    return [cached[k] for k in keys]


def select_prompts(path: str, n: int, seed: int):
    prompts = load_prompts(path)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in order[:n]]


def find_checkpoints(run_dir: str, steps: list[int] | None) -> list[tuple[str, Path]]:
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    from sdpo.rundir import checkpoint_step, complete_checkpoints

    # complete checkpoints only (trainer_state.json written last); an interrupted write is skipped with a warning
    found = {checkpoint_step(p): p for p in complete_checkpoints(run)}
    if not found:
        raise FileNotFoundError(f"no complete checkpoint-<step> directories (with trainer_state.json) in {run_dir}")
    if steps:
        missing = [s for s in steps if s not in found]
        if missing:
            raise FileNotFoundError(f"{run_dir}: no checkpoint for step(s) {missing}; found {sorted(found)}")
        return [(f"checkpoint-{s}", found[s]) for s in steps]
    return [(f"checkpoint-{s}", found[s]) for s in sorted(found)]


def evaluate(checkpoints, baseline: str, prompts, judge, cache: GenerationCache, *, max_new_tokens=256,
             max_prompt_tokens=1024, oracle_style: str | None = None, loader=None, state=None,
             judgments_dir: str | Path | None = None, system_prompt: str | None = None,
             backend: str = "transformers") -> list[dict] | None:
    """Win-rate rows (on the main process; other processes only help generate and get None).

    With ``judgments_dir`` the judge's replies are cached there (see :meth:`Judge.use_cache`).
    """
    texts = [p.text for p in prompts]
    if judge is not None and judgments_dir is not None and getattr(judge, "cache", None) is None:
        judge.use_cache(judgments_dir)
    from sdpo.models import ModelLoadError
    from sdpo.progress import progress_bar

    def answers(model_id, label, option, persona=None):
        try:
            return answers_for(model_id, prompts, cache, max_new_tokens=max_new_tokens,
                               max_prompt_tokens=max_prompt_tokens, system_prompt=system_prompt, persona=persona,
                               loader=loader, state=state, label=label, backend=backend)
        except ModelLoadError as err:  # say which model failed: --baseline and --judge_model may name the same id
            raise ModelLoadError(f"{option}: {err}") from None

    base = answers(baseline, f"baseline {baseline}", "--baseline")
    main = state is None or state.is_main_process
    rows = []
    entries = [(name, str(path), None) for name, path in checkpoints]
    if oracle_style:
        from sdpo.feedback.personas import persona_description

        entries.append(("oracle (persona in system prompt)", baseline, persona_description(oracle_style)))
    for name, model_id, persona in entries:
        option = "--baseline (oracle)" if persona else f"{name} ({model_id})"
        candidate = answers(model_id, name, option, persona)
        if not main:
            continue
        outcomes = []
        chunk = max(1, int(getattr(judge, "chunk_size", 64)))  # the bar moves per chunk of pairs, both orders
        with progress_bar(total=len(texts), desc=f"judge {name}"[:60], unit="pair") as bar:
            for start in range(0, len(texts), chunk):
                part = slice(start, start + chunk)
                outcomes += judge_both_orders(judge, texts[part], candidate[part], base[part])
                bar.update(len(outcomes) - bar.n)
        step = int(name.split("-")[1]) if name.startswith("checkpoint-") else None
        from sdpo.degeneracy import degeneracy_rate

        rows.append({"name": name, "step": step, "model": model_id, **win_rate_summary(outcomes),
                     "nonanswer_rate": degeneracy_rate(texts, candidate),
                     "baseline_nonanswer_rate": degeneracy_rate(texts, base)})
    return rows if main else None


def write_results(rows: list[dict], out_dir: Path, meta: dict) -> None:
    import csv

    out_dir.mkdir(parents=True, exist_ok=True)
    safe_rows = json_safe(rows)  # an undefined rate (no decisive pair) is null / an empty cell, never NaN
    (out_dir / "winrates.json").write_text(json.dumps(json_safe({**meta, "results": rows}), indent=1,
                                                      allow_nan=False))
    with (out_dir / "winrates.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(safe_rows)
    fig = plot_winrates(rows, meta)
    fig.savefig(out_dir / "winrates.png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _n_label(r: dict) -> str:
    """``W/L/T`` with the number of decisive pairs: the ties stay visible next to every rate."""
    n = r["decisive"] if r.get("decisive") is not None else r["wins"] + r["losses"]
    return f"{r['wins']}W/{r['losses']}L/{r.get('ties', 0)}T (n={n})"


def plot_winrates(rows: list[dict], meta: dict):
    """The win-rate figure (a matplotlib ``Figure``): each checkpoint's rate with its 95 % Wilson
    interval and its number of decisive pairs (n); the oracle as a line with a band. The y-axis
    runs from -5 % to 105 % so that rates of 0 % and 100 % stay visible; with no decisive pair
    anywhere the panel says so instead of drawing an empty plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def defined(r):
        return r["win_rate"] is not None and r["win_rate"] == r["win_rate"]  # not None / NaN

    ckpts = [r for r in rows if r["step"] is not None]
    others = [r for r in rows if r["step"] is None]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    shown = [r for r in ckpts if defined(r)]
    if shown:
        xs = [r["step"] for r in shown]
        ys = [100 * r["win_rate"] for r in shown]
        lows = [100 * (r["win_rate"] - r["wilson95_low"]) for r in shown]
        highs = [100 * (r["wilson95_high"] - r["win_rate"]) for r in shown]
        ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=4, color="tab:blue",
                    label="checkpoint vs baseline (95% Wilson interval)")
        for x, y, r in zip(xs, ys, shown):
            ax.annotate(_n_label(r), (x, y), textcoords="offset points", xytext=(6, -12 if y > 90 else 6), fontsize=7,
                        color="tab:blue")
    for r in ckpts:
        if not defined(r):  # every pair tied (or failed): no rate to draw
            ax.text(r["step"], -2.5, f"n=0 ({r.get('ties', 0)} ties)", ha="center", va="center", fontsize=7,
                    color="grey")
    for r in others:
        if not defined(r):
            continue
        rate = 100 * r["win_rate"]
        ax.axhspan(100 * r["wilson95_low"], 100 * r["wilson95_high"], color="tab:green", alpha=0.12, linewidth=0)
        ax.axhline(rate, color="tab:green", linestyle=":", linewidth=2, marker="D", clip_on=False,
                   label=f"{r['name']}: {rate:.0f}% ({_n_label(r)})")
    if not any(defined(r) for r in rows):
        ax.text(0.5, 0.5, "no decisive pairs\n(every pair tied, unparsed or failed: no win rate to show)",
                transform=ax.transAxes, ha="center", va="center", fontsize=11, color="dimgrey",
                bbox={"facecolor": "white", "edgecolor": "lightgrey"})
    ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="50%")
    steps = sorted({r["step"] for r in ckpts})
    if steps:
        pad = max(1.0, 0.08 * (steps[-1] - steps[0]))
        ax.set_xlim(steps[0] - pad, steps[-1] + pad)
        if len(steps) <= 15:
            ax.set_xticks(steps)
    else:
        ax.set_xticks([])
    ax.set_ylim(-5, 105)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("training step")
    ax.set_ylabel("win rate, % of decisive pairs\n(ties excluded)")
    n = meta.get("eval_n")
    ax.set_title(f"win rate vs {meta['baseline']} ({meta['judge']} judge, style {meta['style']}"
                 + (f", {n} prompts, both orders)" if n else ")"), fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.tight_layout()
    return fig
