"""Turn API views into what people read (Rich tables) and scripts parse (JSON, YAML).

Pure functions of their inputs (``now`` is passed in), so the output is testable.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tidemill.api.metrics import LatestMetric
from tidemill.api.status import (
    DataInsightView,
    EventView,
    JobPhase,
    JobSummary,
    JobView,
    NodeView,
    QueueView,
    ReplicaPhase,
    ResourceView,
    SourceInsightView,
    StageInsightView,
)
from tidemill.api.token import TokenView
from tidemill.cli.common import Output
from tidemill.cli.render_metrics import training_metrics
from tidemill.cli.render_ps import ps_insight
from tidemill.cli.units import age, byte_size, clock, duration, memory, number, plain_table, rate

PHASE_STYLES = {
    JobPhase.PENDING: "yellow",
    JobPhase.SCHEDULED: "cyan",
    JobPhase.RUNNING: "blue",
    JobPhase.RESTARTING: "magenta",
    JobPhase.SUSPENDED: "dim",
    JobPhase.SUCCEEDED: "green",
    JobPhase.FAILED: "red",
}


def dump(models: BaseModel | Sequence[BaseModel], output: Output) -> str:
    """JSON or YAML of one view or a list of views, in the REST API's own shape."""
    if isinstance(models, BaseModel):
        data: Any = models.model_dump(mode="json")
    else:
        data = [model.model_dump(mode="json") for model in models]
    if output is Output.YAML:
        return yaml.safe_dump(data, sort_keys=False).rstrip("\n")
    return json.dumps(data, indent=2)


def resources(view: ResourceView) -> str:
    parts = [f"cpu {number(view.cpu)}", f"mem {memory(view.memory)}"]
    if view.gpu:
        parts.append(f"gpu {number(view.gpu)}")
    return ", ".join(parts)


def limits(limit: dict[str, float | int | None]) -> str:
    if not limit or all(value is None for value in limit.values()):
        return "unlimited"
    shown = []
    for key, value in limit.items():
        if value is None:
            continue
        shown.append(f"{key} {memory(value) if key == 'memory' else number(value)}")
    return ", ".join(shown)


def phase_text(phase: JobPhase) -> Text:
    return Text(phase.value, style=PHASE_STYLES.get(phase, ""))


def replica_counts(view: JobView) -> dict[str, str]:
    """role -> 'running/desired'; desired is what the control plane aims for now (a scale
    request included), else the job document's replicas, else the replicas known."""
    body = view.spec.get("spec", view.spec)
    roles = body.get("roles") if isinstance(body, dict) else None
    desired: Counter[str] = Counter()
    if isinstance(roles, dict):
        for role, body in roles.items():
            desired[role] = int(body.get("replicas", 1)) if isinstance(body, dict) else 1
    else:
        desired.update(replica.role for replica in view.replicas)
    for role, count in view.desired.items():
        desired[role] = count
    running = Counter(r.role for r in view.replicas if r.phase is ReplicaPhase.RUNNING)
    return {role: f"{running[role]}/{count}" for role, count in desired.items()}


def counts_text(counts: dict[str, str]) -> str:
    return ", ".join(f"{role} {count}" for role, count in counts.items()) or "-"


def jobs_table(jobs: Sequence[JobSummary], now: float) -> Table:
    table = plain_table(
        "NAMESPACE", "NAME", "QUEUE", "PRIORITY", "PHASE", "REPLICAS", "AGE", "MESSAGE"
    )
    for job in jobs:
        table.add_row(
            job.namespace,
            job.name,
            job.queue,
            str(job.priority),
            phase_text(job.phase),
            counts_text(job.replicas),
            age(job.created_at, now),
            Text(job.message),
        )
    return table


def job_table(view: JobView, now: float) -> Table:
    table = plain_table(
        "NAMESPACE", "NAME", "QUEUE", "PRIORITY", "PHASE", "REPLICAS", "AGE", "MESSAGE"
    )
    table.add_row(
        view.namespace,
        view.name,
        view.queue,
        str(view.priority),
        phase_text(view.phase),
        counts_text(replica_counts(view)),
        age(view.created_at, now),
        Text(_why(view)),
    )
    return table


