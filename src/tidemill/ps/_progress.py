"""Per table, which steps' pushes are applied, and when a pull of step s may run.

Sync: the pushes of step s from all ``world`` ranks of the current epoch are held until
the last one arrives, then applied once, concatenated in rank order (so the sum is
deterministic); a pull of step s waits for step s-1. Async: each push applies on
arrival; a pull of step s waits until every rank's applied pushes reach
``s - 1 - max_staleness``. A frame from a newer epoch resets the bookkeeping (the ranks
restarted from a common step); one from an older epoch is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tidemill.ps._wire import ErrorCode, Header

Ids = npt.NDArray[np.int64]
Grads = npt.NDArray[np.float32]
Apply = Callable[[int, Ids, Grads], None]


class Refused(Exception):
    """A request the shard answers with an error frame (the connection stays open)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Staleness:
    """Steps of other ranks' pushes a pull did not see (0 in sync mode, by construction)."""

    pulls: int = 0
    total_steps: int = 0
    max_steps: int = 0

    def record(self, steps: int) -> None:
        self.pulls += 1
        self.total_steps += steps
        self.max_steps = max(self.max_steps, steps)


@dataclass
class StepGate:
    """The step bookkeeping of one table on one shard; every method is thread-safe."""

    table: str
    consistency: str
    max_staleness: int
    epoch: int = -1
    world: int = 0
    applied_through: int = -1
    staleness: Staleness = field(default_factory=Staleness)
    _rank_applied: dict[int, int] = field(default_factory=dict)
    _pending: dict[int, dict[int, tuple[Ids, Grads]]] = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closed: bool = False

    def push(self, header: Header, ids: Ids, grads: Grads, apply: Apply) -> None:
        """Hold or apply one rank's push of ``header.step``; ``apply`` runs in step order."""
        with self._cond:
            self._enter(header)
            step, rank = header.step, header.rank
            if self.consistency == "async":
                apply(step, ids, grads)
                self._rank_applied[rank] = max(self._rank_applied.get(rank, step), step)
            else:
                held = self._pending.setdefault(step, {})
                if step <= self.applied_through or rank in held:
                    raise Refused(
                        ErrorCode.BAD_REQUEST,
                        f"table {self.table!r}: rank {rank} already pushed step {step}"
                        f" (epoch {self.epoch}); call client.advance() once per training step",
                    )
                held[rank] = (ids, grads)
                self._apply_ready(apply)
            self._cond.notify_all()

    def wait_for_pull(self, header: Header, timeout_s: float) -> None:
        """Block until a pull of ``header.step`` may read, or refuse naming the silent ranks."""
        staleness = self.max_staleness if self.consistency == "async" else 0
        self.wait_applied(header, header.step - 1 - staleness, timeout_s)

    def wait_applied(self, header: Header, needed: int, timeout_s: float) -> None:
        """Block until every rank's pushes through step ``needed`` are applied."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._enter(header)
            while (seen := self._slowest_applied()) < needed:
                left = deadline - time.monotonic()
                if self._closed:
                    raise Refused(ErrorCode.INTERNAL, "the PS server is stopping")
                if header.epoch != self.epoch:
                    raise Refused(
                        ErrorCode.STALE_EPOCH,
                        f"table {self.table!r}: epoch {header.epoch} ended while its pull waited",
                    )
                if left <= 0:
                    raise Refused(ErrorCode.TIMEOUT, self._timeout_message(header, timeout_s))
                self._cond.wait(left)
            self.staleness.record(max(0, header.step - 1 - seen))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget held pushes and progress (after a rollback or load the epoch restarts)."""
        with self._cond:
            self.epoch, self.world, self.applied_through = -1, 0, -1
            self._pending.clear()
            self._rank_applied.clear()
            self._cond.notify_all()

    def _enter(self, header: Header) -> None:
        if header.epoch < self.epoch:
            raise Refused(
                ErrorCode.STALE_EPOCH,
                f"table {self.table!r}: epoch {header.epoch} is over; this shard is in"
                f" epoch {self.epoch} (a replaced worker is still sending)",
            )
        if not 0 <= header.rank < header.world:
            raise Refused(
                ErrorCode.BAD_REQUEST, f"rank {header.rank} is not in 0 .. world {header.world} - 1"
            )
        if header.epoch > self.epoch:
            self.epoch, self.world = header.epoch, header.world
            self.applied_through = header.step - 1
            self._pending.clear()
            self._rank_applied.clear()
            self._cond.notify_all()
        elif header.world != self.world:
            raise Refused(
                ErrorCode.BAD_REQUEST,
                f"epoch {self.epoch} has world {self.world}, rank {header.rank} says"
                f" {header.world}; a new world size needs a new epoch",
            )

    def _apply_ready(self, apply: Apply) -> None:
        while len(held := self._pending.get(self.applied_through + 1, {})) == self.world:
            step = self.applied_through + 1
            del self._pending[step]
            ranks = sorted(held)
            if len(ranks) == 1:
                ids, grads = held[ranks[0]]
            else:
                ids = np.concatenate([held[rank][0] for rank in ranks])
                grads = np.concatenate([held[rank][1] for rank in ranks])
            apply(step, ids, grads)
            self.applied_through = step

    def _slowest_applied(self) -> int:
        if self.consistency == "sync":
            return self.applied_through
        start = self.applied_through  # the epoch's first step - 1
        return min(
            (self._rank_applied.get(rank, start) for rank in range(self.world)), default=start
        )

    def _timeout_message(self, header: Header, timeout_s: float) -> str:
        if self.consistency == "sync":
            step = self.applied_through + 1
            heard = set(self._pending.get(step, {}))
        else:
            step = header.step - 1 - self.max_staleness
            heard = {rank for rank, applied in self._rank_applied.items() if applied >= step}
        silent = [rank for rank in range(self.world) if rank not in heard]
        return (
            f"table {self.table!r}: pull of step {header.step} waited {timeout_s:g}s for the"
            f" pushes of step {step}; not heard from ranks {silent} (epoch {self.epoch},"
            f" world {self.world}); raise PSConfig.pull_timeout_s if they are just slow"
        )
