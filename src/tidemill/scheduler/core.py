"""One scheduling cycle: a snapshot and a backlog in, decisions out.

For each job that DRF hands out, in this order:

1. refuse requests no node could ever hold (waiting will not help);
2. check the queue's max;
3. place the gang on free space;
4. failing that, if allowed, plan a preemption of lower-priority running jobs;
5. record the bind (and any preemptions), or a reason; under strict FIFO a refused
   head also holds back the rest of its queue.

Free space only shrinks during a cycle (a preemption frees room for its preemptor
alone), which is why a gang shape that could not preempt once is not tried again at
the same or a lower priority.
"""

from __future__ import annotations

from collections.abc import Sequence

from tidemill.scheduler import preemption, reasons
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.ordering import QueueOrder
from tidemill.scheduler.placement import (
    Misfit,
    fits_empty_node,
    never_fits,
    place_gang,
    request_problem,
)
from tidemill.scheduler.quota import over_max
from tidemill.scheduler.types import (
    Bind,
    ClusterState,
    Decisions,
    JobRequest,
    Placement,
    PodRequest,
    Preemption,
    Reason,
    ResourceVector,
    SchedulerConfig,
)

_Shape = tuple[tuple[int, int, float, str], ...]

DEFAULT_CONFIG = SchedulerConfig()


def schedule(
    state: ClusterState,
    pending: Sequence[JobRequest],
    config: SchedulerConfig = DEFAULT_CONFIG,
) -> Decisions:
    """Decide which pending jobs start where, whom to preempt, and why the rest wait.

    Pure: reads only its arguments and changes none of them.

    >>> from tidemill.scheduler import ClusterState, JobRequest, NodeInfo, PodRequest, QueueInfo
    >>> node = NodeInfo("n1", cpu_millis=8_000, memory_bytes=2**36, gpus=8)
    >>> state = ClusterState(nodes=(node,), queues={"ads": QueueInfo("ads")})
    >>> pod = PodRequest("worker", 0, cpu_millis=1_000, memory_bytes=2**30, gpu=2)
    >>> job = JobRequest("ads/ctr", "ads", priority=0, sequence=1, pods=(pod,))
    >>> schedule(state, [job]).binds[0].placements[0].gpu_ids
    (0, 1)
    """
    capacity = Capacity.of(state)
    cluster = capacity.total()
    decisions = Decisions()
    known: list[JobRequest] = []
    for request in pending:
        if request.queue in state.queues:
            known.append(request)
        else:
            decisions.pending[request.key] = reasons.unknown_queue(request, state.queues)
    held: dict[str, ResourceVector] = {}
    for running in state.running:
        held[running.queue] = held.get(running.queue, ResourceVector()) + running.total
    order = QueueOrder(state.queues, known, held, cluster)
    cycle = _Cycle(
        state, config, capacity, order, preemption.VictimPool(state.running, capacity, cluster)
    )
    while (job := order.next()) is not None:
        reason = cycle.admit(job, decisions)
        if reason is None:
            continue
        decisions.pending[job.key] = reason
        if config.strict_fifo:
            for waiting in order.drop(job.queue):
                decisions.pending[waiting.key] = reasons.blocked_by_head(job.queue, job.key, reason)
    return decisions


class _Cycle:
    """The state one cycle carries from job to job."""

    def __init__(
        self,
        state: ClusterState,
        config: SchedulerConfig,
        capacity: Capacity,
        order: QueueOrder,
        pool: preemption.VictimPool,
    ) -> None:
        self._state = state
        self._config = config
        self._capacity = capacity
        self._order = order
        self._pool = pool
        self._cannot_preempt: dict[_Shape, int] = {}
        self._fits_empty: dict[tuple[int, int, float, str | None], bool] = {}

    def admit(self, job: JobRequest, decisions: Decisions) -> Reason | None:
        """Bind ``job`` (recording it in ``decisions``) or return why it waits."""
        refused = self._refusal(job)
        if refused is not None:
            return refused
        placed = place_gang(self._capacity, job.pods)
        if not isinstance(placed, Misfit):
            self._bind(job, placed, decisions)
            return None
        reason = reasons.does_not_fit(job, placed.placed, placed.shortfall)
        if not self._config.preemption or not self._pool.any_below(job.priority):
            return reason
        plan = self._plan(job)
        if plan is None:
            return reasons.with_preemption_note(reason)
        self._capacity.preempt(plan.victims, plan.placements)
        self._pool.take(plan.victims)
        for victim in plan.victims:
            message = reasons.preemption_message(victim, job)
            decisions.preemptions.append(Preemption(victim.key, job.key, message))
            if victim.queue in self._state.queues:
                self._order.charge(victim.queue, ResourceVector() - victim.total)
        self._bind(job, plan.placements, decisions)
        return None

    def _refusal(self, job: JobRequest) -> Reason | None:
        """Reasons that hold whatever is free: a bad request, no node big enough, queue max."""
        if not job.pods:
            return Reason(
                reasons.Code.INVALID_REQUEST.value,
                "job has no pods; give at least one role at least one replica",
            )
        for pod in job.pods:
            problem = request_problem(pod)
            if problem is not None:
                return reasons.invalid_request(pod, problem)
        for pod in job.pods:
            if not self._fits_empty_node(pod):
                return never_fits(self._capacity, pod)
        over = over_max(self._state.queues[job.queue], self._order.held(job.queue), job.total)
        if over:
            return reasons.queue_at_max(job.queue, over)
        return None

    def _fits_empty_node(self, pod: PodRequest) -> bool:
        key = (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model)
        known = self._fits_empty.get(key)
        if known is None:
            known = self._fits_empty[key] = fits_empty_node(self._capacity, pod)
        return known

    def _bind(
        self, job: JobRequest, placements: tuple[Placement, ...], decisions: Decisions
    ) -> None:
        decisions.binds.append(Bind(job.key, placements))
        self._order.charge(job.queue, job.total)

    def _plan(self, job: JobRequest) -> preemption.Plan | None:
        shape: _Shape = tuple(
            sorted((p.cpu_millis, p.memory_bytes, p.gpu, p.gpu_model or "") for p in job.pods)
        )
        if job.priority <= self._cannot_preempt.get(shape, -(2**63)):
            return None
        plan = preemption.plan(self._capacity, job.pods, job.priority, self._pool)
        if plan is None:
            self._cannot_preempt[shape] = job.priority
        return plan
