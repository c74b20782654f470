"""The chat's database: every turn, interaction, signal and update, in SQLite.

``<run_dir>/chat.db`` in WAL mode, one transaction committed per write (a killed server
loses nothing that was committed). Tables:

* ``conversations(id, title, created)``;
* ``turns(id, conversation_id, role, content, token_ids, status, weights_version, created)``:
  ``status`` is ``complete``, ``streaming`` (an answer being generated) or ``incomplete``
  (its server was killed mid-answer; marked on restart); ``weights_version`` is the number
  of updates in the weights that wrote an answer;
* ``interactions``: one ``(x, y, o)`` per follow-up: the messages before the answer, the
  answer (text and token ids as generated) and the follow-up; ``status`` is ``collected``
  (no update asked), ``pending`` (queued), ``running``, ``applied``, ``undone``,
  ``interrupted`` (the server died during its update: it is not in the weights) or
  ``failed``; ``excluded`` marks undone interactions (left out of exports by default);
  ``seq`` orders the applied updates; the signal (tokens and values), its summary, the
  loss and the update's metrics sit on the same row;
* ``checkpoints(id, path, applied, created)``: ``applied`` lists the interactions whose
  updates the saved weights hold;
* ``evals``: the simulated sessions' win rates against the base model;
* ``meta``: the options that define the weights (model, LoRA, dtype), checked on restart.

API keys never reach this file: nothing here stores options or credentials other than
the model-defining ones.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations(
  id INTEGER PRIMARY KEY, title TEXT NOT NULL DEFAULT '', created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS turns(
  id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  role TEXT NOT NULL, content TEXT NOT NULL, token_ids TEXT, status TEXT NOT NULL DEFAULT 'complete',
  weights_version INTEGER, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS interactions(
  id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES conversations(id),
  answer_turn_id INTEGER REFERENCES turns(id), followup_turn_id INTEGER REFERENCES turns(id),
  x TEXT NOT NULL, y TEXT NOT NULL, response_ids TEXT NOT NULL, o TEXT NOT NULL,
  status TEXT NOT NULL, excluded INTEGER NOT NULL DEFAULT 0, seq INTEGER, source TEXT NOT NULL DEFAULT 'chat',
  loss REAL, signal_mean REAL, signal_abs_mean REAL, signal_tokens TEXT, signal_values TEXT, metrics TEXT,
  error TEXT, created REAL NOT NULL, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS checkpoints(
  id INTEGER PRIMARY KEY, path TEXT NOT NULL, applied TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evals(
  id INTEGER PRIMARY KEY, updates INTEGER NOT NULL, turns INTEGER NOT NULL, wins INTEGER, losses INTEGER,
  ties INTEGER, win_rate REAL, wilson95_low REAL, wilson95_high REAL, persona_score REAL, created REAL NOT NULL);
"""

INTERACTION_STATES = ("collected", "pending", "running", "applied", "undone", "interrupted", "failed")


