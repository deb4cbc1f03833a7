"""Training metrics as the job master sees them: each worker's batches, checked, limited
per replica, written as TensorBoard events, and handed on to the control plane.

Workers send ``metrics`` about once a second (:mod:`tidemill.runtime._metrics`). The
master never trusts the wire: each report is checked again, a replica sending more than
:data:`REPORTS_PER_S` is cut to that rate, and a job cannot grow past
:data:`~tidemill.api.metrics.MAX_NAMES_PER_JOB` names. What is dropped becomes a
Warning event (at most one per replica and reason a minute), never an error that would
cost the worker its connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidemill.api.metrics import MAX_NAMES_PER_JOB, MAX_SCALARS_PER_REPORT, metric_problem
from tidemill.master.tensorboard import EventFiles
from tidemill.wire import Metrics

REPORTS_PER_S = 100.0
BURST = 200
"""Per replica: twice the 50 reports/s a busy training loop sends, bursts to BURST."""
WARN_EVERY_S = 60.0
MAX_HELD = 50_000
"""Reports held for the control plane while it is away; the oldest go beyond it."""

Notice = tuple[str, str, str]
"""(reason, message, replica) of a Warning event."""


@dataclass
class _Bucket:
    tokens: float = BURST
    at: float = 0.0
    dropped: int = 0


@dataclass
class MetricsBook:
    tensorboard: EventFiles | None = None
    held: list[dict[str, Any]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _warned: dict[tuple[str, str], float] = field(default_factory=dict)

    def add(self, replica: str, message: Metrics, now: float) -> list[Notice]:
        """Keep ``replica``'s reports that pass; the warnings to post as events."""
        warnings: list[Notice] = []
        refused = dict(message.refused or {})
        bucket = self._buckets.setdefault(replica, _Bucket(at=now))
        bucket.tokens = min(BURST, bucket.tokens + (now - bucket.at) * REPORTS_PER_S)
        bucket.at = now
        for raw in message.reports:
            problem = self._problem(raw)
            if problem is not None:
                refused[problem] = refused.get(problem, 0) + 1
                continue
            if bucket.tokens < 1:
                bucket.dropped += 1
                continue
            bucket.tokens -= 1
            step, wall_time, values = int(raw[0]), float(raw[1]), raw[2]
            self.names.update(values)
            point = {"replica": replica, "step": step, "time": wall_time, "values": values}
            self.held.append(point)
            if self.tensorboard is not None:
                self.tensorboard.write(replica, step, wall_time, values)
        if len(self.held) > MAX_HELD:
            del self.held[: len(self.held) - MAX_HELD]
        if refused and self._due(replica, "MetricsRefused", now):
            total = sum(int(count) for count in refused.values() if isinstance(count, int))
            reasons = "; ".join(str(reason) for reason in list(refused)[:3])
            text = f"{replica}: refused {total} metric report(s): {reasons}"
            warnings.append(("MetricsRefused", text, replica))
        if bucket.dropped and self._due(replica, "MetricsRateLimited", now):
            text = (
                f"{replica} reports metrics faster than {REPORTS_PER_S:g}/s (bursts of "
                f"{BURST}); dropped {bucket.dropped} report(s). Report every few steps, "
                "not several times a step"
            )
            bucket.dropped = 0
            warnings.append(("MetricsRateLimited", text, replica))
        return warnings

    def take(self) -> list[dict[str, Any]]:
        """The reports kept since the last call, oldest first."""
        held, self.held = self.held, []
        if self.tensorboard is not None:
            self.tensorboard.flush()
        return held

    def give_back(self, points: list[dict[str, Any]]) -> None:
        """Reports the control plane did not take: tried again with the next ones."""
        self.held[:0] = points[-MAX_HELD:]

    def _problem(self, raw: Any) -> str | None:
        if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[2], dict)):
            return "a report is not [step, time, {name: value}]"
        step, wall_time, values = raw
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            return f"step {step!r:.40} is not a non-negative integer"
        if isinstance(wall_time, bool) or not isinstance(wall_time, int | float):
            return f"time {wall_time!r:.40} is not a number"
        if not values or len(values) > MAX_SCALARS_PER_REPORT:
            return f"a report holds 1 to {MAX_SCALARS_PER_REPORT} metrics, not {len(values)}"
        for name, value in values.items():
            if (problem := metric_problem(name, value)) is not None:
                return problem
        new = set(values) - self.names
        if new and len(self.names) + len(new) > MAX_NAMES_PER_JOB:
            return (
                f"the job already reports {len(self.names)} metric names; at most "
                f"{MAX_NAMES_PER_JOB} per job (new: {', '.join(sorted(new)[:3])})"
            )
        return None

    def _due(self, replica: str, reason: str, now: float) -> bool:
        last = self._warned.get((replica, reason))
        if last is not None and now - last < WARN_EVERY_S:
            return False
        self._warned[(replica, reason)] = now
        return True
