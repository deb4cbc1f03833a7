"""One scheduling cycle: a snapshot and a backlog in, decisions out.

Jobs that waited past their bound go first, oldest first; one that still does not fit
gets room reserved (``reservation``), which the rest of the cycle sees as taken. Then,
for each job that DRF hands out, in this order:

1. refuse requests no node could ever hold (waiting will not help);
2. check the queue's max against the required gang;
3. place the gang on free space, or else in reserved room due after the job ends;
4. failing that, if allowed, plan to shrink (or, if that is not enough, stop)
   lower-priority running jobs, or else jobs of queues over their guarantee if the
   job's queue is below its own (``reclaim``);
5. record the bind (and any shrinks and preemptions), or a reason; under strict FIFO a
   refused head also holds back the rest of its queue.

Pods running jobs lost with their node (``JobRequest.replaces``) go first of all, in
idle room only, never preempting: a job gets back what it held before new work takes
the room. Optional pods go last, never preempting, in DRF order across queues then
priority: first those of the jobs just bound (added to their binds), then growth
requests of running jobs. So no optional pod takes room a pending gang could use this
cycle, and growth never takes room a pending job could use.

Free space only shrinks during a cycle (a preemption frees room for its preemptor
alone), which is why a gang shape that could not preempt once is not tried again at
the same or a lower priority.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tidemill.scheduler import fragmentation, preemption, reasons, reclaim, topology
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.memo import Memo, carry
from tidemill.scheduler.ordering import QueueOrder, queue_turns
from tidemill.scheduler.placement import (
    Misfit,
    fits_empty_node,
    never_fits,
    place_gang,
    request_problem,
)
from tidemill.scheduler.quota import over_max
from tidemill.scheduler.reservation import Reservations
from tidemill.scheduler.topology import Domains, Packed
from tidemill.scheduler.types import (
    Bind,
    ClusterState,
    Decisions,
    Extended,
    JobRequest,
    Placement,
    PodRequest,
    Preemption,
    QueueInfo,
    Reason,
    Reclaim,
    ResourceVector,
    SchedulerConfig,
    Shrink,
    usage,
)
from tidemill.scheduler.victims import VictimPool

_Shape = tuple[tuple[int, int, float, str, Extended, str], ...]

DEFAULT_CONFIG = SchedulerConfig()


def _shape(gang: tuple[PodRequest, ...]) -> _Shape:
    """What placement depends on: the pods' sizes and packings, not their names."""
    return tuple(
        sorted(
            (p.cpu_millis, p.memory_bytes, p.gpu, p.gpu_model or "", p.extended, _packing(p))
            for p in gang
        )
    )


def _packing(pod: PodRequest) -> str:
    if pod.topology is None:
        return ""
    return f"{pod.topology.level}:{'required' if pod.topology.required else 'preferred'}"


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
    return schedule_incremental(state, pending, config, None)[0]


