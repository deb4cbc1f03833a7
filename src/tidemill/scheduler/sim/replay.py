"""Replay a trace through a policy on a virtual clock: arrivals, starts, ends, nothing slept.

At each moment something happens (jobs arrive or end), the policy gets the cluster as
it is and every waiting job, exactly as the controller calls ``schedule`` each cycle;
its binds start now and end ``duration_s`` later (a job of unknown duration runs to the
end of the replay); a preempted job goes back to waiting and starts over. The clock
jumps from one moment to the next, so a month of trace replays in seconds, and the
same inputs always give the same outcome.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    PodRequest,
    QueueInfo,
    RunningJob,
)
from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.policies import Policy
from tidemill.scheduler.sim.trace import TraceJob

Progress = Callable[[int, int], None]
"""Told (events done, events in all) as the replay goes; an event is an arrival or an end."""


@dataclass
class Outcome:
    """What became of one trace job. Times in seconds on the trace's clock."""

    job: TraceJob
    start_s: float | None = None
    end_s: float | None = None
    preemptions: int = 0

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.job.arrival_s

    @property
    def completion_s(self) -> float | None:
        """Job completion time: from arrival to end."""
        return None if self.end_s is None else self.end_s - self.job.arrival_s


@dataclass
class Replay:
    """A replay's record: every job's outcome, GPUs held over time, the policy's CPU."""

    outcomes: list[Outcome]
    total_gpus: float
    allocation: list[tuple[float, float]] = field(default_factory=list)
    """(time, GPUs held) after every moment the replay visited."""
    call_cpu_s: list[float] = field(default_factory=list)
    """Process CPU seconds of each policy call."""


def requests(job: TraceJob, sequence: int) -> JobRequest:
    """The pending job the scheduler sees for ``job``: one pod per gang member."""
    pods = tuple(
        PodRequest(
            role="worker",
            index=i,
            cpu_millis=job.cpu_millis_per_pod,
            memory_bytes=job.memory_bytes_per_pod,
            gpu=job.gpu_per_pod,
            gpu_model=job.gpu_model,
        )
        for i in range(job.pods)
    )
    return JobRequest(job.name, job.queue, job.priority, sequence, pods)


def with_trace_queues(cluster: ClusterState, trace: Sequence[TraceJob]) -> ClusterState:
    """``cluster`` with a queue for each of the trace's queues, if the cluster declares none.

    A cluster that declares queues must declare every queue the trace uses: a typo in a
    queue name would otherwise make a queue of its own and skew the fairness figures.
    """
    if not cluster.queues:
        queues = {job.queue: QueueInfo(job.queue) for job in trace}
        return replace(cluster, queues=dict(sorted(queues.items())))
    for job in trace:
        if job.queue not in cluster.queues:
            raise SimInputError(
                "trace",
                None,
                f"job {job.name} uses queue {job.queue!r}, which the cluster does not declare "
                f"(it declares {', '.join(sorted(cluster.queues))})",
            )
    return cluster


def replay(
    cluster: ClusterState,
    trace: Sequence[TraceJob],
    policy: Policy,
    progress: Progress | None = None,
) -> Replay:
    """Replay ``trace`` on ``cluster`` (its ``running`` is ignored) through ``policy``."""
    cluster = with_trace_queues(cluster, trace)
    order = sorted(range(len(trace)), key=lambda i: (trace[i].arrival_s, i))
    outcomes = [Outcome(job) for job in trace]
    record = Replay(outcomes, float(sum(n.gpus for n in cluster.nodes if n.schedulable)))
    pending: dict[str, tuple[int, JobRequest]] = {}
    running: dict[str, tuple[int, RunningJob]] = {}
    ends: list[tuple[float, int, int]] = []
    """(end time, trace index, run number): a preempted run's end is stale and skipped."""
    runs = [0] * len(trace)
    next_arrival = 0
    done = 0
    total_events = len(trace) + sum(1 for job in trace if job.duration_s is not None)
    held_gpus = 0.0
    while next_arrival < len(order) or ends:
        now = min(
            trace[order[next_arrival]].arrival_s if next_arrival < len(order) else float("inf"),
            ends[0][0] if ends else float("inf"),
        )
        while ends and ends[0][0] <= now:
            _, index, run = heapq.heappop(ends)
            if run != runs[index]:
                continue
            done += 1
            outcomes[index].end_s = now
            held_gpus -= trace[index].gpus
            del running[trace[index].name]
        while next_arrival < len(order) and trace[order[next_arrival]].arrival_s <= now:
            index = order[next_arrival]
            pending[trace[index].name] = (index, requests(trace[index], next_arrival))
            next_arrival += 1
            done += 1
        if pending:
            state = replace(cluster, running=tuple(job for _, job in running.values()))
            started = time.process_time()
            decisions = policy(state, [request for _, request in pending.values()])
            record.call_cpu_s.append(time.process_time() - started)
            for preemption in decisions.preemptions:
                index, victim = running.pop(preemption.victim)
                runs[index] += 1
                outcomes[index].preemptions += 1
                outcomes[index].start_s = None
                held_gpus -= trace[index].gpus
                pending[victim.key] = (index, requests(trace[index], victim.sequence))
            for bind in decisions.binds:
                index, request = pending.pop(bind.job)
                job = trace[index]
                running[job.name] = (
                    index,
                    RunningJob(
                        job.name, job.queue, job.priority, request.sequence, bind.placements
                    ),
                )
                outcomes[index].start_s = now
                held_gpus += job.gpus
                if job.duration_s is not None:
                    heapq.heappush(ends, (now + job.duration_s, index, runs[index]))
        record.allocation.append((now, held_gpus))
        if progress is not None:
            progress(done, total_events)
    return record
