"""``sdpo chat export``: the chat's ``(x, y, o)`` interactions as records ``sdpo train-offline``
reads (:mod:`sdpo.data.interactions`): ``x`` the messages before the answer, ``y`` the answer,
``o`` the follow-up, ``id`` ``chat-<conversation>:<interaction>``, ``source`` ``sdpo-chat``
(or ``sdpo-chat-simulated``). Undone interactions are excluded unless asked for."""

from __future__ import annotations

from pathlib import Path

from sdpo.data.interactions import validate_record, write_interactions


def export(run_dir: str | Path, output: str | Path, *, include_excluded: bool = False) -> tuple[int, int]:
    """Write the records; returns (written, left out: excluded or with an empty answer)."""
    from sdpo.chat.store import ChatStore
    from sdpo.data.interactions import RecordError

    db = Path(run_dir) / "chat.db"
    if not db.is_file():
        raise RecordError(f"--run_dir {run_dir}: no chat.db (not an sdpo chat run directory)")
    store = ChatStore(db)
    try:
        rows = store.interactions()
    finally:
        store.close()
    records, excluded, empty = [], 0, 0
    for r in rows:
        if r["excluded"] and not include_excluded:
            excluded += 1  # undone
            continue
        if not r["y"].strip():
            empty += 1  # an empty answer (train-offline needs text)
            continue
        source = "sdpo-chat" if r["source"] == "chat" else f"sdpo-chat-{r['source']}"
        records.append(validate_record({"id": f"chat-{r['conversation_id']}:{r['id']}", "source": source,
                                        "x": r["x"], "y": r["y"], "o": r["o"]}))
    if not records:
        if not rows:
            raise RecordError(f"--run_dir {run_dir}: no interactions to export yet (a follow-up after an answer "
                              "makes one)")
        left = []
        if excluded:
            left.append(f"{excluded} undone (excluded; --include_excluded true exports {'it' if excluded == 1 else 'them'})")
        if empty:
            left.append(f"{empty} with an empty answer")
        what = "interaction" if len(rows) == 1 else "interactions"
        raise RecordError(f"--run_dir {run_dir}: nothing to export: {len(rows)} {what}, {' and '.join(left)}")
    write_interactions(records, output)
    return len(records), excluded + empty