def schedule_incremental(
    state: ClusterState,
    pending: Sequence[JobRequest],
    config: SchedulerConfig = DEFAULT_CONFIG,
    memo: Memo | None = None,
) -> tuple[Decisions, Memo]:
    """``schedule``, starting from the ``memo`` an earlier call returned.

    The decisions are exactly ``schedule(state, pending, config)``'s; the memo returned
    is ``state``'s, to pass to the next call. A cycle then pays for the running jobs and
    nodes that changed since, not for everything that runs.

    >>> from tidemill.scheduler import ClusterState, JobRequest, NodeInfo, PodRequest, QueueInfo
    >>> node = NodeInfo("n1", cpu_millis=8_000, memory_bytes=2**36, gpus=8)
    >>> state = ClusterState(nodes=(node,), queues={"ads": QueueInfo("ads")})
    >>> pod = PodRequest("worker", 0, cpu_millis=1_000, memory_bytes=2**30, gpu=2)
    >>> job = JobRequest("ads/ctr", "ads", priority=0, sequence=1, pods=(pod,))
    >>> decisions, memo = schedule_incremental(state, [job])
    >>> decisions, memo = schedule_incremental(state, [job], memo=memo)
    >>> decisions.binds[0].placements[0].gpu_ids
    (0, 1)
    """
    memo = carry(memo, state)
    capacity = memo.capacity.clone()
    capacity.fragmentation = fragmentation.for_cycle(state, pending, config, memo.held_shapes)
    cluster = capacity.total()
    decisions = Decisions()
    known: list[JobRequest] = []
    growing: list[JobRequest] = []
    for request in pending:
        if request.grow:
            if request.queue in state.queues and request.key in memo.jobs:
                growing.append(request)
        elif request.queue in state.queues:
            known.append(request)
        else:
            decisions.pending[request.key] = reasons.unknown_queue(request, state.queues)
    recent = state.recent_use.advanced(state.now, config.recent_use_half_life_s)
    held = memo.held
    turns = queue_turns(state.queues, held, cluster, recent)
    book = Reservations(state, config, known, turns)
    late = {job.key for job in book.starving}
    in_turn = [j for j in known if j.key not in late]
    order = QueueOrder(state.queues, in_turn, held, cluster, recent)
    pool = VictimPool(state.running, capacity, cluster, memo.lowest_preemptible())
    cycle = _Cycle(state, config, capacity, order, pool, book)
    cycle.grow([r for r in growing if r.replaces], decisions)
    growing = [r for r in growing if not r.replaces]
    for late_job in book.starving:
        reason = cycle.admit(late_job, decisions)
        if reason is None:
            continue
        stopped = {p.victim for p in decisions.preemptions}
        reason = decisions.pending[late_job.key] = book.reserve(capacity, late_job, reason, stopped)
        if config.strict_fifo:  # it waited longest: it is its queue's head now
            for waiting in order.drop(late_job.queue):
                decisions.pending[waiting.key] = reasons.blocked_by_head(
                    late_job.queue, late_job.key, reason
                )
    while (job := order.next()) is not None:
        reason = cycle.admit(job, decisions)
        if reason is None:
            continue
        decisions.pending[job.key] = reason
        if config.strict_fifo:
            for waiting in order.drop(job.queue):
                decisions.pending[waiting.key] = reasons.blocked_by_head(job.queue, job.key, reason)
    cycle.fill(decisions)
    cycle.grow(growing, decisions)
    decisions.reservations = book.held
    decisions.recent_use = recent.holding_now(order.shares())
    return decisions, memo


