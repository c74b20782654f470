"""The chat's engine: the model, its answers, and one SDPO update per follow-up.

When the user writes after an answer, that message is the follow-up ``o`` for the
previous ``(x, y)``: ``x`` the messages before the answer, ``y`` the answer's token ids
as generated. The update is :func:`sdpo.trainers.update.sdpo_update`, the step
``sdpo train-online`` takes, run either before the next answer (``sync``) or in a
background worker (``async``: the answer comes at once, the next one uses the newest
finished weights).

Weights are versioned: the version is the number of updates they hold. An update
changes them only inside ``weights_lock`` (the optimizer step), and an answer is
generated entirely inside the same lock, so an answer always comes from one version,
never from weights half-way through a step.

Nothing is lost (:mod:`sdpo.chat.store`): turns and interactions are committed before
the page shows them; checkpoints (trainable weights, optimizer state, the list of
updates they hold) are written every ``save_every`` updates, after an undo and on exit,
under a temporary name renamed when complete. On a restart the newest complete
checkpoint is loaded and the updates committed after it are applied again (the database
is the log), so only an update that was running at the kill is lost; it is marked
``interrupted``.

Undo keeps, for the last ``undo_depth`` updates, a copy of the trainable weights and of
the optimizer state taken right before the step: undoing restores them bit for bit and
marks the interactions ``undone`` (excluded from exports).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from sdpo.chat.config import MODEL_OPTIONS, ChatConfig, ChatOptionError
from sdpo.chat.store import ChatStore
from sdpo.signal import EncodedExample, hindsight_logprobs, token_strings
from sdpo.templates import fit_context, get_template
from sdpo.trainers.update import UpdateExample, UpdateOptions, sdpo_update

CHECKPOINTS = "checkpoints"
STATE = "state.json"


class ChatError(RuntimeError):
    """Something the user asked for cannot be done (the message says why)."""


class RunDirBusy(ChatOptionError):
    pass


def _claim(run_dir: Path) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".chat.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirBusy(f"--run_dir {run_dir}: another sdpo chat is using it") from None
    return fd


class ChatEngine:
    def __init__(self, cfg: ChatConfig, *, model=None, tokenizer=None, log=print, restore: bool = True):
        self.cfg, self.log = cfg, log
        self.run_dir = Path(cfg.run_dir)
        self._lock_fd = _claim(self.run_dir)
        try:
            self.store = ChatStore(self.run_dir / "chat.db")
            self._check_model_options()
            torch.manual_seed(cfg.seed)
            if model is None:
                from sdpo.models import LoraOptions, load_model

                lora = LoraOptions(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0) if cfg.use_lora else None
                model, tokenizer = load_model(cfg.model_name_or_path, dtype=cfg.dtype, device="auto", lora=lora)
            self.model, self.tokenizer = model.eval(), tokenizer
            self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.params = [p for _, p in self.named_params]
            self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
            self.template = get_template(cfg.template, system_prompt=cfg.system_prompt)
            self.update_options = UpdateOptions.from_config(cfg)
            # kl_to_start / teacher=start: a frozen copy of the starting weights (taken before a restart restores
            # later ones)
            needs_start = (cfg.kl_to_start and cfg.loss == "policy_gradient") or cfg.teacher == "start"
            self.reference_model = copy.deepcopy(model).eval().requires_grad_(False) if needs_start else None
            self.device = next(model.parameters()).device
            self.weights_lock = threading.Lock()
            self.version = 0
            self.undo_stack: list[tuple[int, dict]] = []
            self._since_checkpoint = 0
            self._queue: queue.Queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="sdpo-chat-updates", daemon=True)
            self._worker.start()
            self.running: int | None = None
            self.restored = self._restore() if restore else {}
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ setup
    def _check_model_options(self) -> None:
        """A restart uses the weights' own model options: options left at their defaults take the
        stored values, a different explicit value is refused."""
        stored = self.store.get_meta("model")
        if stored is None:
            self.store.set_meta("model", self.cfg.model_options())
            return
        defaults = ChatConfig.__dataclass_fields__
        for name in MODEL_OPTIONS:
            mine, theirs = getattr(self.cfg, name), stored.get(name)
            if mine == theirs:
                continue
            if mine == defaults[name].default:
                setattr(self.cfg, name, theirs)
            else:
                raise ChatOptionError(f"--{name} {mine}: the run in {self.run_dir} was started with {theirs}; "
                                      "use another --run_dir for another model")

    def _release(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ answers
    @contextlib.contextmanager
    def _mutation(self):
        """Held while the weights change; the version counts the updates they hold."""
        with self.weights_lock:
            yield
            self.version += 1

    def context_ids(self, messages) -> list[int]:
        return fit_context(self.tokenizer, self.template, messages, self.cfg.max_context_tokens)[0]

    def stream_answer(self, messages, *, temperature: float | None = None, max_new_tokens: int | None = None,
                      info: dict | None = None) -> Iterator[str]:
        """Yield the answer's text as it grows. ``info`` receives ``ids`` (token ids, EOS kept when the
        answer ended) and ``version`` (the weights that wrote it) when it is done."""
        from transformers import TextIteratorStreamer

        tok = self.tokenizer
        ctx = self.context_ids(messages)
        temperature = self.cfg.temperature if temperature is None else temperature
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        out: dict = {}

        def run():
            try:
                ids = torch.tensor([ctx], device=self.device)
                sampling = dict(do_sample=True, temperature=temperature, top_p=self.cfg.top_p, top_k=None) \
                    if temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
                with self.weights_lock, torch.no_grad():  # one version of the weights for the whole answer
                    out["version"] = self.version
                    gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                              max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
                                              eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                                              streamer=streamer, **sampling)
                row = gen[0, len(ctx):].tolist()
                if tok.eos_token_id in row:
                    row = row[: row.index(tok.eos_token_id) + 1]
                out["ids"] = row
            except BaseException as err:  # reported to the reader below
                out["error"] = err
                streamer.end()

        thread = threading.Thread(target=run, name="sdpo-chat-generate", daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text
        thread.join()
        if "error" in out:
            raise out["error"]
        final = tok.decode(out["ids"], skip_special_tokens=True)
        if info is not None:
            info.update(ids=out["ids"], version=out["version"], text=final)
        if final != text:
            yield final

    def answer(self, messages, **kwargs) -> tuple[str, list[int], int]:
        info: dict = {}
        for _ in self.stream_answer(messages, info=info, **kwargs):
            pass
        return info["text"], info["ids"], info["version"]

    # ------------------------------------------------------------------ conversations
    def new_conversation(self) -> int:
        return self.store.new_conversation()

    def messages(self, conversation_id: int) -> list[dict]:
        return [{"role": t["role"], "content": t["content"]}
                for t in self.store.turns(conversation_id, complete_only=True)]

    def receive(self, conversation_id: int, text: str, *, learn: bool | None = None, source: str = "chat") -> dict:
        """Record the user's message. If it follows an answer it is that answer's follow-up: an
        interaction is recorded (``pending``, or ``collected`` when not learning). Returns the
        messages to answer and the interaction id (or None). Call :meth:`learn` next."""
        text = text.strip()
        if not text:
            raise ChatError("empty message")
        turns = self.store.turns(conversation_id, complete_only=True)
        if not turns:
            self.store.set_title(conversation_id, text[:60])
        user_turn = self.store.add_turn(conversation_id, "user", text)
        interaction = None
        if turns and turns[-1]["role"] == "assistant" and turns[-1]["token_ids"]:
            learn = (not self.cfg.collect_only) if learn is None else learn
            x = [{"role": t["role"], "content": t["content"]} for t in turns[:-1]]
            answer = turns[-1]
            interaction = self.store.add_interaction(conversation_id, answer["id"], user_turn, x, answer["content"],
                                                     answer["token_ids"], text, "pending" if learn else "collected",
                                                     source=source)
        messages = [{"role": t["role"], "content": t["content"]} for t in turns] + [{"role": "user", "content": text}]
        return {"messages": messages, "interaction": interaction}

    def learn(self, interaction: int | None) -> None:
        """The update for a recorded follow-up: now (sync), queued (async), or only its signal
        (collected)."""
        if interaction is None:
            return
        if self.store.interaction(interaction)["status"] == "collected":
            self._record_signal(interaction)
        elif self.cfg.update_mode == "sync":
            self.apply(interaction)
        else:
            self._queue.put(interaction)

    def reply(self, conversation_id: int, messages, *, info: dict | None = None) -> Iterator[str]:
        """Stream the answer to ``messages``; the turn is committed (complete) before the last yield."""
        answer_turn = self.store.add_turn(conversation_id, "assistant", "", status="streaming")
        done: dict = {}
        pieces = self.stream_answer(messages, info=done)
        last = ""
        for last in pieces:
            if "ids" in done:  # the final text: commit first, then show it
                break
            yield last
        self.store.finish_turn(answer_turn, done["text"], done["ids"])
        self.store.set_turn_version(answer_turn, done["version"])
        if info is not None:
            info.update(done, answer_turn=answer_turn)
        yield done["text"]

    def send(self, conversation_id: int, text: str, *, learn: bool | None = None,
             info: dict | None = None) -> Iterator[str]:
        """:meth:`receive`, :meth:`learn`, then :meth:`reply` (streamed)."""
        got = self.receive(conversation_id, text, learn=learn)
        self.learn(got["interaction"])
        if info is not None:
            info["interaction"] = got["interaction"]
        yield from self.reply(conversation_id, got["messages"], info=info)

    # ------------------------------------------------------------------ updates
    def _work(self) -> None:
        while True:
            iid = self._queue.get()
            try:
                if iid is None:
                    return
                self.apply(iid)
            except Exception as err:  # recorded on the row by apply; the worker keeps going
                self.log(f"sdpo chat: update of interaction {iid} failed: {err}")
            finally:
                self._queue.task_done()

    def wait_idle(self) -> None:
        """Until every queued update has finished."""
        self._queue.join()

    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def _signal_fields(self, row: dict, student, teacher) -> dict:
        values = (teacher - student).tolist()
        tokens = token_strings(self.tokenizer, row["response_ids"])[: len(values)]
        mean = sum(values) / len(values) if values else 0.0
        return dict(signal_tokens=tokens, signal_values=values, signal_mean=mean,
                    signal_abs_mean=sum(abs(v) for v in values) / len(values) if values else 0.0)

    def _record_signal(self, iid: int) -> None:
        """Collect-only: the signal is computed and stored, the weights do not change."""
        row = self.store.interaction(iid)
        tok = self.tokenizer
        student_ctx = self.context_ids(row["x"])
        teacher_ctx = fit_context(tok, self.template, row["x"], self.cfg.max_context_tokens, followup=row["o"])[0]
        with torch.no_grad():
            s, q = hindsight_logprobs(self.model, [EncodedExample(student_ctx, teacher_ctx,
                                                                  row["response_ids"] or [tok.eos_token_id])],
                                      pad_token_id=tok.pad_token_id)
        self.store.update_interaction(iid, **self._signal_fields(row, s[0], q[0]))

    def apply(self, iid: int, *, replay: bool = False) -> dict:
        """One SDPO update on interaction ``iid``; its row records the signal, loss and metrics."""
        row = self.store.interaction(iid)
        self.store.update_interaction(iid, status="running", started=time.time())
        self.running = iid
        snapshot: dict = {}

        def keep_for_undo():
            if self.cfg.undo_depth:
                snapshot["params"] = [p.detach().clone() for p in self.params]
                snapshot["optimizer"] = copy.deepcopy(self.optimizer.state_dict())

        try:
            example = UpdateExample(row["x"], row["response_ids"], row["o"], context=self.context_ids(row["x"]))
            result = sdpo_update(self.model, self.optimizer, self.tokenizer, self.template, [example],
                                 self.update_options, step_lock=self._mutation(), before_step=keep_for_undo,
                                 reference_model=self.reference_model)
        except Exception as err:
            self.store.update_interaction(iid, status="failed", error=f"{type(err).__name__}: {err}",
                                          finished=time.time())
            raise
        finally:
            self.running = None
        if snapshot:
            self.undo_stack.append((iid, snapshot))
            del self.undo_stack[: -self.cfg.undo_depth]
        metrics = {"loss": result.loss, **result.stats, **result.timings, "version": self.version}
        fields = self._signal_fields(row, result.student[0], result.teacher[0])
        self.store.update_interaction(iid, status="applied", seq=row["seq"] if replay and row["seq"] else
                                      self.store.next_seq(), loss=result.loss, metrics=metrics,
                                      finished=time.time(), **fields)
        self._since_checkpoint += 1
        if not replay and self._since_checkpoint >= self.cfg.save_every:
            self.save_checkpoint()
        return metrics

    def undo(self, n: int = 1) -> list[int]:
        """Revert the last ``n`` updates (weights and optimizer state exactly as before them); their
        interactions are marked undone and excluded. Returns their ids."""
        self.wait_idle()
        if n < 1:
            raise ChatError("undo: the number of updates must be >= 1")
        if n > len(self.undo_stack):
            raise ChatError(f"undo: only {len(self.undo_stack)} update(s) can be undone "
                            f"(--undo_depth {self.cfg.undo_depth} keeps the last ones)")
        popped = [self.undo_stack.pop() for _ in range(n)]
        snapshot = popped[-1][1]
        with self.weights_lock:
            for p, saved in zip(self.params, snapshot["params"]):
                p.data.copy_(saved)
            self.optimizer.load_state_dict(snapshot["optimizer"])
            self.version -= n
        ids = [iid for iid, _ in popped]
        self.save_checkpoint(applied=[r["id"] for r in self.store.applied() if r["id"] not in ids])
        for iid in ids:
            self.store.update_interaction(iid, status="undone", excluded=1)
        return ids

    # ------------------------------------------------------------------ checkpoints
    def _checkpoints(self) -> list[Path]:
        root = self.run_dir / CHECKPOINTS
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.name.startswith("checkpoint-") and p.name[11:].isdigit()
                 and (p / STATE).is_file()]
        return sorted(found, key=lambda p: int(p.name[11:]))

    def save_checkpoint(self, applied: list[int] | None = None) -> Path:
        """Trainable weights, optimizer state and the ids of the updates they hold, written under a
        temporary name and renamed when complete."""
        from safetensors.torch import save_file

        root = self.run_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        with self.weights_lock:
            if applied is None:
                applied = [r["id"] for r in self.store.applied()]
            tensors = {n: p.detach().to("cpu", copy=True).contiguous() for n, p in self.named_params}
            optim = copy.deepcopy(self.optimizer.state_dict())
            version = self.version
        existing = self._checkpoints()
        number = (int(existing[-1].name[11:]) + 1) if existing else 1
        final = root / f"checkpoint-{number}"
        tmp = root / f"checkpoint-{number}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        state = {"applied": applied, "version": version, "model": self.cfg.model_options(), "time": time.time()}
        (tmp / STATE).write_text(json.dumps(state))  # last: marks the checkpoint complete
        os.replace(tmp, final)
        with contextlib.suppress(OSError):
            fd = os.open(root, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        self.store.add_checkpoint(str(final), applied)
        self._since_checkpoint = 0
        if self.cfg.save_total_limit:
            for old in self._checkpoints()[: -self.cfg.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _load_checkpoint(self, path: Path) -> dict:
        from safetensors.torch import load_file

        state = json.loads((path / STATE).read_text())
        tensors = load_file(str(path / "trainable.safetensors"))
        names = {n for n, _ in self.named_params}
        if set(tensors) != names:
            raise ChatOptionError(f"{path}: its weights do not fit the model (different --model_name_or_path or "
                                  "LoRA options?)")
        with self.weights_lock:
            for n, p in self.named_params:
                p.data.copy_(tensors[n].to(p.device))
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        return state

    def _restore(self) -> dict:
        """Back to where the last server stopped: newest checkpoint, then the updates committed after it."""
        for tmp in (self.run_dir / CHECKPOINTS).glob("*.tmp") if (self.run_dir / CHECKPOINTS).is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)  # a checkpoint write that was killed
        marked = self.store.mark_interrupted()
        applied = self.store.applied()
        checkpoints = self._checkpoints()
        in_checkpoint: set[int] = set()
        report = {**marked, "checkpoint": None, "replayed": 0, "conversations": len(self.store.conversations())}
        if checkpoints:
            state = self._load_checkpoint(checkpoints[-1])
            in_checkpoint = set(state["applied"])
            report["checkpoint"] = str(checkpoints[-1])
        self.version = len(in_checkpoint & {r["id"] for r in applied})
        stray = in_checkpoint - {r["id"] for r in applied}
        if stray:
            self.log(f"sdpo chat: the checkpoint holds update(s) {sorted(stray)} that the database does not list "
                     "as applied")
            self.version += len(stray)
        again = [r for r in applied if r["id"] not in in_checkpoint]
        queued = self.store.interactions("status = 'pending'")
        for r in again:
            self.apply(r["id"], replay=True)
        for r in queued:
            self.apply(r["id"])
        report["replayed"] = len(again) + len(queued)
        if again or queued:
            self.save_checkpoint()
        self._since_checkpoint = 0
        return report

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        applied = self.store.query("SELECT COUNT(*) AS n FROM interactions WHERE status = 'applied'")[0]["n"]
        return {"version": self.version, "applied": applied, "pending": self.pending(), "running": self.running,
                "mode": "collect only" if self.cfg.collect_only else self.cfg.update_mode,
                "undoable": len(self.undo_stack)}

    def close(self, *, checkpoint: bool = True) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.wait_idle()
        self._queue.put(None)
        if checkpoint and self._since_checkpoint:
            self.save_checkpoint()
        self.store.close()
        self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
