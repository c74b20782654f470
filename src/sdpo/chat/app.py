"""The ``sdpo chat`` page (Gradio): the conversation on the left; on the right what the last
follow-up taught the model: the previous answer's tokens coloured by their signal (the
signal report's colour scale, the value on hover), the mean |signal|, the loss, the update
count and weights version, a plot over the session, undo, and the learn switch.

The page has no file access (no upload or download components, no ``allowed_paths``), and
nothing the server holds besides the conversation and the signal is sent to it.
"""

from __future__ import annotations

import html
import os

from sdpo.chat.engine import ChatEngine, ChatError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CSS = """
#sdpo-signal .tok { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px;
  border-radius: 2px; padding: 0 1px; }
#sdpo-signal .legend { font-size: 12px; color: #555; margin-top: 6px; }
"""


def signal_html(row: dict | None) -> str:
    """The answer's tokens coloured by signal (red: the follow-up made the token less likely, green:
    more likely), the value on hover; the signal report's colour scale and token rendering."""
    from sdpo.analysis.signal_report import _tokens_html

    if not row or not row.get("signal_values"):
        return '<div id="sdpo-signal-empty">No follow-up yet: after an answer, what you write next is its ' \
               "follow-up, and the signal of each of its tokens shows here.</div>"
    values = row["signal_values"]
    tokens = row["signal_tokens"] or [""] * len(values)
    from sdpo.analysis.signal_report import FULL_COLOUR_NATS

    vmax = FULL_COLOUR_NATS  # the signal report's scale: full colour at this many nats
    state = {"applied": "update applied", "undone": "update undone (excluded)", "collected": "collected, no update",
             "running": "updating…", "pending": "queued"}.get(row["status"], row["status"])
    mean_abs = row.get("signal_abs_mean") or 0.0
    return (f'<div class="sdpo-signal-head">Interaction {row["id"]} ({html.escape(state)}); follow-up: '
            f'<i>{html.escape(row["o"][:200])}</i></div>'
            f'<div class="sdpo-tokens" data-interaction="{row["id"]}">{_tokens_html(tokens, values, vmax)}</div>'
            f'<div class="legend">mean |signal| {mean_abs:.4f}; colour scale ±{vmax:.3f} '
            "(green: the follow-up makes the token more likely, red: less likely); hover a token for its value</div>")


def status_markdown(engine: ChatEngine, row: dict | None) -> str:
    st = engine.status()
    parts = [f"**Updates applied: {st['applied']}**", f"weights version {st['version']}", f"mode {st['mode']}"]
    if st["running"] is not None or st["pending"]:
        parts.append(f"updating ({st['pending']} queued)")
    if row and row.get("loss") is not None:
        parts.append(f"last loss {row['loss']:.4f}")
    if row and row.get("signal_abs_mean") is not None:
        parts.append(f"mean |signal| {row['signal_abs_mean']:.4f}")
    parts.append(f"undo possible: {st['undoable']}")
    return " · ".join(parts)


