"""Cluster utilisation over time: what the cluster offered, what running jobs held, and
each queue's allocation and DRF share, sampled into the store every ``interval_s``.

``/metrics`` gives the present for Prometheus; this keeps the past for the dashboard's
charts, with no Prometheus to run, across restarts of the server. Samples older than
``retention_s`` are dropped as new ones are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tidemill.api.status import QueueUtilization, ResourceView, UtilizationPoint
from tidemill.controller.model import ACTIVE_PHASES
from tidemill.server.views import capacity_of, node_views, queue_views
from tidemill.store.store import Store, StoreUnavailable, Tx
from tidemill.store.tables import UtilizationRow

INTERVAL_S = 15.0
RETENTION_S = 7 * 86_400.0
"""A week at one sample per 15 s: about 40,000 rows."""
MAX_POINTS = 2_000
"""The most points one request returns (a chart is a few hundred pixels wide)."""

log = logging.getLogger(__name__)


def sample(tx: Tx) -> dict[str, Any]:
    """The cluster now, as the stored body of one point."""
    holding = tx.jobs(phases=ACTIVE_PHASES)
    nodes = node_views(tx.nodes(), holding)
    capacity = capacity_of(nodes)
    queues = queue_views(tx.queues(), holding, tx.job_counts(), capacity)
    allocated = ResourceView(
        cpu=sum(n.allocated.cpu for n in nodes),
        memory=sum(n.allocated.memory for n in nodes),
        gpu=round(sum(n.allocated.gpu for n in nodes), 4),
    )
    return {
        "capacity": ResourceView(
            cpu=capacity.cpu_millis / 1000, memory=capacity.memory_bytes, gpu=capacity.gpu
        ).model_dump(),
        "allocated": allocated.model_dump(),
        "queues": {
            q.name: QueueUtilization(
                allocated=q.allocated,
                dominant_share=q.dominant_share,
                pending=q.pending,
                running=q.running,
            ).model_dump()
            for q in queues
        },
    }


def point_of(row: UtilizationRow) -> UtilizationPoint:
    return UtilizationPoint.model_validate({"time": row.time, **row.body})


class UtilizationRecorder:
    """A thread that writes one sample every ``interval_s`` until stopped."""

    def __init__(
        self,
        store: Store,
        interval_s: float = INTERVAL_S,
        retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.retention_s = retention_s
        self.clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tidemill-utilization", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def record_once(self) -> None:
        """Write the cluster as it is now and drop what is past retention."""
        now = self.clock()
        with self.store.read() as tx:
            body = sample(tx)
        with self.store.transaction() as tx:
            tx.add_utilization(now, body)
            tx.drop_utilization_before(now - self.retention_s)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.record_once()
            except StoreUnavailable as exc:
                log.warning("utilization sample skipped: %s", exc)
            except Exception:
                log.exception("utilization sample failed")
            self._stopping.wait(self.interval_s)
