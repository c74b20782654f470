"""Signal analysis: score cases under a relevant and an unrelated follow-up, measure
selectivity, and write plots and a browsable report.

A working teacher reacts to a relevant follow-up (a complaint or request about the
response) and barely to an unrelated one (a new topic). Selectivity is

    mean |A_t| under the relevant follow-up / mean |A_t| under the unrelated one,

per case and overall (pooled over all tokens of all cases). Above 1 means the
signal is about the feedback rather than about any change of context.
"""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path
from typing import Sequence

from sdpo.data.cases import CasesError, SignalCase

FULL_COLOUR_NATS = 2.0
"""|signal| in nats that gets the full colour, everywhere: the terminal (``sdpo signal``), the HTML report,
the token images and the heatmaps, so one colour means one value wherever it is seen."""


def display_units(tokens: Sequence[str], values: Sequence[float]) -> list[tuple[str, float, list[float]]]:
    """Tokens merged for display: ``(text, value, the tokens' own values)``.

    A character whose bytes span several tokens (emoji, CJK in byte-level BPE) has its text on
    the token that completes it and empty strings on the tokens before (see
    :func:`sdpo.signal.token_strings`); here those tokens join the completing one, whose value
    is the sum (the log-ratio of the whole character). Other tokens stay as they are.
    """
    units: list[tuple[str, float, list[float]]] = []
    pending: list[float] = []
    for tok, value in zip(tokens, values):
        pending.append(float(value))
        if tok == "" and len(pending) < 8:
            continue
        units.append((tok, sum(pending), pending))
        pending = []
    if pending:  # empty tokens at the very end
        units.append(("", sum(pending), pending))
    return units


def extremes(tokens: Sequence[str], values: Sequence[float], k: int = 5):
    """The ``k`` most discouraged (negative only) and most encouraged (positive only) display units."""
    units = [(text, value) for text, value, _ in display_units(tokens, values)]
    low = sorted((u for u in units if u[1] < 0), key=lambda u: u[1])[:k]
    high = sorted((u for u in units if u[1] > 0), key=lambda u: -u[1])[:k]
    return low, high


def require_controls(cases: Sequence[SignalCase], source: str) -> None:
    """Every analysis case needs an unrelated follow-up as its control."""
    for i, case in enumerate(cases):
        if not case.unrelated_followup:
            raise CasesError(f"{source}: case {i} ({case.name}): missing field 'unrelated_followup'")


def selectivity(relevant: Sequence[float], unrelated: Sequence[float]) -> float:
    num = sum(abs(v) for v in relevant) / max(len(relevant), 1)
    den = sum(abs(v) for v in unrelated) / max(len(unrelated), 1)
    return num / den if den > 0 else float("inf")


def analyze(scorer, cases: Sequence[SignalCase], *, batch_size: int = 16, progress: bool = False) -> dict:
    """Score every case under both follow-ups; returns the JSON-ready result."""
    scored = scorer.score_followups(
        [(c.messages, c.response, [c.followup, c.unrelated_followup]) for c in cases],
        batch_size=batch_size,
        progress=progress,
    )
    relevant = [pair[0] for pair in scored]
    unrelated = [pair[1] for pair in scored]
    rows = []
    for case, rel, unr in zip(cases, relevant, unrelated):
        rows.append(
            {
                "name": case.name,
                "prompt": case.prompt,
                "messages": case.messages,
                "response": case.response,
                "followup": case.followup,
                "unrelated_followup": case.unrelated_followup,
                "tokens": rel.tokens,
                "token_ids": rel.token_ids,
                "student_logprobs": rel.student_logprobs,
                "teacher_logprobs_followup": rel.teacher_logprobs,
                "teacher_logprobs_unrelated": unr.teacher_logprobs,
                "signal_followup": rel.signal,
                "signal_unrelated": unr.signal,
                "mean_abs_followup": rel.mean_abs_signal,
                "mean_abs_unrelated": unr.mean_abs_signal,
                "selectivity": selectivity(rel.signal, unr.signal),
            }
        )
    all_rel = [v for r in rows for v in r["signal_followup"]]
    all_unr = [v for r in rows for v in r["signal_unrelated"]]
    overall = {
        "selectivity": selectivity(all_rel, all_unr),
        "median_case_selectivity": statistics.median(r["selectivity"] for r in rows),
        "cases_above_1": sum(r["selectivity"] > 1 for r in rows),
        "mean_abs_followup": sum(map(abs, all_rel)) / len(all_rel),
        "mean_abs_unrelated": sum(map(abs, all_unr)) / len(all_unr),
    }
    return {
        "template": scorer.template.name,
        "n_cases": len(rows),
        "overall": overall,
        "cases": rows,
    }


