"""Prometheus metrics: gauges read from the store at scrape time, histograms fed by
the controller after each cycle."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tidemill.api.status import (
    DataInsightView,
    JobPhase,
    PSInsightView,
    PSTableInsightView,
    saved_insight,
)
from tidemill.controller.reconciler import ACTIVE_PHASES, CycleStats
from tidemill.engines.base import Engine
from tidemill.server.usage import UsageCollector
from tidemill.server.views import capacity_of, node_views, queue_views
from tidemill.store.metrics import latest_metrics
from tidemill.store.store import Store
from tidemill.store.tables import LatestMetricRow

DATA_LABELS = ["namespace", "job_name", "stage", "source"]
"""``job_name``, not ``job``: Prometheus gives ``job`` to the scrape target."""
PS_LABELS = ["namespace", "job_name", "table"]
"""At most 256 tables per job (``api.ps.MAX_TABLES``); shards are no label: their rows
show as one skew figure per table, the split itself in the REST view."""


class StoreCollector(Collector):
    """Jobs by phase, queue lengths, allocated vs capacity per resource, and the data
    and parameter-server insight and latest training metrics of running jobs."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.store.read() as tx:
            jobs = tx.jobs(phases=ACTIVE_PHASES)
            counts = tx.job_counts()
            nodes = node_views(tx.nodes(), jobs)
            queues = queue_views(tx.queues(), jobs, counts, capacity_of(nodes))
            insights = [
                (job.namespace, job.name, insight)
                for job in jobs
                if (insight := saved_insight(job.master_state, "data_insight", DataInsightView))
                is not None
            ]
            servers = [
                (job.namespace, job.name, view)
                for job in jobs
                if (view := saved_insight(job.master_state, "ps_insight", PSInsightView))
                is not None
            ]
            active = [job.key for job in jobs]
            training = latest_metrics(tx, active) if active else []
        by_phase = GaugeMetricFamily("tidemill_jobs", "Jobs by phase", labels=["phase"])
        phases = {phase.value: 0 for phase in JobPhase}
        for (_, phase), count in counts.items():
            phases[phase] = phases.get(phase, 0) + count
        for phase, count in phases.items():
            by_phase.add_metric([phase], count)
        yield by_phase

        pending = GaugeMetricFamily(
            "tidemill_queue_pending_jobs", "Jobs waiting in each queue", labels=["queue"]
        )
        running = GaugeMetricFamily(
            "tidemill_queue_running_jobs", "Jobs holding resources per queue", labels=["queue"]
        )
        held = GaugeMetricFamily(
            "tidemill_queue_allocated",
            "Held by each queue's running jobs (cpu cores, memory bytes, gpus)",
            labels=["queue", "resource"],
        )
        share = GaugeMetricFamily(
            "tidemill_queue_dominant_share",
            "Each queue's DRF dominant share over its weight (what admission orders by)",
            labels=["queue"],
        )
        for queue in queues:
            pending.add_metric([queue.name], queue.pending)
            running.add_metric([queue.name], queue.running)
            for resource in ("cpu", "memory", "gpu"):
                held.add_metric([queue.name, resource], getattr(queue.allocated, resource))
            share.add_metric([queue.name], queue.dominant_share)
        yield from (pending, running, held, share)

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
        if insights:
            yield from data_metrics(insights)
        if servers:
            yield from ps_metrics(servers)
        if training:
            yield training_metrics(training)


def training_metrics(rows: list[LatestMetricRow]) -> GaugeMetricFamily:
    """The latest value each replica reported for each name (``report(step, loss=...)``,
    and the runtime's own ``step_time_s`` and ``samples_per_s``). Names are bounded
    per job (``api.metrics.MAX_NAMES_PER_JOB``), so the series are too."""
    family = GaugeMetricFamily(
        "tidemill_training_metric",
        "Latest value of a training metric reported by a replica",
        labels=["namespace", "job_name", "replica", "name"],
    )
    for row in rows:
        namespace, _, name = row.job.partition("/")
        family.add_metric([namespace, name, row.replica, row.name], row.value)
    return family