def describe(
    view: JobView,
    events: Sequence[EventView],
    now: float,
    metrics: Sequence[LatestMetric] = (),
) -> RenderableType:
    """Everything needed to tell why a job is where it is, top to bottom."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    end = view.finished_at if view.finished_at is not None else now
    rows: list[tuple[str, str | Text]] = [
        ("Name", f"{view.namespace}/{view.name}"),
        ("UID", view.uid),
        ("Queue", view.queue),
        ("Priority", str(view.priority)),
        ("Mode", view.mode),
        ("Phase", phase_text(view.phase)),
        ("Replicas", counts_text(replica_counts(view))),
        ("Created", f"{clock(view.created_at)} ({age(view.created_at, now)} ago)"),
        ("Started", clock(view.started_at)),
        ("Finished", clock(view.finished_at)),
    ]
    if view.started_at is not None:
        rows.append(("Duration", duration(end - view.started_at)))
    if view.message:
        rows.append(("Message", Text(view.message)))
    if view.pending_reason is not None:
        reason = view.pending_reason
        rows.append(("Pending", Text(f"{reason.code}: {reason.message}", style="yellow")))
    for label, value in rows:
        head.add_row(label, value)
    parts: list[RenderableType] = [head]
    if view.conditions:
        parts += [Text("\nConditions", style="bold"), _conditions(view)]
    if view.replicas:
        parts += [Text("\nReplicas", style="bold"), _replicas(view, now)]
    if view.data is not None:
        parts += [Text("\nData", style="bold"), *data_insight(view.data, now)]
    if view.ps is not None:
        parts += [Text("\nParameter servers", style="bold"), *ps_insight(view.ps, now)]
    if metrics:
        parts += [Text("\nTraining metrics", style="bold"), training_metrics(metrics)]
    parts.append(Text("\nEvents", style="bold"))
    parts.append(events_table(events[-20:]) if events else Text("  none"))
    return Group(*parts)


def data_insight(insight: DataInsightView, now: float) -> list[RenderableType]:
    """The stage under way, then each stage's sources: what they delivered, how fast, how
    far behind the stream, their shards and which worker read how much."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Stage", insight.stage or "-")
    updated = insight.updated_at
    if updated is not None:
        head.add_row("Updated", f"{clock(updated)} ({age(updated, now)} ago)")
    parts: list[RenderableType] = [head]
    for stage in insight.stages:
        line = _stage_line(stage, len(insight.stages), updated if updated is not None else now)
        parts.append(Text(f"\n{line}", style="bold"))
        parts.append(_sources(stage.sources) if stage.sources else Text("  no sources yet"))
    return parts


def lag(source: SourceInsightView) -> str:
    """'37 records, 0.4s' for a stream; '-' for a source without leases."""
    if source.lag_records is None and source.lag_s is None:
        return "-"
    records = "-" if source.lag_records is None else f"{source.lag_records:,} records"
    seconds = "-" if source.lag_s is None else f"{source.lag_s:.1f}s"
    return f"{records}, {seconds}"


def shards(source: SourceInsightView) -> str:
    """'8 done', '3 done, 2 in flight, 5 pending': the counts that are not zero."""
    counts = (
        (source.shards_done, "done"),
        (source.shards_in_flight, "in flight"),
        (source.shards_pending, "pending"),
    )
    return ", ".join(f"{count:,} {state}" for count, state in counts if count) or "-"


def worker_split(workers: dict[str, int]) -> str:
    """'worker-0 10,240 · worker-1 9,760', worker-2 before worker-10."""
    names = sorted(workers, key=_natural)
    return " · ".join(f"{name} {workers[name]:,}" for name in names) or "-"


def queues_table(queues: Sequence[QueueView]) -> Table:
    table = plain_table(
        "NAME",
        "WEIGHT",
        "GUARANTEED",
        "MAX",
        "ALLOCATED",
        "SHARE",
        "PENDING",
        "RUNNING",
        "SUSPENDED",
    )
    for queue in queues:
        table.add_row(
            queue.name,
            number(queue.weight),
            resources(queue.guaranteed),
            limits(queue.max),
            resources(queue.allocated),
            f"{queue.dominant_share:.2f}",
            str(queue.pending),
            str(queue.running),
            str(queue.suspended),
        )
    return table


def nodes_table(nodes: Sequence[NodeView]) -> Table:
    table = plain_table(
        "NAME", "CPU", "MEMORY", "GPU", "GPU MODEL", "GPU USE", "SCHEDULABLE", "LABELS"
    )
    for node in nodes:
        table.add_row(
            node.name,
            f"{number(node.allocated.cpu)}/{number(node.capacity.cpu)}",
            f"{memory(node.allocated.memory)}/{memory(node.capacity.memory)}",
            f"{number(node.allocated.gpu)}/{number(node.capacity.gpu)}",
            node.gpu_model or "-",
            " ".join(f"{share:.0%}" for share in node.gpu_used) or "-",
            "yes" if node.schedulable else Text("no", style="yellow"),
            ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "-",
        )
    return table


def events_table(events: Sequence[EventView], with_job: bool = False) -> Table:
    headers = ["TIME", "JOB"] if with_job else ["TIME"]
    table = plain_table(*headers, "TYPE", "REASON", "REPLICA", "MESSAGE")
    for event in events:
        first = [time.strftime("%H:%M:%S", time.localtime(event.time))]
        if with_job:
            first.append(event.job or "-")
        style = "yellow" if event.type == "Warning" else ""
        table.add_row(
            *first,
            Text(event.type, style=style),
            event.reason,
            event.replica or "-",
            Text(event.message),
        )
    return table


