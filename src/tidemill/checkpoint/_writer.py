"""A background thread that saves committed states, so a checkpoint never stalls a step.

Training commits faster than storage may write. Only the newest state is worth
writing, so at most one waits: a newer submit replaces it. That bounds memory to the
live state, the one being written and the one waiting (plus, with a writer process,
a shared-memory copy of what does not lie in shared memory already), whatever the
storage speed.

On Linux the thread hands each state of :data:`PROCESS_MIN_BYTES` or more to a writer
process (:mod:`tidemill.checkpoint._writer_process`), so the save's Python work never
holds the training process's interpreter lock. Smaller states, all states elsewhere,
and ``memory://`` stores (which live in this process) are saved on the thread itself.

The thread and the process lower their scheduling priority (:data:`WRITER_NICE`):
when training keeps every core busy, a writer at normal priority takes its share of
them and steps slow down for the whole write. Measured on the 2-core development
machine with both cores computing and a 100 MB state written in a loop: steps took
1.9x as long at nice 0, 1.03x at nice 10 (each write 1.8x as long), 0.94x at nice 19
(writes 3.2x).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from tidemill.checkpoint._errors import CheckpointError
from tidemill.checkpoint._manifest import Manifest
from tidemill.checkpoint._staging import tensor_bytes
from tidemill.checkpoint._store import CheckpointStore
from tidemill.checkpoint._writer_process import WriterProcess
from tidemill.runtime.elastic_state import Committed

log = logging.getLogger(__name__)

WRITER_NICE = 10
"""Added to the writer thread's nice value (Linux: per thread); a write yields to steps."""
PROCESS_MIN_BYTES = 16 << 20
"""States of at least this many tensor bytes are saved by the writer process. On a
thread, a save holds the interpreter lock for about 1 ms per MB (measured on the 2-core
development machine, DCP), so a small state costs the training thread a few ms; a
writer process costs a few hundred MB of memory (Python and torch) and seconds to start."""


class CheckpointWriter:
    """Saves submitted states through ``store`` on one daemon thread, newest first.

    ``on_saved(manifest)`` and ``on_failed(step, error_text)`` run on that thread after
    each write; an exception they raise is logged and the thread goes on.

    Example::

        >>> import tempfile, torch
        >>> folder = tempfile.TemporaryDirectory()
        >>> from tidemill.checkpoint import CheckpointStore, CheckpointWriter
        >>> from tidemill.runtime import ElasticState
        >>> state = ElasticState(torch.nn.Linear(2, 1))
        >>> saved = []
        >>> writer = CheckpointWriter(
        ...     CheckpointStore(folder.name), None,
        ...     on_saved=lambda m: saved.append(m.step), on_failed=print)
        >>> for step in (1, 2, 3):
        ...     state.step = step
        ...     state.commit()
        ...     writer.submit(state.committed)
        >>> writer.close(timeout_s=60), saved[-1]
        (True, 3)
        >>> folder.cleanup()
    """

    def __init__(
        self,
        store: CheckpointStore,
        job: str | None,
        on_saved: Callable[[Manifest], None],
        on_failed: Callable[[int, str], None],
        *,
        process: bool | None = None,
        process_min_bytes: int = PROCESS_MIN_BYTES,
    ) -> None:
        self.store = store
        self.job = job
        if process is None:
            process = sys.platform == "linux" and not store.url.startswith("memory://")
        self.process = WriterProcess(store.url, store.keep, WRITER_NICE) if process else None
        """Saves large states through a writer process (``process=True``; the default on
        Linux but for ``memory://``), or None: every state on the writer thread."""
        self.process_min_bytes = process_min_bytes
        self._on_saved = on_saved
        self._on_failed = on_failed
        self._changed = threading.Condition()
        self._waiting: Committed | None = None
        self._writing = False
        self._closed = False
        self._prepare = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """A state is being written or waits to be."""
        with self._changed:
            return self._writing or self._waiting is not None

    def prepare(self, like: Committed) -> None:
        """Start the writer process now, in the background, when states like ``like`` will
        go through it: the first checkpoint then does not wait for it to import torch (a
        few seconds). Returns at once."""
        with self._changed:
            if self.process is None or self._closed:
                return
            if tensor_bytes(like) < self.process_min_bytes:
                return
            self._prepare = True
            self._wake()

    def submit(self, committed: Committed) -> None:
        """Queue ``committed`` for writing and return at once; it replaces any waiting one."""
        with self._changed:
            if self._closed:
                raise RuntimeError(
                    f"CheckpointWriter for {self.store.url} is closed; step {committed.step}"
                    " was not submitted (create a new writer)"
                )
            self._waiting = committed
            self._wake()

    def _wake(self) -> None:
        """Start the thread if needed and wake it (call holding ``_changed``)."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="tidemill-checkpoint-writer", daemon=True
            )
            self._thread.start()
        self._changed.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing waits or is being written: True, or False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._writing or self._waiting is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def close(self, timeout_s: float) -> bool:
        """Flush, then stop the thread. False when the flush timed out: the write in
        progress still finishes, and a state still waiting is dropped."""
        deadline = time.monotonic() + timeout_s
        flushed = self.flush(timeout_s)
        with self._changed:
            self._closed = True
            self._waiting = None
            self._changed.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        return flushed

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._changed:
                while self._waiting is None and not self._closed and not self._prepare:
                    self._changed.wait()
                prepare, self._prepare = self._prepare, False
                closing = self._waiting is None and self._closed
                committed, self._waiting = self._waiting, None
                self._writing = committed is not None
            if closing:
                if self.process is not None:
                    self.process.close()
                return
            if prepare:
                self._start_process()
            if committed is None:
                continue
            try:
                self._write(committed)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()

    def _start_process(self) -> None:
        try:
            if self.process is not None:
                self.process.start()
        except OSError as exc:
            log.warning("checkpoint writer process did not start (the next save retries): %s", exc)

    def _write(self, committed: Committed) -> None:
        try:
            manifest = self._save(committed)
        except CheckpointError as exc:
            self._call(self._on_failed, committed.step, str(exc))
            return
        except Exception as exc:
            log.exception("checkpoint of step %d failed unexpectedly", committed.step)
            self._call(self._on_failed, committed.step, f"{type(exc).__name__}: {exc}")
            return
        self._call(self._on_saved, manifest)

    def _save(self, committed: Committed) -> Manifest:
        committed.wait()  # its parameters may still be being copied
        process = self.process
        if process is None or tensor_bytes(committed) < self.process_min_bytes:
            return self.store.save(committed, self.job)
        try:
            return process.save(committed, self.job)
        except OSError as exc:  # no shared memory or no process here (a save's own
            # failure is a CheckpointError): this and later saves run on the thread
            log.warning(
                "checkpoint writer process unavailable (%s); saving on the writer thread", exc
            )
            process.close()
            self.process = None
            return self.store.save(committed, self.job)

    def _call(self, callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("checkpoint callback %r raised; the writer goes on", callback)


def _lower_priority() -> None:
    """Lower the calling thread's priority where the OS allows it per thread (Linux)."""
    if sys.platform != "linux":
        return
    try:
        thread = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, nice + WRITER_NICE)
    except OSError as exc:
        log.debug("checkpoint writer keeps its priority: %s", exc)
