"""One transaction for a cycle's row changes, with one bad job kept out of it.

Each job's changes are a list of writes on its row. If one raises, the transaction is
rolled back, that job's writes are replaced by its fallback (fail it, naming the cause)
and the transaction runs again: every other job's changes commit in the same cycle.
Engine calls are returned as effects, to be made after the commit; those of an attempt
that rolled back are dropped with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError

from tidemill.store.store import Store, StoreUnavailable, Tx
from tidemill.store.tables import JobRow

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
"""Characters of a cause kept in a job's message (an exception can be huge)."""

Write = Callable[[Tx, JobRow], Sequence[object]]
"""Changes one job's row inside the transaction; returns engine effects for after it."""
Fallback = Callable[[Tx, JobRow, str], Sequence[object]]
"""Fails one job with a message (its own writes raised); returns engine effects."""


def controller_error(exc: BaseException) -> str:
    """The message a job failed by the controller carries: the cause, named."""
    text = f"the controller could not process this job: {type(exc).__name__}: {exc}"
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


@dataclass
class Outcome:
    effects: list[object] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    """job id -> why its own writes were replaced by its fallback"""


class _JobRaised(Exception):
    def __init__(self, job_id: int, cause: Exception) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.cause = cause


def write_jobs(
    store: Store,
    writes: Mapping[int, Sequence[Write]],
    fallback: Fallback,
    broken: Mapping[int, str] | None = None,
    after: Callable[[Tx], Sequence[object]] | None = None,
) -> Outcome:
    """Run ``writes`` (job id -> its writes) in one transaction; ``broken`` jobs (and any
    whose writes raise) get ``fallback`` instead. ``after`` runs last in the same
    transaction. Raises :class:`StoreUnavailable` untouched: the cycle is skipped."""
    failed = dict(broken or {})
    for _ in range(len(writes) + 1):
        effects: list[object] = []
        try:
            with store.transaction() as tx:
                rows = {row.id: row for row in tx.jobs_by_id(sorted({*writes, *failed}))}
                for job_id, row in rows.items():
                    effects += _one(tx, job_id, row, writes.get(job_id, ()), failed, fallback)
                if after is not None:
                    effects += after(tx)
        except _JobRaised as raised:
            log.error(
                "job %s: its changes raised; failing it alone", raised.job_id, exc_info=raised.cause
            )
            if raised.job_id in failed:
                # Its fallback raised too: leave it out of this cycle.
                writes = {k: v for k, v in writes.items() if k != raised.job_id}
                failed.pop(raised.job_id)
                continue
            failed[raised.job_id] = controller_error(raised.cause)
            continue
        return Outcome(effects, failed)
    raise RuntimeError("every job of the cycle raised; giving up on this cycle")


def _one(
    tx: Tx,
    job_id: int,
    row: JobRow,
    writes: Sequence[Write],
    failed: Mapping[int, str],
    fallback: Fallback,
) -> list[object]:
    try:
        if job_id in failed:
            return list(fallback(tx, row, failed[job_id]))
        effects: list[object] = []
        for write in writes:
            effects += write(tx, row)
        tx.session.flush()  # so a row this job cannot write is found as this job's
        return effects
    except (StoreUnavailable, OperationalError):
        raise  # the store's trouble, not the job's: the cycle is skipped
    except Exception as exc:
        raise _JobRaised(job_id, exc) from exc  # (the row may be unreadable now)
