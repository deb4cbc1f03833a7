"""Fair-share reclaim: a queue below its guarantee takes room back from queues over theirs.

Priority preemption only stops lower-priority jobs, so a queue whose guaranteed share
was lent out while it was idle could not get it back from jobs of equal priority. Here
a gang whose queue stays within its guarantee once bound may shrink or stop jobs of
other queues at any priority, as long as each of those queues keeps at least its own
guarantee. Candidates go lowest priority first, then the most recently started (it has
lost the least work); surplus pods of elastic jobs go before any job is stopped.

Only resources a guarantee names (above zero) are weighed: a queue guaranteed GPUs
reclaims GPUs and the cpu and memory its pods need beside them.

The guarantee holds against priority too (``Reclaimer.guard``): a higher-priority job
of another queue may not preempt a queue below its guarantee, or the job just reclaimed
would preempt its reclaimer back the next cycle, and so on forever.

The search is greedy and runs on the snapshot, which it leaves as it found it: take
candidates in that order until the gang fits, then spare, last taken first, every one
it still fits without (at once for those off the nodes the gang uses). The gang is
placed again only after a step that frees enough in all and leaves some pod of it
fitting on a node the step touched.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tidemill.scheduler import preemption
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.placement import fits, try_gang
from tidemill.scheduler.preemption import Cut, Plan
from tidemill.scheduler.types import (
    JobRequest,
    Placement,
    PodRequest,
    QueueInfo,
    Reclaim,
    ResourceVector,
    RunningJob,
    usage,
)
from tidemill.scheduler.victims import VictimPool


@dataclass(frozen=True)
class _Step:
    """Shrink ``job`` by all its surplus (``stop`` False) or stop what is left of it."""

    job: RunningJob
    stop: bool
    placements: tuple[Placement, ...]


class Reclaimer:
    """Reclaim plans for one cycle.

    A gang shape that found no plan in a queue is not searched again in that queue this
    cycle: free room only shrinks and what other queues may give only falls, so a
    backlog of look-alike jobs costs one search, not one each.
    """

    def __init__(
        self,
        capacity: Capacity,
        pool: VictimPool,
        queues: Mapping[str, QueueInfo],
        held: Callable[[str], ResourceVector],
    ) -> None:
        self._capacity = capacity
        self._pool = pool
        self._queues = queues
        self._held = held
        self._failed: set[tuple[str, Hashable]] = set()

    def plan(self, job: JobRequest, shape: Hashable) -> tuple[Plan, Reclaim] | None:
        """Shrinks and stops in queues over their guarantee that let ``job``'s gang (of
        ``shape``) fit, or None when its queue is not below its guarantee or no such
        plan exists. The snapshot is left exactly as it was."""
        if (job.queue, shape) in self._failed:
            return None
        found = plan(self._capacity, job, self._pool, self._queues, self._held)
        if found is None:
            self._failed.add((job.queue, shape))
        return found

    def guard(self, job: JobRequest, chosen: Plan) -> tuple[Plan | None, str | None]:
        """``chosen``, a priority preemption plan for ``job``, if it takes no other queue
        below its guarantee (reclaim would take that straight back, and the two would
        undo each other cycle after cycle); else a plan found without the jobs of that
        queue and of every other queue with nothing above its guarantee, or None and the
        queue it would have broken."""
        broken = self._breaks_guarantee(job, chosen)
        if broken is None:
            return chosen, None
        tight = {
            name
            for name, queue in self._queues.items()
            if name != job.queue and not _above(self._held(name), queue.guaranteed)
        }
        rest = [j for j in self._pool.remaining() if j.queue not in tight | {broken}]
        lowest = min((j.priority for j in rest if j.preemptible), default=None)
        pool = VictimPool(rest, self._capacity, self._capacity.total(), lowest)
        if not pool.any_below(job.priority):
            return None, broken
        retry = preemption.plan(self._capacity, job.gang, job.priority, pool)
        if retry is None or self._breaks_guarantee(job, retry) is not None:
            return None, broken
        return retry, None

    def _breaks_guarantee(self, job: JobRequest, chosen: Plan) -> str | None:
        """The first queue (by name) other than ``job``'s that ``chosen`` would take
        below its guarantee, if any."""
        taken: dict[str, ResourceVector] = {}
        for victim in chosen.victims:
            taken[victim.queue] = taken.get(victim.queue, ResourceVector()) + victim.total
        for cut in chosen.cuts:
            removed = usage(p for _, p in self._pool.surplus(cut.job)[: cut.count])
            taken[cut.job.queue] = taken.get(cut.job.queue, ResourceVector()) + removed
        for name in sorted(taken):
            queue = self._queues.get(name)
            if name == job.queue or queue is None:
                continue
            if not _keeps(self._held(name) - taken[name], queue.guaranteed):
                return name
        return None


def plan(
    capacity: Capacity,
    job: JobRequest,
    pool: VictimPool,
    queues: Mapping[str, QueueInfo],
    held: Callable[[str], ResourceVector],
) -> tuple[Plan, Reclaim] | None:
    """Shrinks and stops in queues over their guarantee that let ``job``'s gang fit, or
    None when its queue is not below its guarantee or no such plan exists.

    ``held`` gives what a queue holds now. ``capacity`` is left exactly as it was.
    """
    wanted = queues[job.queue].guaranteed
    before = held(job.queue)
    if not _named(wanted) or not _within(before + job.gang_total, wanted):
        return None
    givers = {
        name
        for name, queue in queues.items()
        if name != job.queue and _keeps(held(name), queue.guaranteed)
    }
    if not givers:
        return None
    candidates = sorted((j for j in pool.remaining() if j.queue in givers), key=_victim_order)
    if not candidates:
        return None
    start = capacity.mark()
    steps = _take(capacity, job, candidates, pool, queues, held)
    found = None if steps is None else _trial(capacity, job.gang)
    if steps is None or found is None:
        capacity.undo(start)
        return None
    stopped: set[str] = set()
    kept: list[_Step] = []
    used = set(capacity.node_indices(found))
    for step in reversed(steps):
        if not step.stop and step.job.key in stopped:
            kept.append(step)  # a stopped job gives its surplus back too
            continue
        mark = capacity.mark()
        capacity.hold(step.placements)
        if used.isdisjoint(capacity.node_indices(step.placements)):
            continue  # off the gang's nodes: spared without placing it again
        trial = _trial(capacity, job.gang)
        if trial is None:
            capacity.undo(mark)
            kept.append(step)
            if step.stop:
                stopped.add(step.job.key)
        else:
            found = trial
            used = set(capacity.node_indices(found))
    capacity.undo(start)
    ranked = {j.key: i for i, j in enumerate(candidates)}
    victims = sorted((s.job for s in kept if s.stop), key=lambda j: ranked[j.key])
    cuts = sorted(
        (Cut(s.job, len(s.placements)) for s in kept if not s.stop and s.job.key not in stopped),
        key=lambda c: ranked[c.job.key],
    )
    return Plan(tuple(victims), found, tuple(cuts)), Reclaim(job.queue, wanted, before)


def _take(
    capacity: Capacity,
    job: JobRequest,
    candidates: Sequence[RunningJob],
    pool: VictimPool,
    queues: Mapping[str, QueueInfo],
    held: Callable[[str], ResourceVector],
) -> list[_Step] | None:
    """Release candidates' surplus, then whole candidates, in order, each only while its
    queue keeps its guarantee, until the gang fits; None if it never does."""
    gang, need = job.gang, job.gang_total
    shapes = list({_pod_shape(pod): pod for pod in gang}.values())
    free = capacity.free_total()
    left: dict[str, ResourceVector] = {}
    steps: list[_Step] = []
    cut: set[str] = set()
    for stop in (False, True):
        for victim in candidates:
            surplus = tuple(p for _, p in pool.surplus(victim))
            if stop:
                placements = tuple(p for _, p in pool.core(victim))
                if victim.key not in cut:
                    placements += surplus
            elif surplus:
                placements = surplus
            else:
                continue
            after = left.get(victim.queue, held(victim.queue)) - usage(placements)
            if not _keeps(after, queues[victim.queue].guaranteed):
                continue
            left[victim.queue] = after
            capacity.release(placements)
            free = free + usage(placements)
            steps.append(_Step(victim, stop, placements))
            if not stop:
                cut.add(victim.key)
            if (
                _enough(free, need)
                and _helps(capacity, shapes, capacity.node_indices(placements))
                and _trial(capacity, gang) is not None
            ):
                return steps
    return None


def _pod_shape(pod: PodRequest) -> tuple[int, int, float, str | None, tuple[tuple[str, int], ...]]:
    return (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model, pod.extended)


def _helps(capacity: Capacity, pods: Sequence[PodRequest], rows: list[int]) -> bool:
    """Whether one of ``pods`` fits on one of the nodes ``rows`` now."""
    at = np.array(rows, dtype=np.intp)
    for pod in pods:
        ok = capacity.eligible_mask(pod.gpu_model)[at] & fits(
            pod, capacity.free_cpu[at], capacity.free_memory[at], capacity.gpu_used[at]
        )
        if pod.extended:
            ok &= capacity.extended_mask(pod.extended)[at]
        if ok.any():
            return True
    return False


def _victim_order(job: RunningJob) -> tuple[int, bool, float, int, str]:
    """Lowest priority first, then the most recently started (or submitted)."""
    started = job.started_at
    return (job.priority, started is None, -(started or 0.0), -job.sequence, job.key)


def _trial(capacity: Capacity, gang: Sequence[PodRequest]) -> tuple[Placement, ...] | None:
    mark = capacity.mark()
    placed = try_gang(capacity, gang)
    capacity.undo(mark)
    return placed


def _parts(vector: ResourceVector) -> tuple[float, float, float]:
    return (float(vector.cpu_millis), float(vector.memory_bytes), vector.gpu)


def _named(guaranteed: ResourceVector) -> bool:
    return any(g > 0 for g in _parts(guaranteed))


def _within(amount: ResourceVector, guaranteed: ResourceVector) -> bool:
    """Whether ``amount`` stays within every resource the guarantee names."""
    pairs = zip(_parts(amount), _parts(guaranteed), strict=True)
    return all(a <= g + EPS for a, g in pairs if g > 0)


def _keeps(amount: ResourceVector, guaranteed: ResourceVector) -> bool:
    """Whether ``amount`` is still at least every resource the guarantee names."""
    pairs = zip(_parts(amount), _parts(guaranteed), strict=True)
    return all(a >= g - EPS for a, g in pairs if g > 0)


def _above(amount: ResourceVector, guaranteed: ResourceVector) -> bool:
    """Whether ``amount`` is more than every resource the guarantee names (a guarantee
    that names none: always)."""
    pairs = zip(_parts(amount), _parts(guaranteed), strict=True)
    return all(a > g + EPS for a, g in pairs if g > 0)


def _enough(free: ResourceVector, need: ResourceVector) -> bool:
    """A cheap bound before placing: the cluster has at least ``need`` free in all."""
    return all(f >= n - EPS for f, n in zip(_parts(free), _parts(need), strict=True))
