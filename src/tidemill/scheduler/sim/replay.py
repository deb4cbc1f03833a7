"""Replay a trace through a policy on a virtual clock: arrivals, starts, ends, nothing slept.

At each moment something happens (jobs arrive or end), the policy gets the cluster as
it is and every waiting job, exactly as the controller calls ``schedule`` each cycle;
its binds start now and end ``duration_s`` later (a job of unknown duration runs to the
end of the replay); a preempted job goes back to waiting and starts over. The clock
jumps from one moment to the next, so a month of trace replays in seconds, and the
same inputs always give the same outcome.

Time reaches the policy as the controller gives it: the snapshot's ``now``, each
waiting job's ``waiting_since``, each running job's ``started_at`` and ``expected_end``,
and the reservations the previous call returned. A trace job's known duration is its
``runtime_s`` (as if its ``activeDeadlineSeconds`` were exact: the best case for
backfilling into reserved room); a job of unknown duration has none.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    PodRequest,
    QueueInfo,
    Reservation,
    RunningJob,
)
from tidemill.scheduler.recent_use import RecentUse
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


def requests(job: TraceJob, sequence: int, waiting_since: float | None = None) -> JobRequest:
    """The pending job the scheduler sees for ``job``: one pod per gang member, waiting
    since ``waiting_since`` (its arrival when None)."""
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
    since = job.arrival_s if waiting_since is None else waiting_since
    return JobRequest(
        job.name,
        job.queue,
        job.priority,
        sequence,
        pods,
        waiting_since=since,
        runtime_s=job.duration_s,
    )


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
    """Replay ``trace`` on ``cluster`` (its ``running`` is ignored) through ``policy``.

    >>> from tidemill.scheduler import ClusterState, NodeInfo
    >>> from tidemill.scheduler.sim import POLICIES, TraceJob
    >>> cluster = ClusterState(nodes=(NodeInfo("n1", 8_000, 2**36, gpus=8),), queues={})
    >>> first = TraceJob("a", 0.0, 60.0, "ads", pods=1, gpu_per_pod=8,
    ...                  cpu_millis_per_pod=1_000, memory_bytes_per_pod=2**30)
    >>> second = TraceJob("b", 10.0, 30.0, "ads", 1, 4, 1_000, 2**30)
    >>> record = replay(cluster, [first, second], POLICIES["tidemill"])
    >>> [(o.start_s, o.end_s) for o in record.outcomes]
    [(0.0, 60.0), (60.0, 90.0)]
    """
    names = Counter(job.name for job in trace)
    repeated = sorted(name for name, times in names.items() if times > 1)
    if repeated:
        raise SimInputError("trace", None, f"job names must be unique; repeated: {repeated[:10]}")
    run = _Run(with_trace_queues(cluster, trace), trace, policy)
    while (now := run.next_moment()) is not None:
        run.end_due(now)
        run.arrive_due(now)
        run.decide(now)
        run.record.allocation.append((now, run.held_gpus))
        if progress is not None:
            progress(run.events_done, run.events_total)
    return run.record


class _Run:
    """One replay's moving parts: who waits, who runs, and when each run ends."""

    def __init__(self, cluster: ClusterState, trace: Sequence[TraceJob], policy: Policy) -> None:
        self.cluster = cluster
        self.trace = trace
        self.policy = policy
        self.order = sorted(range(len(trace)), key=lambda i: (trace[i].arrival_s, i))
        self.outcomes = [Outcome(job) for job in trace]
        gpus = float(sum(n.gpus for n in cluster.nodes if n.schedulable))
        self.record = Replay(self.outcomes, gpus)
        self.pending: dict[str, tuple[int, JobRequest]] = {}
        self.running: dict[str, tuple[int, RunningJob]] = {}
        self.ends: list[tuple[float, int, int]] = []
        """(end time, trace index, run number): a preempted run's end is stale and skipped."""
        self.runs = [0] * len(trace)
        self.reservations: tuple[Reservation, ...] = ()
        self.recent_use = RecentUse()
        self.next_arrival = 0
        self.held_gpus = 0.0
        self.events_done = 0
        self.events_total = len(trace) + sum(1 for job in trace if job.duration_s is not None)

    def next_moment(self) -> float | None:
        """The next arrival or end, whichever is first; None when neither is left."""
        moments = [self.ends[0][0]] if self.ends else []
        if self.next_arrival < len(self.order):
            moments.append(self.trace[self.order[self.next_arrival]].arrival_s)
        return min(moments, default=None)

    def end_due(self, now: float) -> None:
        while self.ends and self.ends[0][0] <= now:
            _, index, run = heapq.heappop(self.ends)
            if run != self.runs[index]:
                continue
            self.events_done += 1
            self.outcomes[index].end_s = now
            self.held_gpus -= self.trace[index].gpus
            del self.running[self.trace[index].name]

    def arrive_due(self, now: float) -> None:
        while (
            self.next_arrival < len(self.order)
            and self.trace[self.order[self.next_arrival]].arrival_s <= now
        ):
            index = self.order[self.next_arrival]
            job = self.trace[index]
            self.pending[job.name] = (index, requests(job, self.next_arrival))
            self.next_arrival += 1
            self.events_done += 1

    def decide(self, now: float) -> None:
        """One policy call over everything waiting; apply preemptions, then binds."""
        if not self.pending:
            return
        state = replace(
            self.cluster,
            running=tuple(job for _, job in self.running.values()),
            now=now,
            reservations=self.reservations,
            recent_use=self.recent_use,
        )
        started = time.process_time()
        decisions = self.policy(state, [request for _, request in self.pending.values()])
        self.record.call_cpu_s.append(time.process_time() - started)
        self.reservations = tuple(decisions.reservations)
        self.recent_use = decisions.recent_use
        for preemption in decisions.preemptions:
            index, victim = self.running.pop(preemption.victim)
            self.runs[index] += 1
            self.outcomes[index].preemptions += 1
            self.outcomes[index].start_s = None
            self.held_gpus -= self.trace[index].gpus
            request = requests(self.trace[index], victim.sequence, waiting_since=now)
            self.pending[victim.key] = (index, request)
        for bind in decisions.binds:
            index, request = self.pending.pop(bind.job)
            job = self.trace[index]
            end_s = None if job.duration_s is None else now + job.duration_s
            running = RunningJob(
                job.name,
                job.queue,
                job.priority,
                request.sequence,
                bind.placements,
                started_at=now,
                expected_end=end_s,
            )
            self.running[job.name] = (index, running)
            self.outcomes[index].start_s = now
            self.held_gpus += job.gpus
            if end_s is not None:
                heapq.heappush(self.ends, (end_s, index, self.runs[index]))