def tokens_table(tokens: Sequence[TokenView], now: float) -> Table:
    table = plain_table("NAME", "NAMESPACE", "ROLE", "AGE", "STATUS")
    for token in tokens:
        status = Text("revoked", style="red") if token.revoked else Text("active", style="green")
        created = age(token.created_at, now)
        table.add_row(token.name, token.namespace, token.role.value, created, status)
    return table


def event_line(event: EventView, with_job: bool = True) -> str:
    """One event as plain text, for streams: ``12:00:01 ads/ctr Started [worker-0]: msg``."""
    parts = [time.strftime("%H:%M:%S", time.localtime(event.time))]
    if with_job and event.job:
        parts.append(event.job)
    parts.append(event.reason if event.type != "Warning" else f"{event.reason} (Warning)")
    if event.replica:
        parts.append(f"[{event.replica}]")
    return " ".join(parts) + f": {event.message}"


def final_summary(view: JobView) -> list[str]:
    """How a job ended, and which replicas failed how (grouped, so 64 workers fit a line)."""
    start = view.started_at if view.started_at is not None else view.created_at
    took = f" in {duration(view.finished_at - start)}" if view.finished_at is not None else ""
    lines = [f"job {view.namespace}/{view.name} {view.phase.value}{took}"]
    if view.message:
        lines.append(f"  {view.message}")
    failures: dict[tuple[int | None, str], list[str]] = {}
    for replica in sorted(view.replicas, key=lambda r: (r.role, r.index)):
        if replica.phase is ReplicaPhase.FAILED:
            failure = (replica.exit_code, replica.message)
            failures.setdefault(failure, []).append(f"{replica.role}-{replica.index}")
    for (exit_code, message), names in failures.items():
        how = "failed" if exit_code is None else f"exited with code {exit_code}"
        detail = f": {message}" if message and not message.endswith(how) else ""
        lines.append(f"  {', '.join(names)} {how}{detail}")
    return lines


def _conditions(view: JobView) -> Table:
    table = plain_table("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE")
    for condition in view.conditions:
        table.add_row(
            condition.type.value,
            str(condition.status),
            condition.reason,
            clock(condition.last_transition_time),
            Text(condition.message),
        )
    return table


def _replicas(view: JobView, now: float) -> Table:
    table = plain_table(
        "REPLICA", "PHASE", "NODE", "GPUS", "PID", "RESTARTS", "EXIT", "AGE", "MESSAGE"
    )
    for replica in sorted(view.replicas, key=lambda r: (r.role, r.index)):
        exit_code = "-" if replica.exit_code is None else str(replica.exit_code)
        style = "red" if replica.phase is ReplicaPhase.FAILED else ""
        table.add_row(
            f"{replica.role}-{replica.index}",
            Text(replica.phase.value, style=style),
            replica.node or "-",
            ",".join(replica.gpus) or "-",
            "-" if replica.pid is None else str(replica.pid),
            str(replica.restarts),
            exit_code,
            age(replica.started_at, now),
            Text(replica.message),
        )
    return table


def _stage_line(stage: StageInsightView, stages: int, as_of: float) -> str:
    """'backfill (stage 1 of 2): done, pass 1 of 1, took 8m20s'; a stage under way has run
    ``for`` the time until ``as_of`` (when the master last saved its insight)."""
    line = f"{stage.name} (stage {stage.index + 1} of {stages}): {stage.state}"
    line += f", pass {stage.pass_index + 1} of {stage.epochs}"
    if stage.started_at is not None and stage.finished_at is not None:
        line += f", took {duration(stage.finished_at - stage.started_at)}"
    elif stage.started_at is not None:
        line += f", for {duration(max(0.0, as_of - stage.started_at))}"
    return line


def _sources(sources: Sequence[SourceInsightView]) -> Table:
    table = plain_table(
        "SOURCE", "KIND", "RECORDS", "RECORDS/S", "BYTES", "LAG", "SHARDS", "WORKERS"
    )
    for source in sources:
        table.add_row(
            source.name,
            source.kind,
            f"{source.records:,}",
            rate(source.records_per_s),
            byte_size(source.bytes),
            lag(source),
            shards(source),
            worker_split(source.workers),
        )
    return table


def _natural(name: str) -> list[str | int]:
    """Sort key reading digit runs as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _why(view: JobView) -> str:
    if view.pending_reason is not None and view.phase is JobPhase.PENDING:
        return f"{view.pending_reason.code}: {view.pending_reason.message}"
    return view.message
