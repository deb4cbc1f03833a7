"""``report(step, **scalars)``: training metrics from any rank, sent to the job master
in batches.

A report is checked (identifier names, finite numbers) and appended to a bounded
buffer; a thread sends the buffer to the job master about once a second on the elastic
loop's own connection, so a step never waits on the network. A report that is
refused (a bad name or value, a full buffer) is dropped, said once on stderr, and
counted: the master turns the counts into a Warning event on the job. The elastic
loop also times its steps here, so every rank reports ``step_time_s`` (and
``samples_per_s`` when it knows the samples per step) by itself: a straggler shows.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tidemill.api.metrics import MAX_SCALARS_PER_REPORT, metric_problem
from tidemill.wire import Metrics

FLUSH_S = 1.0
MAX_PENDING = 10_000
"""Reports held while the master is slow or away; more are refused (counted)."""
BATCH_MAX = 200
"""Reports per message: at 32 names of 64 characters each about 600 KB, under the
wire's 1 MiB line limit."""
MAX_REASONS = 16
"""Distinct refusal reasons counted between two flushes; the rest count as 'other'."""

Send = Callable[[Metrics], bool]


class Reporter:
    """The process's metric buffer and its sending thread (see the module docstring)."""

    def __init__(self, flush_s: float = FLUSH_S, max_pending: int = MAX_PENDING) -> None:
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.under_tidemill = bool(os.environ.get("TIDEMILL_MASTER_ADDR"))
        self._pending: deque[list[Any]] = deque()
        self._unsent: list[list[Any]] = []
        self._refused: dict[str, int] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._send: Send | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._steps = 0
        self._step_s = 0.0
        self._samples = 0
        self._last_step = 0

    def report(self, step: int, scalars: dict[str, Any]) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            self._refuse(f"step {step!r:.40} is not a non-negative integer")
            return
        if not scalars:
            return
        if len(scalars) > MAX_SCALARS_PER_REPORT:
            self._refuse(f"{len(scalars)} metrics in one report; at most {MAX_SCALARS_PER_REPORT}")
            return
        for name, value in scalars.items():
            if (problem := metric_problem(name, value)) is not None:
                self._refuse(problem)
                return
        if self._send is None and not self.under_tidemill:
            return  # alone, on a laptop: nobody to send to
        if len(self._pending) >= self.max_pending:
            self._refuse(
                f"more than {self.max_pending:,} reports waiting for the job master; "
                "report less often (every few steps). Reports are sent while a training "
                "function runs under tidemill.runtime.elastic"
            )
            return
        values = {name: float(value) for name, value in scalars.items()}  # numpy's too
        self._pending.append([step, time.time(), values])

    def step_took(self, step: int, seconds: float, samples: int | None) -> None:
        """One step of the elastic loop took ``seconds`` (boundary vote included)."""
        with self._lock:
            self._steps += 1
            self._step_s += seconds
            self._samples += samples or 0
            self._last_step = step

    def attach(self, send: Send) -> None:
        """Send through ``send`` (the elastic loop's master connection) from now on."""
        self._send = send
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tidemill-metrics", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        """Stop the thread after one last flush (the job's last reports count too)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
        self._send = None

    def flush(self) -> None:
        """Send everything waiting, in batches; what the master did not get waits."""
        send = self._send
        if send is None:
            return
        timing = self._timing()
        if timing is not None:
            self._pending.append(timing)
        with self._lock:
            refused, self._refused = self._refused, {}
        while True:
            reports, self._unsent = self._unsent, []
            while self._pending and len(reports) < BATCH_MAX:
                reports.append(self._pending.popleft())
            if not reports and not refused:
                return
            if not send(Metrics(reports, refused or None)):
                self._unsent = reports
                with self._lock:
                    for reason, count in refused.items():
                        self._refused[reason] = self._refused.get(reason, 0) + count
                return
            refused = {}

    def _timing(self) -> list[Any] | None:
        with self._lock:
            steps, took, samples = self._steps, self._step_s, self._samples
            self._steps, self._step_s, self._samples = 0, 0.0, 0
            step = self._last_step
        if steps == 0 or took <= 0:
            return None
        values = {"step_time_s": took / steps}
        if samples:
            values["samples_per_s"] = samples / took
        return [step, time.time(), values]

    def _refuse(self, reason: str) -> None:
        with self._lock:
            key = reason if reason in self._refused or len(self._refused) < MAX_REASONS else "other"
            self._refused[key] = self._refused.get(key, 0) + 1
            first = key not in self._warned
            self._warned.add(key)
        if first:
            print(f"tidemill: metric report refused: {reason}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()


_reporter = Reporter()


def reporter() -> Reporter:
    return _reporter


def report(step: int, **scalars: float) -> None:
    """Report training metrics for ``step`` from this rank: loss, accuracy, anything numeric.

    Never blocks a step: reports are buffered and sent to the job master about once a
    second, kept by the control plane (``tidemill describe JOB``, ``GET
    /api/v1/jobs/{name}/metrics``, ``/metrics``) and written as TensorBoard event files
    when the job has ``spec.tensorboard.dir``. Names are identifiers, values finite
    numbers; a report that is not is dropped with a warning (once per reason on
    stderr, and as a ``MetricsRefused`` event of the job). Reports go out while a
    training function runs under :func:`tidemill.runtime.elastic` (those made before it
    starts wait for it); run alone, without a job master, it only checks.

    Example::

        >>> import tidemill.runtime as rt
        >>> rt.report(10, loss=0.25, accuracy=0.91)
    """
    _reporter.report(step, scalars)