def load_signals(path: str | Path) -> dict:
    """Read a ``sdpo_signals.json`` back."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- plots

def _cmap():
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("sdpo_signal", ["#c0392b", "#ffffff", "#1e8449"])
    return cmap.with_extremes(bad="#eeeeee")


def _scale(result: dict) -> float:
    return FULL_COLOUR_NATS


def _matrix(result: dict, key: str, max_tokens: int):
    import numpy as np

    width = min(max_tokens, max(len(r[key]) for r in result["cases"]))
    m = np.full((len(result["cases"]), width), np.nan)
    for i, r in enumerate(result["cases"]):
        vals = r[key][:width]
        m[i, : len(vals)] = vals
    return m


def _heatmap(ax, result, key, title, vmax, max_tokens):
    from matplotlib.colors import TwoSlopeNorm

    im = ax.imshow(
        _matrix(result, key, max_tokens),
        aspect="auto",
        cmap=_cmap(),
        norm=TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax),
        interpolation="nearest",
    )
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("response token (its text in the cell)")
    names = [f"{i}: {r['name']}" for i, r in enumerate(result["cases"])]
    ax.set_yticks(range(len(names)), names, fontsize=7)
    _label_tokens(ax, result, key, vmax, max_tokens)
    return im


def cell_label(token: str, max_chars: int) -> str:
    """A token as written in its heatmap cell: spaces shown as ``·``, a newline as ``\\n``, characters the
    font lacks spelled out, cut to ``max_chars`` (with ``…``)."""
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "·")
    text = drawable(text)
    return text if len(text) <= max_chars else text[: max(1, max_chars - 1)] + "…"


def _label_tokens(ax, result, key, vmax, max_tokens) -> None:
    """Write each response token into its cell (vertical text, sized to the cell), so that a heatmap shows
    which tokens the signal moves, not only their positions."""
    width = min(max_tokens, max(len(r["tokens"]) for r in result["cases"]))
    fig_w, fig_h = ax.figure.get_size_inches()
    box = ax.get_position()
    cell_w = box.width * fig_w * 72 / max(1, width)  # points
    cell_h = box.height * fig_h * 72 / max(1, len(result["cases"]))
    size = min(8.0, 0.75 * cell_w, 0.5 * cell_h)
    if size < 3.0:  # too small to read: leave the cells plain
        return
    max_chars = max(1, int(cell_h * 0.9 / (0.62 * size)))
    for i, case in enumerate(result["cases"]):
        values = case.get(key) or []
        for j, token in enumerate(case.get("tokens", [])[:width]):
            label = cell_label(token, max_chars)
            if not label:
                continue
            value = abs(values[j]) if j < len(values) else 0.0
            ax.text(j, i, label, rotation=90, ha="center", va="center", fontsize=size, fontfamily=_MONO,
                    color="white" if value > 0.6 * vmax else "#222222", clip_on=True)


def write_plots(result: dict, out_dir: Path, *, max_tokens: int = 96, token_images: bool = True) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    vmax = _scale(result)
    n = len(result["cases"])
    height = max(3.0, 0.28 * n + 1.5)
    label = "log p(y_t | x, o) − log p(y_t | x)"
    written = []
    for key, fname, title in (
        ("signal_followup", "followup.png", "relevant follow-up"),
        ("signal_unrelated", "unrelated.png", "unrelated follow-up"),
    ):
        fig, ax = plt.subplots(figsize=(12, height), layout="constrained")
        im = _heatmap(ax, result, key, f"Signal under the {title} (template {result['template']})", vmax, max_tokens)
        fig.colorbar(im, ax=ax, label=label, shrink=0.8, extend="both")
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(out_dir / fname)
    for fname, shape, size in (("stacked.png", (2, 1), (12, 2 * height + 0.6)),
                               ("side_by_side.png", (1, 2), (20, height + 0.6))):
        # constrained layout: the figure title, the panel titles, the case names and the axis labels each get
        # their own room (no overlap, nothing cut at the edges)
        fig, axes = plt.subplots(*shape, figsize=size, layout="constrained")
        for ax, key, title in zip(axes, ("signal_followup", "signal_unrelated"), ("relevant follow-up", "unrelated follow-up")):
            im = _heatmap(ax, result, key, title, vmax, max_tokens)
        fig.colorbar(im, ax=list(axes), label=label, shrink=0.8, extend="both")
        fig.suptitle(
            f"template {result['template']}: overall selectivity {result['overall']['selectivity']:.2f}", fontsize=12
        )
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(out_dir / fname)
    if token_images:
        for i, case in enumerate(result["cases"]):
            path = out_dir / f"case{i}_tokens.png"
            _token_image(case, path, vmax)
            written.append(path)
    return written


def _wrap_tokens(tokens: Sequence[str], width: int) -> list[list[tuple[int, str]]]:
    """Lines of (token index, shown text); a newline token ends its line."""
    lines: list[list[tuple[int, str]]] = [[]]
    used = 0
    for k, tok in enumerate(tokens):
        shown = tok.replace("\n", "↵").replace("\t", "→") or "·"
        if used + len(shown) > width and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((k, shown))
        used += len(shown)
        if "\n" in tok:
            lines.append([])
            used = 0
    return [line for line in lines if line]


_MONO = "DejaVu Sans Mono"
_mono_chars: set[int] | None = None


def drawable(text: str) -> str:
    """``text`` with each character the image font cannot draw (emoji, CJK: no such font is assumed) spelled
    out, e.g. ``[party popper]`` or ``[U+3042]``, instead of an empty box."""
    global _mono_chars
    import unicodedata

    if _mono_chars is None:
        from matplotlib import font_manager
        from matplotlib.ft2font import FT2Font

        _mono_chars = set(FT2Font(font_manager.findfont(_MONO)).get_charmap())
    out = []
    for ch in text:
        if ord(ch) in _mono_chars or ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Mn", "Cf") or ch == "\ufe0f":  # variation selectors, joiners
            continue
        elif unicodedata.category(ch) == "So":
            out.append(f"[{unicodedata.name(ch, 'symbol').lower()}]")
        else:
            out.append(f"[U+{ord(ch):04X}]")
    return "".join(out)


def _monospace_advance(fig_w: float, font_pt: float) -> float:
    """Width of one monospace character as a fraction of a figure ``fig_w`` inches wide (measured)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(fig_w, 1), dpi=100)
    text = fig.text(0, 0, "x" * 200, fontfamily=_MONO, fontsize=font_pt)
    width = text.get_window_extent(renderer=fig.canvas.get_renderer()).width
    plt.close(fig)
    return width / 200 / (fig_w * 100)


