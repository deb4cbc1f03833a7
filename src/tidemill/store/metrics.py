"""Training metrics in the store: a bounded history of reports per job, and the latest
value of each (replica, name).

Kept apart from :mod:`tidemill.store.store` (one module, one job); every function works
inside a transaction the caller holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select

from tidemill.store.store import Tx
from tidemill.store.tables import LatestMetricRow, MetricRow


def add_metric_points(tx: Tx, job: str, points: Sequence[dict[str, Any]], keep: int) -> None:
    """Append ``points`` ({replica, step, time, values}) to ``job``'s history, move its
    latest values on, and drop its oldest reports beyond ``keep``."""
    session = tx.session
    session.add_all(
        MetricRow(job=job, replica=p["replica"], step=p["step"], time=p["time"], values=p["values"])
        for p in points
    )
    latest: dict[tuple[str, str], tuple[int, float, float]] = {}
    for p in points:
        for name, value in p["values"].items():
            latest[(p["replica"], name)] = (p["step"], float(value), p["time"])
    stored = {
        (row.replica, row.name): row
        for row in session.scalars(select(LatestMetricRow).where(LatestMetricRow.job == job))
    }
    for (replica, name), (step, value, at) in latest.items():
        row = stored.get((replica, name))
        if row is None:
            session.add(
                LatestMetricRow(
                    job=job, replica=replica, name=name, step=step, value=value, time=at
                )
            )
        elif (step, at) >= (row.step, row.time):
            row.step, row.value, row.time = step, value, at
    session.flush()
    oldest_kept = session.scalar(
        select(MetricRow.id)
        .where(MetricRow.job == job)
        .order_by(MetricRow.id.desc())
        .offset(keep - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(delete(MetricRow).where(MetricRow.job == job, MetricRow.id < oldest_kept))


def metric_points(
    tx: Tx, job: str, replica: str | None = None, since_step: int = -1, limit: int = 10_000
) -> list[MetricRow]:
    """``job``'s reports after ``since_step``, by step (then arrival), at most ``limit``."""
    stmt = (
        select(MetricRow)
        .where(MetricRow.job == job, MetricRow.step > since_step)
        .order_by(MetricRow.step, MetricRow.id)
        .limit(limit)
    )
    if replica is not None:
        stmt = stmt.where(MetricRow.replica == replica)
    return list(tx.session.scalars(stmt))


def metric_count(tx: Tx, job: str) -> int:
    return int(tx.session.scalar(select(func.count()).where(MetricRow.job == job)) or 0)


def latest_metrics(tx: Tx, jobs: Sequence[str] | None = None) -> list[LatestMetricRow]:
    """The latest value of every (job, replica, name), of ``jobs`` (all when None)."""
    stmt = select(LatestMetricRow).order_by(
        LatestMetricRow.job, LatestMetricRow.replica, LatestMetricRow.name
    )
    if jobs is not None:
        stmt = stmt.where(LatestMetricRow.job.in_(list(jobs)))
    return list(tx.session.scalars(stmt))
