"""Prometheus metrics: gauges read from the store at scrape time, histograms fed by
the controller after each cycle."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tidemill.api.status import JobPhase
from tidemill.controller.reconciler import ACTIVE_PHASES, CycleStats
from tidemill.server.views import node_views
from tidemill.store.store import Store


class StoreCollector(Collector):
    """Jobs by phase, queue lengths, allocated vs capacity per resource."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.store.read() as tx:
            jobs = tx.jobs()
            nodes = node_views(tx.nodes(), [j for j in jobs if j.phase in ACTIVE_PHASES])
            queue_names = [q.name for q in tx.queues()]
        by_phase = GaugeMetricFamily("tidemill_jobs", "Jobs by phase", labels=["phase"])
        counts = {phase.value: 0 for phase in JobPhase}
        for job in jobs:
            counts[job.phase] = counts.get(job.phase, 0) + 1
        for phase, count in counts.items():
            by_phase.add_metric([phase], count)
        yield by_phase

        pending = GaugeMetricFamily(
            "tidemill_queue_pending_jobs", "Jobs waiting in each queue", labels=["queue"]
        )
        running = GaugeMetricFamily(
            "tidemill_queue_running_jobs", "Jobs holding resources per queue", labels=["queue"]
        )
        for name in queue_names:
            queued = [j for j in jobs if j.queue == name]
            pending.add_metric([name], sum(j.phase == JobPhase.PENDING.value for j in queued))
            running.add_metric([name], sum(j.phase in ACTIVE_PHASES for j in queued))
        yield pending
        yield running

        capacity = GaugeMetricFamily(
            "tidemill_capacity",
            "Cluster capacity (cpu cores, memory bytes, gpus)",
            labels=["resource"],
        )
        allocated = GaugeMetricFamily(
            "tidemill_allocated",
            "Allocated to running jobs (cpu cores, memory bytes, gpus)",
            labels=["resource"],
        )
        for resource in ("cpu", "memory", "gpu"):
            capacity.add_metric([resource], sum(getattr(n.capacity, resource) for n in nodes))
            allocated.add_metric([resource], sum(getattr(n.allocated, resource) for n in nodes))
        yield capacity
        yield allocated


class ControllerMetrics:
    """Histograms the controller feeds once per cycle."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.cycle = Histogram(
            "tidemill_scheduling_cycle_seconds",
            "Time the scheduler took to decide one cycle",
            registry=registry,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.queue_latency = Histogram(
            "tidemill_scheduling_latency_seconds",
            "Time from submission to first placement",
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
        )

    def record(self, stats: CycleStats) -> None:
        if stats.schedule_seconds:
            self.cycle.observe(stats.schedule_seconds)
        for latency in stats.queue_latencies_s:
            self.queue_latency.observe(latency)


def make_registry(store: Store) -> tuple[CollectorRegistry, ControllerMetrics]:
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    return registry, ControllerMetrics(registry)