class _Cycle:
    """The state one cycle carries from job to job."""

    def __init__(
        self,
        state: ClusterState,
        config: SchedulerConfig,
        capacity: Capacity,
        order: QueueOrder,
        pool: VictimPool,
        book: Reservations,
    ) -> None:
        self._state = state
        self._book = book
        self._reclaimer = reclaim.Reclaimer(capacity, pool, state.queues, order.held)
        self._config = config
        self._capacity = capacity
        self._order = order
        self._pool = pool
        self._domains = Domains.of(state)
        self._cannot_preempt: dict[_Shape, int] = {}
        self._guarded: dict[_Shape, str] = {}
        """Gang shapes whose preemption plan would take this queue below its guarantee."""
        self._misfits: dict[_Shape, Misfit] = {}
        """Gang shapes that did not fit on free room this cycle, with why."""
        self._fits_empty: dict[tuple[int, int, float, str | None, Extended], bool] = {}
        self._resized: set[str] = set()
        self._elastic: dict[str, tuple[JobRequest, int]] = {}
        """Jobs bound this cycle that have optional pods, and where their bind is."""
        self._gangs: dict[str, tuple[Placement, ...]] = {}
        """The gang placements of the jobs in ``_elastic``: their extras go beside them."""
        self._unmet: dict[str, Reason] = {}
        """Growth requests that got fewer pods than asked, and why."""

    def admit(self, job: JobRequest, decisions: Decisions) -> Reason | None:
        """Bind ``job`` (recording it in ``decisions``) or return why it waits."""
        gang = job.gang
        refused = self._refusal(job, gang)
        if refused is not None:
            return refused
        shape = _shape(gang)
        placed = self._misfits.get(shape) or topology.place(self._capacity, self._domains, gang)
        if isinstance(placed, Packed):
            self._bind(job, placed.placements, decisions, placed.note)
            return None
        # Free room only shrinks within a cycle, so this shape will not fit later either:
        # a backlog of look-alike jobs costs one placement attempt, not one each.
        self._misfits[shape] = placed
        backfilled = self._book.backfill(self._capacity, job)
        if backfilled is not None:
            self._bind(job, backfilled, decisions)
            return None
        reason = self._book.note(
            placed.topology or reasons.does_not_fit(job, placed.placed, placed.shortfall)
        )
        if not self._config.preemption:
            return reason
        plan = self._plan(job, shape) if self._pool.any_below(job.priority) else None
        claim = None
        if plan is None and self._config.reclaim:
            found = self._reclaimer.plan(job, shape)
            if found is not None:
                plan, claim = found
        if plan is None:
            tried = self._pool.any_below(job.priority)
            guarded = self._guarded.get(shape)
            return reasons.with_preemption_note(reason, guarded) if tried else reason
        self._commit(job, plan, decisions, claim)
        self._bind(job, plan.placements, decisions)
        return None

    def fill(self, decisions: Decisions) -> None:
        """Add the optional pods of jobs bound this cycle to their binds, as room allows."""
        for job, added in self._optional(job for job, _ in self._elastic.values()):
            at = self._elastic[job.key][1]
            bind = decisions.binds[at]
            decisions.binds[at] = Bind(job.key, bind.placements + added, bind.note)

    def grow(self, requests: Sequence[JobRequest], decisions: Decisions) -> None:
        """Add pods to running jobs in idle room; jobs shrunk or stopped this cycle wait."""
        wanted = (job for job in requests if job.key not in self._resized)
        for job, added in self._optional(wanted):
            decisions.grows.append(Bind(job.key, added))
        decisions.unmet_grows.update(self._unmet)

    def _optional(
        self, jobs: Iterable[JobRequest]
    ) -> Iterator[tuple[JobRequest, tuple[Placement, ...]]]:
        """Each job's optional pods that fit idle room, in DRF order then priority."""
        queues = self._state.queues
        held = {name: self._order.held(name) for name in queues}
        order = QueueOrder(queues, jobs, held, self._capacity.total(), self._order.recent)
        while (job := order.next()) is not None:
            added = self._extras(job, order.held(job.queue), self._placed(job))
            if added:
                order.charge(job.queue, usage(added))
                self._order.charge(job.queue, usage(added))
                yield job, added

    def _commit(
        self,
        job: JobRequest,
        plan: preemption.Plan,
        decisions: Decisions,
        claim: Reclaim | None = None,
    ) -> None:
        """Shrink and stop what ``plan`` names, so its room serves ``job`` alone;
        ``claim`` says which guarantee it reclaims, when it does."""
        pool = self._pool
        freed = [p for victim in plan.victims for p in victim.placements]
        for cut in plan.cuts:
            before = pool.current(cut.job.key)
            removed = pool.shrink(cut.job.key, cut.count)
            freed += removed
            self._resized.add(before.key)
            if claim is None:
                message = reasons.shrink_message(before, removed, job)
            else:
                message = reasons.reclaim_shrink_message(before, removed, job, claim)
            pairs = tuple((p.role, p.index) for p in removed)
            decisions.shrinks.append(Shrink(before.key, pairs, job.key, message, claim))
            self._give_back(before.queue, usage(removed))
        self._capacity.preempt(freed, plan.placements)
        pool.take(plan.victims)
        for victim in plan.victims:
            self._resized.add(victim.key)
            if claim is None:
                message = reasons.preemption_message(victim, job)
            else:
                message = reasons.reclaim_message(victim, job, claim)
            decisions.preemptions.append(Preemption(victim.key, job.key, message, claim))
            self._give_back(victim.queue, victim.total)

    def _give_back(self, queue: str, amount: ResourceVector) -> None:
        if queue in self._state.queues:
            self._order.charge(queue, ResourceVector() - amount)

    def _refusal(self, job: JobRequest, gang: tuple[PodRequest, ...]) -> Reason | None:
        """Reasons that hold whatever is free: a bad request, no node big enough, queue max."""
        if not gang:
            return reasons.no_required_pods(job)
        for pod in job.pods:
            problem = request_problem(pod)
            if problem is not None:
                return reasons.invalid_request(pod, problem)
        for pod in gang:
            if not self._fits_empty_node(pod):
                return never_fits(self._capacity, pod)
        packing = self._domains.refusal(self._capacity, gang)
        if packing is not None:
            return packing
        over = over_max(self._state.queues[job.queue], self._order.held(job.queue), job.gang_total)
        if over:
            return reasons.queue_at_max(job.queue, over)
        return None

    def _placed(self, job: JobRequest) -> tuple[Placement, ...]:
        """What ``job`` holds already (its gang bound this cycle, or its running pods), for
        optional pods that pack beside them; nothing for jobs without a packing."""
        if not any(pod.topology is not None for pod in job.extras):
            return ()
        if not job.grow:
            return self._gangs.get(job.key, ())
        running = (r for r in self._state.running if r.key == job.key)
        return next((r.placements for r in running), ())

    def _extras(
        self, job: JobRequest, held: ResourceVector, beside: tuple[Placement, ...]
    ) -> tuple[Placement, ...]:
        """Place ``job``'s optional pods in idle room, in order, within its queue's max,
        in the topology domain of the pods ``beside`` them when their role packs.

        A role stops at its first pod that does not fit, so its indexes stay contiguous.
        """
        queue = self._state.queues[job.queue]
        placed: list[Placement] = []
        stopped: set[str] = set()
        for pod in job.extras:
            if pod.role in stopped:
                continue
            placement = None
            if request_problem(pod) is None and not over_max(queue, held, pod.vector):
                placement = topology.place_extra(
                    self._capacity, self._domains, pod, (*beside, *placed)
                )
            if placement is None:
                stopped.add(pod.role)
                if job.grow and job.key not in self._unmet:
                    self._unmet[job.key] = self._why_not(pod, queue, held, (*beside, *placed))
                continue
            self._capacity.hold([placement])
            placed.append(placement)
            held = held + pod.vector
        return tuple(placed)

    def _why_not(
        self,
        pod: PodRequest,
        queue: QueueInfo,
        held: ResourceVector,
        beside: tuple[Placement, ...],
    ) -> Reason:
        """Why an optional pod found no room: a bad request, its queue's max, its
        packing, or space."""
        problem = request_problem(pod)
        if problem is not None:
            return reasons.invalid_request(pod, problem)
        over = over_max(queue, held, pod.vector)
        if over:
            return reasons.queue_at_max(queue.name, over)
        packing = topology.extra_misfit(self._capacity, self._domains, pod, beside)
        if packing is not None:
            return packing
        placed = place_gang(self._capacity, (pod,))
        if isinstance(placed, Misfit):
            return reasons.cannot_grow(placed.shortfall)
        return never_fits(self._capacity, pod)

    def _fits_empty_node(self, pod: PodRequest) -> bool:
        key = (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model, pod.extended)
        known = self._fits_empty.get(key)
        if known is None:
            known = self._fits_empty[key] = fits_empty_node(self._capacity, pod)
        return known

    def _bind(
        self,
        job: JobRequest,
        placements: tuple[Placement, ...],
        decisions: Decisions,
        note: str = "",
    ) -> None:
        """Record the gang's ``placements``; optional pods are added by ``fill``."""
        if len(placements) < len(job.pods):
            self._elastic[job.key] = (job, len(decisions.binds))
            self._gangs[job.key] = placements
        decisions.binds.append(Bind(job.key, placements, note))
        self._order.charge(job.queue, usage(placements))

    def _plan(self, job: JobRequest, shape: _Shape) -> preemption.Plan | None:
        if job.priority <= self._cannot_preempt.get(shape, -(2**63)):
            return None
        plan = preemption.plan(self._capacity, job.gang, job.priority, self._pool)
        if plan is not None and self._config.reclaim:
            plan, guarded = self._reclaimer.guard(job, plan)
            if guarded is not None:
                self._guarded[shape] = guarded
        if plan is not None and not self._domains.holds(job.gang, plan.placements):
            plan = None
        if plan is None:
            self._cannot_preempt[shape] = job.priority
        return plan
