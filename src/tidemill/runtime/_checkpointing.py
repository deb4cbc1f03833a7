"""Durable checkpoints inside one worker: rank 0 saves, a group with no state restores.

Saving costs the training thread nothing beyond the commit it already makes: a due
:class:`~tidemill.runtime.elastic_state.Committed` (an immutable copy) goes to the
writer thread, which persists it with DCP while training goes on; if a write is still
running the newest due commit waits in its place. Each save, failure, skipped corrupt
checkpoint and restore is reported to the job master, which turns it into an event and,
once a save is durable, commits the Kafka offsets that checkpoint holds (never before:
a whole-job loss then replays exactly what the checkpoint had not trained).

Restoring: when a group forms and none of its members holds state (the first start, or
every worker was lost, preempted, or killed with the master), the master marks the
epoch ``restore``; its source rank loads the newest valid checkpoint of the job, else of
``resumeFrom``, and the usual broadcast hands it to every rank, at any world size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tidemill.api.checkpoint import CheckpointPlan
from tidemill.checkpoint import (
    CheckpointMismatch,
    CheckpointStore,
    CheckpointWriter,
    Loaded,
    Manifest,
    single_checkpoint,
)
from tidemill.runtime.elastic_state import CommitHook, Committed, ElasticState
from tidemill.wire import CheckpointReport

PARTS_TIMEOUT_S = 600.0
"""How long a due commit waits for the parts other processes write beside it (the
parameter servers' table snapshots) before the checkpoint is given up as failed."""
FINAL_FLUSH_S = 600.0
"""How long the last save (training done, or the worker asked to stop) may take; a
worker stopped for good is killed after its grace period whatever this says."""
Report = Callable[[CheckpointReport], object]
PartsCheck = Callable[[Committed, float], str | None]
"""(committed, timeout_s) -> None once the parts it names are complete, else why not."""


class Checkpointing:
    """One worker's part in durable checkpoints (see the module docstring)."""

    def __init__(self, plan: CheckpointPlan, job: str | None, report: Report) -> None:
        self.plan = plan
        self.report = report
        self.store = CheckpointStore(plan.url, plan.keep)
        self.writer = CheckpointWriter(self.store, job, self._saved, self._failed)
        self._listener: CommitHook | None = None
        self._submitted: int | None = None
        """Step of the newest commit handed to the writer."""
        self._submitted_at = time.monotonic()
        self._decided: tuple[int, bool] | None = None
        """(step, saved?) decided by :meth:`will_save` before that step's commit copy."""
        self._forced = False
        self._parts: list[PartsCheck] = []
        self._waiting = _Latest()
        """Due commits whose parts are still being written elsewhere (latest wins)."""

    def add_parts(self, check: PartsCheck) -> None:
        """Before a due commit is written, ``check`` waits for the parts other processes
        write for it (a checkpoint is visible, and its data positions durable, only once
        all of it is): the manifest never names a snapshot that is not there."""
        self._parts.append(check)

    # --- saving (rank 0) ----------------------------------------------------------------

    def will_save(self, step: int) -> bool:
        """Whether the commit of ``step`` now being made will be saved: a commit hook
        asks (the parameter servers then snapshot their tables at the same cut) and
        the save follows the answer."""
        base = self._submitted or 0
        forced, self._forced = self._forced, False
        elapsed = time.monotonic() - self._submitted_at
        due = step > base and (forced or self.plan.due(step - base, elapsed))
        self._decided = (step, due)
        return due

    def save_next(self) -> None:
        """Save the next commit whether due or not (a worker stopped for good saves the
        step it reached, through the same commit as every other save)."""
        self._forced = True

    def lead(self, state: ElasticState) -> None:
        """This worker is rank 0 of the new epoch: save its due commits from now on."""
        self.follow()
        if self._submitted is None:
            self._submitted = state.committed_step
            self._submitted_at = time.monotonic()
        self._listener = state.add_commit_listener(self._on_commit)
        self.writer.prepare(state.committed)

    def follow(self) -> None:
        """Not rank 0 (or between epochs): save nothing."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.remove()

    def final(self, committed: Committed, timeout_s: float = FINAL_FLUSH_S) -> bool:
        """Save ``committed`` unless it already is, and wait for the writer; False when
        the wait ran out (the write goes on, and is partial if the process dies). A job
        whose checkpoints have parts saves only commits cut as saves (``save_next``; the
        data loader asks for one when its data ends, so the training function's last
        commit is saved with its final positions)."""
        started = time.monotonic()
        if self._submitted != committed.step and not self._parts:
            self._submit(committed)  # with parts, only commits cut as saves are saved
        if not self._waiting.idle(timeout_s):
            return False
        return self.writer.flush(max(0.0, timeout_s - (time.monotonic() - started)))

    def close(self, timeout_s: float) -> None:
        self.follow()
        self.writer.close(timeout_s)

    def _on_commit(self, committed: Committed) -> None:
        decided, self._decided = self._decided, None
        if decided is not None and decided[0] == committed.step:
            due = decided[1]
        else:
            due = self.will_save(committed.step)
        if due:
            self._submit(committed)

    def _submit(self, committed: Committed) -> None:
        self._submitted, self._submitted_at = committed.step, time.monotonic()
        if not self._parts:
            self.writer.submit(committed)
            return
        self._waiting.put(committed, self._write_when_complete)

    def _write_when_complete(self, committed: Committed) -> None:
        """On the waiting thread: hand ``committed`` to the writer once its parts are."""
        for check in self._parts:
            problem = check(committed, PARTS_TIMEOUT_S)
            if problem is not None:
                self._failed(committed.step, problem)
                return
        self.writer.submit(committed)

    def _saved(self, manifest: Manifest) -> None:
        text = (
            f"checkpoint at step {manifest.step} saved in {manifest.duration_s:.2f} s "
            f"({manifest.size_bytes / 2**20:.1f} MiB) to {self.plan.url}"
        )
        self.report(CheckpointReport("saved", text, manifest.step, manifest.data))

    def _failed(self, step: int, why: str) -> None:
        text = (
            f"checkpoint at step {step} could not be saved to {self.plan.url}: {why}; "
            "training goes on and the previous checkpoint is kept"
        )
        self.report(CheckpointReport("failed", text, step))

    # --- restoring (the source rank of a group with no state) ---------------------------

    def restore(self, state: ElasticState) -> bool:
        """Adopt the newest valid checkpoint of the job, else of ``resumeFrom``; False
        when there is none (a fresh start). A checkpoint that does not fit the model
        raises :class:`CheckpointMismatch` after reporting it."""
        started = time.monotonic()
        for url in (self.plan.url, self.plan.resume_from):
            if url is None:
                continue
            try:
                loaded = _load(url, state)
            except CheckpointMismatch as exc:
                self.report(CheckpointReport("mismatch", str(exc)))
                raise
            for skipped in loaded.skipped:
                text = f"skipped checkpoint {skipped.name} in {url}: {skipped.reason}"
                self.report(CheckpointReport("skipped", text))
            if loaded.committed is None:
                continue
            state.adopt(loaded.committed)
            self._submitted, self._submitted_at = state.step, time.monotonic()
            text = (
                f"restored step {state.step} (trained at world size {state.world_size}) "
                f"from {url} in {time.monotonic() - started:.2f} s"
            )
            self.report(CheckpointReport("restored", text, state.step, state.data))
            return True
        return False


def _load(url: str, state: ElasticState) -> Loaded:
    """The newest usable checkpoint in the folder ``url``, or the one step folder it is."""
    store = CheckpointStore(url)
    if not store.list() and single_checkpoint(url) is not None:
        return store.load(url, state.model, state.optimizer)
    return store.load_newest(state.model, state.optimizer)


class _Latest:
    """One daemon thread that runs ``action`` on the newest item put (older ones still
    waiting are dropped: the newest due commit wins, as in the writer)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._item: Committed | None = None
        self._action: Callable[[Committed], None] | None = None
        self._busy = False
        self._thread: threading.Thread | None = None

    def put(self, item: Committed, action: Callable[[Committed], None]) -> None:
        with self._lock:
            self._item, self._action = item, action
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="checkpoint-parts", daemon=True
                )
                self._thread.start()
            self._lock.notify_all()

    def idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False when ``timeout_s`` ran out."""
        with self._lock:
            return self._lock.wait_for(lambda: self._item is None and not self._busy, timeout_s)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._item is not None)
                item, action = self._item, self._action
                self._item, self._busy = None, True
            try:
                if item is not None and action is not None:
                    action(item)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()