def data_metrics(
    insights: list[tuple[str, str, DataInsightView]],
) -> Iterator[GaugeMetricFamily]:
    """Per source of each stage of (namespace, job name, insight): what it delivered, how
    fast, how far behind, its shards by state and its records by worker."""
    records = GaugeMetricFamily("tidemill_data_records", "Records read", labels=DATA_LABELS)
    size = GaugeMetricFamily("tidemill_data_bytes", "Bytes read", labels=DATA_LABELS)
    rate = GaugeMetricFamily(
        "tidemill_data_records_per_second", "Recent read rate", labels=DATA_LABELS
    )
    lag_records = GaugeMetricFamily(
        "tidemill_data_lag_records", "Records behind the head of the stream", labels=DATA_LABELS
    )
    lag_s = GaugeMetricFamily(
        "tidemill_data_lag_seconds", "Seconds behind the head of the stream", labels=DATA_LABELS
    )
    shards = GaugeMetricFamily(
        "tidemill_data_shards",
        "Shards (row-group ranges or partition leases) by state",
        labels=[*DATA_LABELS, "state"],
    )
    by_worker = GaugeMetricFamily(
        "tidemill_data_worker_records",
        "Records read by each worker",
        labels=[*DATA_LABELS, "worker"],
    )
    for namespace, name, insight in insights:
        for stage in insight.stages:
            for source in stage.sources:
                key = [namespace, name, stage.name, source.name]
                records.add_metric(key, source.records)
                size.add_metric(key, source.bytes)
                rate.add_metric(key, source.records_per_s)
                if source.lag_records is not None:
                    lag_records.add_metric(key, source.lag_records)
                if source.lag_s is not None:
                    lag_s.add_metric(key, source.lag_s)
                shards.add_metric([*key, "done"], source.shards_done)
                shards.add_metric([*key, "in_flight"], source.shards_in_flight)
                shards.add_metric([*key, "pending"], source.shards_pending)
                for worker, count in sorted(source.workers.items()):
                    by_worker.add_metric([*key, worker], count)
    yield from (records, size, rate, lag_records, lag_s, shards, by_worker)


def ps_metrics(views: list[tuple[str, str, PSInsightView]]) -> Iterator[GaugeMetricFamily]:
    """Per table of each (namespace, job name, PS insight): size, admissions and
    evictions, traffic, staleness and shard skew; and each job's shards by reachability."""
    figures = {
        "rows": ("tidemill_ps_rows", "Rows held, over the shards that answered"),
        "memory_bytes": ("tidemill_ps_memory_bytes", "Bytes of rows and optimizer state"),
        "admitted": ("tidemill_ps_admitted_rows", "Rows admitted since the shards started"),
        "evicted": ("tidemill_ps_evicted_rows", "Rows evicted since the shards started"),
        "pull_rows_per_s": ("tidemill_ps_pull_rows_per_second", "Ids pulled per second"),
        "push_rows_per_s": ("tidemill_ps_push_rows_per_second", "Rows pushed per second"),
        "staleness_max_steps": (
            "tidemill_ps_staleness_max_steps",
            "Most steps of other ranks' pushes a pull did not see",
        ),
        "staleness_mean_steps": (
            "tidemill_ps_staleness_mean_steps",
            "Mean steps of other ranks' pushes a pull did not see",
        ),
    }
    families = {
        field: GaugeMetricFamily(name, text, labels=PS_LABELS)
        for field, (name, text) in figures.items()
    }
    skew = GaugeMetricFamily(
        "tidemill_ps_shard_rows_skew",
        "Rows on the fullest shard over the mean per shard (1 is even)",
        labels=PS_LABELS,
    )
    shards = GaugeMetricFamily(
        "tidemill_ps_shards",
        "PS replicas by whether the job master's last STATS poll reached them",
        labels=["namespace", "job_name", "state"],
    )
    for namespace, name, view in views:
        unreachable = len(view.unreachable)
        shards.add_metric([namespace, name, "reachable"], len(view.shards) - unreachable)
        shards.add_metric([namespace, name, "unreachable"], unreachable)
        for table in view.tables:
            key = [namespace, name, table.name]
            for field, family in families.items():
                family.add_metric(key, getattr(table, field))
            if (ratio := rows_skew(table)) is not None:
                skew.add_metric(key, ratio)
    yield from (*families.values(), skew, shards)


def rows_skew(table: PSTableInsightView) -> float | None:
    """Fullest shard's rows over the mean of the shards that answered; None without rows."""
    held = [rows for rows in table.shard_rows if rows is not None]
    if not held or sum(held) == 0:
        return None
    return max(held) * len(held) / sum(held)


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
        self.recent_use = Gauge(
            "tidemill_queue_recent_use_share_seconds",
            "A queue's weighted DRF share integrated over time, halving every "
            "recentUseHalfLifeSeconds, as of the last scheduling pass: between queues of "
            "equal share, the smaller goes first",
            ["queue"],
            registry=registry,
        )
        self._recent_queues: set[str] = set()

    def record(self, stats: CycleStats) -> None:
        if stats.schedule_seconds:
            self.cycle.observe(stats.schedule_seconds)
        for latency in stats.queue_latencies_s:
            self.queue_latency.observe(latency)
        if stats.recent_use is not None:
            for queue in self._recent_queues - stats.recent_use.keys():
                self.recent_use.remove(queue)
            for queue, share_seconds in stats.recent_use.items():
                self.recent_use.labels(queue).set(share_seconds)
            self._recent_queues = set(stats.recent_use)


def make_registry(
    store: Store, engine: Engine | None = None
) -> tuple[CollectorRegistry, ControllerMetrics]:
    """The registry ``/metrics`` renders; with ``engine``, per-replica use as well."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    if engine is not None:
        registry.register(UsageCollector(store, engine))
    return registry, ControllerMetrics(registry)