class ChatStore:
    """A thread-safe handle on ``chat.db`` (one connection, one lock, a commit per write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ low level
    def _write(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return cur.lastrowid

    def _rows(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """Read-only access for tests and tools."""
        return self._rows(sql, args)

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> Any:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: Any) -> None:
        self._write("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(value)))

    # ------------------------------------------------------------------ conversations and turns
    def new_conversation(self, title: str = "") -> int:
        return self._write("INSERT INTO conversations(title, created) VALUES (?, ?)", (title, time.time()))

    def set_title(self, conversation_id: int, title: str) -> None:
        self._write("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def conversations(self) -> list[dict[str, Any]]:
        return self._rows("SELECT c.id, c.title, c.created, COUNT(t.id) AS turns FROM conversations c "
                          "LEFT JOIN turns t ON t.conversation_id = c.id GROUP BY c.id ORDER BY c.id")

    def add_turn(self, conversation_id: int, role: str, content: str, *, token_ids=None, status: str = "complete",
                 weights_version: int | None = None) -> int:
        return self._write(
            "INSERT INTO turns(conversation_id, role, content, token_ids, status, weights_version, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, role, content, None if token_ids is None else json.dumps(list(token_ids)), status,
             weights_version, time.time()))

    def finish_turn(self, turn_id: int, content: str, token_ids, status: str = "complete") -> None:
        self._write("UPDATE turns SET content = ?, token_ids = ?, status = ? WHERE id = ?",
                    (content, json.dumps(list(token_ids)), status, turn_id))

    def set_turn_version(self, turn_id: int, version: int) -> None:
        self._write("UPDATE turns SET weights_version = ? WHERE id = ?", (version, turn_id))

    def turns(self, conversation_id: int, *, complete_only: bool = False) -> list[dict[str, Any]]:
        where = " AND status = 'complete'" if complete_only else ""
        rows = self._rows(f"SELECT * FROM turns WHERE conversation_id = ?{where} ORDER BY id", (conversation_id,))
        for r in rows:
            r["token_ids"] = json.loads(r["token_ids"]) if r["token_ids"] else None
        return rows

    # ------------------------------------------------------------------ interactions
    def add_interaction(self, conversation_id: int, answer_turn_id: int, followup_turn_id: int | None, x, y: str,
                        response_ids, o: str, status: str, source: str = "chat") -> int:
        assert status in INTERACTION_STATES, status
        return self._write(
            "INSERT INTO interactions(conversation_id, answer_turn_id, followup_turn_id, x, y, response_ids, o, "
            "status, source, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (conversation_id, answer_turn_id, followup_turn_id, json.dumps(x, ensure_ascii=False), y,
             json.dumps(list(response_ids)), o, status, source, time.time()))

    def update_interaction(self, interaction_id: int, **fields) -> None:
        if "status" in fields:
            assert fields["status"] in INTERACTION_STATES, fields["status"]
        for key in ("signal_tokens", "signal_values", "metrics"):
            if key in fields and not isinstance(fields[key], (str, type(None))):
                fields[key] = json.dumps(fields[key], ensure_ascii=False)
        names = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE interactions SET {names} WHERE id = ?", (*fields.values(), interaction_id))

    def interaction(self, interaction_id: int) -> dict[str, Any]:
        rows = self._rows("SELECT * FROM interactions WHERE id = ?", (interaction_id,))
        if not rows:
            raise KeyError(f"no interaction {interaction_id}")
        return _decode(rows[0])

    def interactions(self, where: str = "1", args: tuple = (), order: str = "id") -> list[dict[str, Any]]:
        return [_decode(r) for r in self._rows(f"SELECT * FROM interactions WHERE {where} ORDER BY {order}", args)]

    def applied(self) -> list[dict[str, Any]]:
        """The updates in the current weights, in the order they were applied."""
        return self.interactions("status = 'applied'", order="seq, id")

    def next_seq(self) -> int:
        rows = self._rows("SELECT MAX(seq) AS m FROM interactions")
        return int(rows[0]["m"] or 0) + 1

    def mark_interrupted(self) -> dict[str, int]:
        """After a kill: the update that was running is lost (marked ``interrupted``); answers
        that were streaming are ``incomplete``. Returns the counts."""
        with self._lock:
            running = self._rows("SELECT id FROM interactions WHERE status = 'running'")
            streaming = self._rows("SELECT id FROM turns WHERE status = 'streaming'")
            self._write("UPDATE interactions SET status = 'interrupted', error = 'the server stopped during this "
                        "update; it is not in the weights' WHERE status = 'running'")
            self._write("UPDATE turns SET status = 'incomplete' WHERE status = 'streaming'")
        return {"interrupted_updates": len(running), "incomplete_answers": len(streaming)}

    # ------------------------------------------------------------------ checkpoints and evals
    def add_checkpoint(self, path: str, applied: list[int]) -> int:
        return self._write("INSERT INTO checkpoints(path, applied, created) VALUES (?, ?, ?)",
                           (path, json.dumps(applied), time.time()))

    def add_eval(self, **row) -> int:
        row.setdefault("created", time.time())
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        return self._write(f"INSERT INTO evals({names}) VALUES ({marks})", tuple(row.values()))

    def evals(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM evals ORDER BY id")


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("x", "response_ids", "signal_tokens", "signal_values", "metrics"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row
