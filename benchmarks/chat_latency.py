"""`sdpo chat` latency on CPU: time to first token of an answer, and time per update, in the
sync and async modes (the engine the web page drives, without the browser).

    python benchmarks/chat_latency.py [--model smollm2-135m] [--followups 3] [--max_new_tokens 128]

Prints one JSON line per mode: median time to first token of a fresh answer, of the answer
right after a follow-up (sync: the update runs first; async: it runs in the background),
median update time, and the ratio async/sync of the after-follow-up first-token time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def measure(mode: str, model: str, followups: int, max_new_tokens: int) -> dict:
    from sdpo.chat.config import ChatConfig
    from sdpo.chat.engine import ChatEngine

    texts = ["What are three good habits for learning a new language?", "Shorter please, and skip the list.",
             "Still too long. One sentence.", "Thanks. Now say it more casually.", "Good, keep it that way."]
    with tempfile.TemporaryDirectory() as run:
        cfg = ChatConfig(run_dir=run, model_name_or_path=model, update_mode=mode, max_new_tokens=max_new_tokens,
                         undo_depth=1)
        engine = ChatEngine(cfg)
        try:
            cid = engine.new_conversation()
            first_token, after_followup, updates, tokens = [], [], [], []
            for i, text in enumerate(texts[: followups + 1]):
                t0 = time.perf_counter()
                got = engine.receive(cid, text)
                engine.learn(got["interaction"])
                t_learned = time.perf_counter()
                info, ttft = {}, None
                for _ in engine.reply(cid, got["messages"], info=info):
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                tokens.append(len(info["ids"]))
                (after_followup if i else first_token).append(ttft)
                if got["interaction"] is not None:
                    if mode == "async":
                        engine.wait_idle()
                    row = engine.store.interaction(got["interaction"])
                    updates.append(row["finished"] - row["started"])
                    if mode == "sync":
                        assert t_learned - t0 >= updates[-1] * 0.9
        finally:
            engine.close(checkpoint=False)
    return {"mode": mode, "model": model, "max_new_tokens": max_new_tokens, "followups": followups,
            "ttft_fresh_s": round(first_token[0], 3),
            "ttft_after_followup_median_s": round(statistics.median(after_followup), 3),
            "update_median_s": round(statistics.median(updates), 3), "answer_tokens": tokens}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--followups", type=int, default=3)
    ap.add_argument("--max_new_tokens", type=int, default=128)
    a = ap.parse_args()
    rows = [measure(mode, a.model, a.followups, a.max_new_tokens) for mode in ("sync", "async")]
    for r in rows:
        print(json.dumps(r))
    print(json.dumps({"ratio_async_over_sync_ttft_after_followup":
                      round(rows[1]["ttft_after_followup_median_s"] / rows[0]["ttft_after_followup_median_s"], 3)}))


if __name__ == "__main__":
    main()
