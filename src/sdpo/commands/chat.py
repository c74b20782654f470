"""``sdpo chat``: a local web chat that learns from your follow-ups, one SDPO update each.

    sdpo chat                                    # http://127.0.0.1:7860, the embedded model, runs/chat
    sdpo chat --update_mode async --loss topk_distillation --run_dir runs/chat-topk
    sdpo chat --host 0.0.0.0 --auth me:secret    # another address needs a password
    sdpo chat export --run_dir runs/chat --output interactions.jsonl   # for sdpo train-offline
    sdpo chat --simulate no_emojis --turns 100 --eval_every 10          # headless, simulated user

Starting again on the same ``--run_dir`` continues: conversations, the latest weights
(newest checkpoint plus the updates logged after it), and an update that a kill
interrupted is marked ``interrupted``.
"""

from __future__ import annotations

import os
import signal
import sys

from sdpo.chat.config import ChatConfig

ARGUMENTS = ChatConfig
POSITIONAL = "action"


def run(args: ChatConfig) -> int:
    from sdpo.cli import UsageError

    if args.action == "export":
        from sdpo.chat.export import export

        if not args.output:
            raise UsageError("export needs --output FILE.jsonl")
        n, skipped = export(args.run_dir, args.output, include_excluded=args.include_excluded)
        print(f"wrote {n} interaction records to {args.output}"
              + (f" ({skipped} left out: undone/excluded (--include_excluded true keeps them) or empty answers)" if skipped else ""))
        return 0
    if args.simulate is not None:
        from sdpo.chat.simulate import run_simulation

        run_simulation(args)
        return 0
    if not args.is_local and not args.auth:
        raise UsageError(f"--host {args.host}: listening beyond this machine needs --auth user:password")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from sdpo.chat.app import launch
    from sdpo.chat.engine import ChatEngine

    if args.port == 0:
        import socket

        with socket.socket() as s:
            s.bind((args.host if args.host != "localhost" else "127.0.0.1", 0))
            args.port = s.getsockname()[1]
    print(f"sdpo chat: loading {args.model_name_or_path} (run directory {args.run_dir})", flush=True)
    engine = ChatEngine(args)
    r = engine.restored
    if r.get("conversations"):
        print(f"sdpo chat: restored {r['conversations']} conversation(s), weights version {engine.version}"
              + (f" from {r['checkpoint']}" if r.get("checkpoint") else "")
              + (f", {r['replayed']} logged update(s) applied again" if r.get("replayed") else "")
              + (f"; {r['interrupted_updates']} update(s) interrupted by the last stop (marked)"
                 if r.get("interrupted_updates") else ""), flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        demo = launch(engine, block=False)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"sdpo chat: open http://{host}:{args.port}  (mode {engine.status()['mode']}, "
              f"loss {args.loss}; Ctrl-C stops and saves)", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        print("sdpo chat: saving and stopping", file=sys.stderr, flush=True)
        engine.close()
    return 0