def _token_image(case: dict, path: Path, vmax: float) -> None:
    import textwrap
    import warnings

    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    cmap, norm = _cmap(), TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    fig_w, font_pt = 12.0, 9
    char_w = _monospace_advance(fig_w, font_pt)
    width_chars = int(0.96 / char_w)
    blocks = []
    for key, label in (("signal_followup", "followup"), ("signal_unrelated", "unrelated_followup")):
        header = textwrap.wrap(drawable(f"{'relevant' if key == 'signal_followup' else 'unrelated'} follow-up: "
                                        f"{case[label]}"), 120)
        units = display_units(case["tokens"], case[key])
        blocks.append(([value for _, value, _ in units], header,
                       _wrap_tokens([drawable(text) for text, _, _ in units], width_chars)))
    prompt = textwrap.wrap(drawable(f"prompt: {case['prompt']}"), 120)
    n_lines = len(prompt) + sum(len(h) + len(t) + 1 for _, h, t in blocks) + 1
    fig_h = 0.24 * n_lines + 0.4
    fig = plt.figure(figsize=(fig_w, fig_h))
    line_h = 0.24 / fig_h
    y = 1 - line_h
    text_kw = dict(fontfamily=_MONO, fontsize=font_pt, va="top", parse_math=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a glyph `drawable` missed would warn once per character
        fig.text(0.01, y + 0.3 * line_h, f"{drawable(case['name'])}   selectivity {case['selectivity']:.2f}", fontsize=10,
                 fontweight="bold", va="top")
        y -= line_h
        for line in prompt:
            fig.text(0.01, y, line, color="#333333", **text_kw)
            y -= line_h
        for values, header, lines in blocks:
            for line in header:
                fig.text(0.01, y, line, color="#333333", fontstyle="italic", **text_kw)
                y -= line_h
            for line in lines:
                x = 0.01
                for k, shown in line:
                    value = values[k]
                    fig.text(x, y, shown, color="black", **text_kw,
                             bbox=dict(facecolor=cmap(norm(value)), edgecolor="none", pad=1.0))
                    x += len(shown) * char_w
                y -= line_h
            y -= 0.5 * line_h
        fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- report

def _colour(value: float, vmax: float) -> str:
    v = max(-1.0, min(1.0, value / vmax))
    if v >= 0:
        r, g, b = 255 - 225 * v, 255 - 123 * v, 255 - 182 * v
    else:
        r, g, b = 255 - 63 * -v, 255 - 198 * -v, 255 - 212 * -v
    return f"rgb({int(r)},{int(g)},{int(b)})"


def _tokens_html(tokens, values, vmax) -> str:
    spans = []
    for tok, v, parts in display_units(tokens, values):
        text = html.escape(tok).replace("\n", "↵<br>") or "&middot;"
        title = f"{v:+.4f}" if len(parts) == 1 else f"{v:+.4f} ({len(parts)} tokens: " + ", ".join(
            f"{p:+.4f}" for p in parts) + ")"
        spans.append(f'<span class="tok" style="background:{_colour(v, vmax)}" title="{title}" data-v="{v:.6f}">'
                     f'{text}</span>')
    return "".join(spans)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .meta{color:#555;margin-bottom:14px}
table{border-collapse:collapse;margin:10px 0 20px;font-size:14px}
th,td{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}
th{cursor:pointer;background:#f4f4f4;user-select:none} th:hover{background:#e6e6e6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
section.case{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
section.case h2{font-size:16px;margin:0 0 6px} .sel{font-weight:normal;color:#555}
.label{font-size:13px;color:#444;margin:8px 0 2px} .tokens{font-family:ui-monospace,monospace;font-size:13px;
line-height:1.9;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:2px;padding:1px 0} .tok:hover{outline:1px solid #000}
.legend span{display:inline-block;padding:2px 8px;margin-right:4px;font-size:13px}
.controls{margin:8px 0} button{margin-right:6px}
"""

_JS = """
function sortCases(mode){
  const box=document.getElementById('cases');
  const items=[...box.querySelectorAll('section.case')];
  items.sort((a,b)=>{
    if(mode==='original') return (+a.dataset.index)-(+b.dataset.index);
    const d=(+a.dataset.selectivity)-(+b.dataset.selectivity);
    return mode==='asc'? d : -d;});
  items.forEach(el=>box.appendChild(el));
  box.dataset.order=mode;
}
function sortTable(col){
  const body=document.querySelector('#summary tbody');
  const rows=[...body.rows];
  const dir=body.dataset.col==String(col)&&body.dataset.dir==='desc'?'asc':'desc';
  rows.sort((a,b)=>{
    const x=a.cells[col].dataset.sort??a.cells[col].textContent,y=b.cells[col].dataset.sort??b.cells[col].textContent;
    const nx=parseFloat(x),ny=parseFloat(y);
    const c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;
    return dir==='asc'?c:-c;});
  rows.forEach(r=>body.appendChild(r));
  body.dataset.col=col; body.dataset.dir=dir;
}
window.addEventListener('DOMContentLoaded',()=>{
  const m=location.hash.match(/sort=(desc|asc|original)/); if(m) sortCases(m[1]);
});
"""


def write_report(result: dict, path: Path, *, model: str = "") -> Path:
    """A self-contained HTML page: summary table, every case with coloured tokens."""
    vmax = _scale(result)
    ov = result["overall"]
    rows, sections = [], []
    for i, c in enumerate(result["cases"]):
        rows.append(
            f"<tr><td class='num'>{i}</td><td><a href='#case{i}'>{html.escape(c['name'])}</a></td>"
            f"<td class='num' data-sort='{c['selectivity']:.6f}'>{c['selectivity']:.2f}</td>"
            f"<td class='num'>{c['mean_abs_followup']:.3f}</td><td class='num'>{c['mean_abs_unrelated']:.3f}</td>"
            f"<td class='num'>{len(c['tokens'])}</td></tr>"
        )
        sections.append(
            f"<section class='case' id='case{i}' data-index='{i}' data-selectivity='{c['selectivity']:.6f}'>"
            f"<h2>{i}. {html.escape(c['name'])} <span class='sel'>selectivity {c['selectivity']:.2f}</span></h2>"
            f"<div class='label'><b>prompt</b>: {html.escape(c['prompt'])}</div>"
            f"<div class='label'><b>relevant follow-up</b>: {html.escape(c['followup'])} "
            f"(mean |signal| {c['mean_abs_followup']:.3f})</div>"
            f"<div class='tokens followup'>{_tokens_html(c['tokens'], c['signal_followup'], vmax)}</div>"
            f"<div class='label'><b>unrelated follow-up</b>: {html.escape(c['unrelated_followup'])} "
            f"(mean |signal| {c['mean_abs_unrelated']:.3f})</div>"
            f"<div class='tokens unrelated'>{_tokens_html(c['tokens'], c['signal_unrelated'], vmax)}</div>"
            "</section>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdpo signal analysis: {html.escape(result['template'])}</title>
<style>{_CSS}</style><script>{_JS}</script></head><body>
<h1>Hindsight signal analysis</h1>
<div class="meta">model <b>{html.escape(model)}</b> · template <b>{html.escape(result['template'])}</b> ·
{result['n_cases']} cases · overall selectivity <b>{ov['selectivity']:.3f}</b>
(median per case {ov['median_case_selectivity']:.3f}; {ov['cases_above_1']} of {result['n_cases']} above 1)</div>
<div class="legend">signal = log p(y_t | x, o) − log p(y_t | x): 
<span style="background:{_colour(-vmax, vmax)}">teacher prefers less</span><span style="background:#fff;border:1px solid #ddd">0</span><span style="background:{_colour(vmax, vmax)}">teacher prefers more</span>
full colour at |signal| ≥ {vmax:g} nats (the scale of <code>sdpo signal</code> and the images); a character
split over several tokens (emoji) is shown once, with their summed value; hover a token for its value.</div>
<table id="summary"><thead><tr><th onclick="sortTable(0)">#</th><th onclick="sortTable(1)">case</th>
<th onclick="sortTable(2)">selectivity</th><th onclick="sortTable(3)">mean |signal| relevant</th>
<th onclick="sortTable(4)">mean |signal| unrelated</th><th onclick="sortTable(5)">tokens</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<div class="controls">Order cases: <button onclick="sortCases('desc')">selectivity ↓</button>
<button onclick="sortCases('asc')">selectivity ↑</button><button onclick="sortCases('original')">original</button></div>
<div id="cases" data-order="original">{''.join(sections)}</div>
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_index(summary: dict, out_dir: str | Path, *, model: str = "") -> Path:
    """``report.html`` at the top of a ``--template all`` run: the templates compared, each linked to its
    own report and shown by its side-by-side heatmap."""
    out_dir = Path(out_dir)
    best = max(summary, key=lambda k: summary[k]["selectivity"])
    rows, figures = [], []
    for name, ov in summary.items():
        rel = Path(ov["out_dir"]).relative_to(out_dir).as_posix() if Path(ov["out_dir"]).is_relative_to(out_dir) \
            else Path(ov["out_dir"]).resolve().as_uri()
        link = html.escape(f"{rel}/report.html")
        rows.append(f"<tr><td><a href='{link}'>{html.escape(name)}</a>{' (best)' if name == best else ''}</td>"
                    f"<td class='num'>{ov['selectivity']:.3f}</td><td class='num'>{ov['median_case_selectivity']:.3f}"
                    f"</td><td class='num'>{ov['cases_above_1']}</td></tr>")
        figures.append(f"<h2><a href='{link}'>{html.escape(name)}</a></h2>"
                       f"<a href='{link}'><img src='{html.escape(rel)}/side_by_side.png' alt='heatmaps, template "
                       f"{html.escape(name)}' style='max-width:100%'></a>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sdpo signal analysis: templates compared</title>
<style>{_CSS}</style></head><body>
<h1>Hindsight signal analysis: templates compared</h1>
<div class="meta">model <b>{html.escape(model)}</b> · {len(summary)} templates · selectivity = mean |signal| under the
relevant follow-up ÷ under the unrelated one (above 1: the signal is about the feedback). Each template's own report
has every case token by token.</div>
<table><thead><tr><th>template (its report)</th><th>overall selectivity</th><th>median case</th><th>cases above 1</th>
</tr></thead><tbody>{''.join(rows)}</tbody></table>
{''.join(figures)}
</body></html>
"""
    path = out_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(result: dict, out_dir: str | Path, *, model: str = "", max_tokens: int = 96,
                  token_images: bool = True) -> list[Path]:
    """``sdpo_signals.json``, the plots and ``report.html`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signals = out_dir / "sdpo_signals.json"
    signals.write_text(json.dumps({"model": model, **result}, ensure_ascii=False, indent=1), encoding="utf-8")
    written = [signals]
    written += write_plots(result, out_dir, max_tokens=max_tokens, token_images=token_images)
    written.append(write_report(result, out_dir / "report.html", model=model))
    return written