def session_plot(engine: ChatEngine):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = engine.store.interactions("signal_abs_mean IS NOT NULL")
    fig, (a, b) = plt.subplots(2, 1, figsize=(5, 3.2), sharex=True)
    xs = list(range(1, len(rows) + 1))
    colours = ["tab:blue" if r["status"] == "applied" else "lightgrey" for r in rows]
    a.scatter(xs, [r["signal_abs_mean"] for r in rows], c=colours, s=14)
    a.plot(xs, [r["signal_abs_mean"] for r in rows], color="tab:blue", linewidth=0.8)
    a.set_ylabel("mean |signal|", fontsize=8)
    if engine.cfg.loss == "policy_gradient":  # its loss is 0 at every on-policy step (centred advantages)
        b.plot(xs, [r["signal_mean"] for r in rows], marker="o", markersize=3, color="tab:orange", linewidth=0.8)
        b.axhline(0, color="grey", linewidth=0.5)
        b.set_ylabel("mean signal", fontsize=8)
    else:
        losses = [(x, r["loss"]) for x, r in zip(xs, rows) if r["loss"] is not None]
        b.plot([x for x, _ in losses], [v for _, v in losses], marker="o", markersize=3, color="tab:orange",
               linewidth=0.8)
        b.set_ylabel("loss", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    _session_axes(a, b, rows, signed=engine.cfg.loss == "policy_gradient")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.set_xlabel("follow-up (grey: undone or collected only)", fontsize=8)
    for ax in (a, b):
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _session_axes(a, b, rows, *, signed: bool) -> None:
    """Axes that read well with no point or one (matplotlib's own limits are then ±0.05 around nothing, and
    0.945-1.050 ticks around a single follow-up): follow-ups 1..5 at least, |signal| from 0, the signed
    panel symmetric about 0."""
    n = len(rows)
    a.set_xlim(0.5, max(n, 5) + 0.5)
    if n == 0:
        a.text(0.5, 0.5, "no follow-ups yet: each message after an answer adds a point", transform=a.transAxes,
               ha="center", va="center", fontsize=7, color="grey")
        a.set_ylim(0, 1)
        b.set_ylim(-1, 1) if signed else b.set_ylim(0, 1)
        return
    top = max((r["signal_abs_mean"] or 0.0) for r in rows)
    a.set_ylim(0, top * 1.15 if top > 0 else 1e-3)
    if signed:
        span = max(abs(r["signal_mean"] or 0.0) for r in rows)
        span = span * 1.15 if span > 0 else 1e-3
        b.set_ylim(-span, span)
    else:
        values = [r["loss"] for r in rows if r["loss"] is not None]
        if len(values) == 1:
            pad = abs(values[0]) * 0.5 or 1e-3
            b.set_ylim(values[0] - pad, values[0] + pad)


def _history(engine: ChatEngine, conversation_id: int | None) -> list[dict]:
    if conversation_id is None:
        return []
    return [{"role": t["role"], "content": t["content"]} for t in engine.store.turns(conversation_id)
            if t["content"] or t["status"] == "complete"]


def _choices(engine: ChatEngine) -> list[tuple[str, int]]:
    return [(f"#{c['id']} {c['title'] or '(empty)'}", c["id"]) for c in reversed(engine.store.conversations())]


def _last_signal_row(engine: ChatEngine, conversation_id: int | None) -> dict | None:
    if conversation_id is None:
        return None
    rows = engine.store.interactions("conversation_id = ?", (conversation_id,))
    return rows[-1] if rows else None


def build_app(engine: ChatEngine):
    import gradio as gr

    cfg = engine.cfg
    with gr.Blocks(title="sdpo chat", analytics_enabled=False) as demo:
        gr.Markdown(f"### sdpo chat: `{cfg.model_name_or_path}` learns from what you write next\n"
                    "Each message you send after an answer is that answer's follow-up: the model re-reads its "
                    "answer with your follow-up in view, and one SDPO update moves it toward that reading.")
        conversation = gr.State(None)
        plot_key = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(elem_id="sdpo-chatbot", height=460, label="conversation",
                                     feedback_options=None, buttons=[])
                with gr.Row():
                    message = gr.Textbox(elem_id="sdpo-input", placeholder="Write a message (Enter sends)",
                                         show_label=False, scale=5)
                    send = gr.Button("Send", elem_id="sdpo-send", variant="primary", scale=1)
                with gr.Row():
                    new = gr.Button("New conversation", elem_id="sdpo-new", size="sm")
                    pick = gr.Dropdown(choices=_choices(engine), label="conversations", elem_id="sdpo-conversations",
                                       interactive=True)
            with gr.Column(scale=2):
                status = gr.Markdown(status_markdown(engine, None), elem_id="sdpo-status")
                signal = gr.HTML(signal_html(None), elem_id="sdpo-signal")
                plot = gr.Plot(session_plot(engine), elem_id="sdpo-plot", label="session")
                learn = gr.Checkbox(value=not cfg.collect_only, label="learn from follow-ups (off: collect only)",
                                    elem_id="sdpo-learn")
                with gr.Row():
                    undo_n = gr.Number(value=1, minimum=1, maximum=max(1, cfg.undo_depth), precision=0,
                                       label="updates to undo", elem_id="sdpo-undo-n", scale=1)
                    undo = gr.Button("Undo", elem_id="sdpo-undo", scale=1)
                notice = gr.Markdown("", elem_id="sdpo-notice")
        timer = gr.Timer(1.0)

        def panel(cid, key):
            row = _last_signal_row(engine, cid)
            st = engine.status()
            new_key = (st["applied"], st["version"], row["id"] if row else None, row["status"] if row else None,
                       len(engine.store.interactions("signal_abs_mean IS NOT NULL")))
            if new_key == key:
                return status_markdown(engine, row), gr.skip(), gr.skip(), key
            return status_markdown(engine, row), signal_html(row), session_plot(engine), new_key

        def on_send(text, cid, history, learning):
            text = (text or "").strip()
            if not text:
                yield history, "", cid, gr.skip(), gr.skip(), "Write something first."
                return
            if cid is None:
                cid = engine.new_conversation()
            got = engine.receive(cid, text, learn=learning)  # committed before it is shown
            history = list(history or []) + [{"role": "user", "content": text}]
            row = _last_signal_row(engine, cid) if got["interaction"] else None
            if got["interaction"] is not None and learning and cfg.update_mode == "sync":
                yield history, "", cid, status_markdown(engine, row) + " · **learning from your follow-up…**", \
                    gr.skip(), ""
            try:
                engine.learn(got["interaction"])
            except Exception as err:  # the row is marked failed; the chat goes on
                yield history, "", cid, gr.skip(), gr.skip(), f"The update failed: {html.escape(str(err))}"
            row = _last_signal_row(engine, cid)
            sig = signal_html(row) if got["interaction"] is not None else gr.skip()
            history = history + [{"role": "assistant", "content": ""}]
            for partial in engine.reply(cid, got["messages"]):
                history[-1] = {"role": "assistant", "content": partial}
                yield history, "", cid, status_markdown(engine, row), sig, ""
                sig = gr.skip()

        outputs = [chatbot, message, conversation, status, signal, notice]
        send.click(on_send, [message, conversation, chatbot, learn], outputs, trigger_mode="always_last").then(
            panel, [conversation, plot_key], [status, signal, plot, plot_key]).then(
            lambda: gr.update(choices=_choices(engine)), None, pick)
        message.submit(on_send, [message, conversation, chatbot, learn], outputs, trigger_mode="always_last").then(
            panel, [conversation, plot_key], [status, signal, plot, plot_key]).then(
            lambda: gr.update(choices=_choices(engine)), None, pick)
        timer.tick(panel, [conversation, plot_key], [status, signal, plot, plot_key])

        def on_new():
            return [], None, signal_html(None), ""

        new.click(on_new, None, [chatbot, conversation, signal, notice])

        def on_pick(cid):
            if cid is None:
                return gr.skip(), gr.skip(), gr.skip()
            return _history(engine, cid), cid, signal_html(_last_signal_row(engine, cid))

        pick.input(on_pick, pick, [chatbot, conversation, signal])

        def on_undo(n, cid):
            try:
                ids = engine.undo(int(n or 1))
            except ChatError as err:
                return str(err)
            return f"Undone: the update(s) of interaction(s) {', '.join(map(str, ids))}; the weights are back to " \
                   f"version {engine.version}."

        undo.click(on_undo, [undo_n, conversation], notice).then(
            panel, [conversation, plot_key], [status, signal, plot, plot_key])

        def on_load():
            convs = engine.store.conversations()
            if not convs:
                return [], None, signal_html(None)
            cid = convs[-1]["id"]  # the latest conversation, as it was when the server stopped
            return _history(engine, cid), cid, signal_html(_last_signal_row(engine, cid))

        demo.load(on_load, None, [chatbot, conversation, signal])
    return demo


def theme():
    import gradio as gr

    # local fonts only: the page needs nothing from the network
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(engine: ChatEngine, *, block: bool = True):
    """Start the server on ``cfg.host:cfg.port``; returns the Gradio app (and its URL on ``.local_url``)."""
    cfg = engine.cfg
    demo = build_app(engine)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=cfg.host, server_port=cfg.port or None, auth=cfg.auth_pair(), share=False,
                inbrowser=False, prevent_thread_lock=not block, show_error=True, quiet=True, ssr_mode=False,
                theme=theme(), css=CSS, allowed_paths=[], enable_monitoring=False)
    return demo
