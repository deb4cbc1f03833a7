"""Per-replica cpu, memory and GPU use: on ``/metrics`` for operators, in the job view
for people.

Read from the engine when asked (an engine that cannot tell gives no figures). A scrape
of every running replica is cached for :data:`SCRAPE_TTL_S`, so scrapers that overlap
or come too often cost the engine one sample, not one per scrape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tidemill.api.status import ReplicaPhase
from tidemill.controller.model import ACTIVE_PHASES
from tidemill.controller.rows import handle_of
from tidemill.engines.base import Engine
from tidemill.engines.usage import MeasuresUsage, ReplicaUsage, Watched
from tidemill.store.store import Store
from tidemill.store.tables import JobRow

SCRAPE_TTL_S = 5.0
"""A scrape within this long of the last one gets the same figures."""
REPLICA_LABELS = ["namespace", "job_name", "replica", "node"]
"""``job_name``, not ``job``: Prometheus gives ``job`` to the scrape target."""


def job_usage(engine: Engine, job: JobRow) -> dict[str, ReplicaUsage]:
    """Replica name -> what it uses now, for the job's running replicas."""
    return {key.rsplit("/", 1)[1]: usage for key, usage in _measure(engine, [job]).items()}


def _measure(engine: Engine, jobs: Sequence[JobRow]) -> dict[str, ReplicaUsage]:
    """``namespace/name/replica`` -> what that replica uses now."""
    if not isinstance(engine, MeasuresUsage):
        return {}
    watched: dict[str, Watched] = {}
    for job in jobs:
        for replica in job.replicas:
            handle = handle_of(replica.handle)
            if handle is None or replica.phase != ReplicaPhase.RUNNING.value:
                continue
            watched[f"{job.key}/{replica.replica_name}"] = Watched(handle, tuple(replica.gpu_ids))
    return engine.usage(watched) if watched else {}


class UsageCollector(Collector):
    """``tidemill_replica_*`` gauges: cores busy, resident memory, and per GPU its
    utilization and the memory the replica holds on it; beside what the replica asked."""

    def __init__(self, store: Store, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > SCRAPE_TTL_S:
                self._cached = (now, self._families())
            yield from self._cached[1]

    def _families(self) -> list[GaugeMetricFamily]:
        with self.store.read() as tx:
            jobs = tx.jobs(phases=ACTIVE_PHASES)
        used = _measure(self.engine, jobs)
        cpu = _family("cpu_cores", "Cores a replica's processes kept busy since the last scrape")
        cpu_asked = _family("cpu_requested_cores", "Cores a replica asked for")
        memory = _family("memory_bytes", "Resident memory of a replica's processes")
        memory_asked = _family("memory_requested_bytes", "Memory a replica asked for")
        gpu_busy = _family("gpu_utilization_percent", "How busy a replica's GPU is", gpu=True)
        gpu_memory = _family("gpu_memory_bytes", "GPU memory a replica holds", gpu=True)
        for job in jobs:
            for replica in job.replicas:
                if replica.phase != ReplicaPhase.RUNNING.value:
                    continue
                labels = [job.namespace, job.name, replica.replica_name, replica.node]
                cpu_asked.add_metric(labels, replica.cpu_millis / 1000)
                memory_asked.add_metric(labels, replica.memory_bytes)
                usage = used.get(f"{job.key}/{replica.replica_name}")
                if usage is None:
                    continue
                if usage.cpu_cores is not None:
                    cpu.add_metric(labels, usage.cpu_cores)
                memory.add_metric(labels, usage.memory_bytes)
                for device in usage.gpus:
                    on = [*labels, str(device.index)]
                    if device.utilization_percent is not None:
                        gpu_busy.add_metric(on, device.utilization_percent)
                    if device.memory_bytes is not None:
                        gpu_memory.add_metric(on, device.memory_bytes)
        return [cpu, cpu_asked, memory, memory_asked, gpu_busy, gpu_memory]


def _family(name: str, documentation: str, gpu: bool = False) -> GaugeMetricFamily:
    labels = [*REPLICA_LABELS, "gpu"] if gpu else REPLICA_LABELS
    return GaugeMetricFamily(f"tidemill_replica_{name}", documentation, labels=labels)
