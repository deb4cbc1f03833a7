"""Whom to shrink or stop so a higher-priority gang fits, freeing as little as possible.

Only running, preemptible jobs of strictly lower priority are touched (``victims``
ranks them). Shrinking comes first: an elastic job gives back surplus pods, a prefix
of its ``shrinkable`` list, and keeps running. Only if shrinking every candidate to
its minimum is not enough are jobs stopped whole, and then shrinks and stops combine.

Both searches place the gang's pods biggest first; a pod that fits in free space is
held there. For one that does not, numpy finds the nodes where the candidates could
make room (``reach``, kept per plan), and the few needing the least freed are examined
exactly: the node whose choice touches the lowest top priority and removes the fewest
pods (shrinking) or frees the least (stopping) wins. Once the whole gang fits, victims
are spared largest first while it still fits without them (a spared job is shrunk to
its minimum instead), then shrunk pods are given back, last removed first, while it
still fits. Each of those steps places the gang again, unless ``fit_bound`` shows it
cannot fit: what a plan costs follows the nodes it touches, not the cluster's size.

Everything is tried on the snapshot and undone; the caller commits the plan.

Extended resources only narrow the nodes examined to those offering enough of them:
victims are ranked by what they free of cpu, memory and GPU, and a plan whose gang
still lacks an extended resource is not found (the job waits instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from tidemill.scheduler.arrays import Floats, Indices
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.fit_bound import FitBound
from tidemill.scheduler.placement import place_pod, size_key, try_gang
from tidemill.scheduler.reach import Reach
from tidemill.scheduler.types import Placement, PodRequest, ResourceVector, RunningJob
from tidemill.scheduler.victims import VictimPool

NODES_EXAMINED = 16
"""Nodes per pod whose victims are worked out exactly; the rest are ranked by numpy only."""


@dataclass(frozen=True)
class Cut:
    """Shrink ``job`` by its first ``count`` surplus pods."""

    job: RunningJob
    count: int


@dataclass(frozen=True)
class Plan:
    """Shrink by ``cuts`` and stop ``victims``, then bind the preemptor with ``placements``."""

    victims: tuple[RunningJob, ...]
    placements: tuple[Placement, ...]
    cuts: tuple[Cut, ...] = ()


def plan(
    capacity: Capacity, pods: Sequence[PodRequest], priority: int, pool: VictimPool
) -> Plan | None:
    """The cheapest shrinks and stops that let ``pods`` fit, or None.

    ``capacity`` is left exactly as it was.
    """
    need = _sum(pods)
    free = cache(capacity.free_total)

    def covered(could: ResourceVector) -> bool:
        """Whether ``could`` and what is free cover ``need``; what is free is summed
        over every node only when ``could`` alone falls short."""
        return _covers(could, need) or _covers(free() + could, need)

    if not covered(pool.could_free(priority)):
        return None
    if pool.any_surplus_below(priority) and covered(pool.could_shrink(priority)):
        shrunk = _shrink_only(capacity, pods, priority, pool)
        if shrunk is not None:
            return shrunk
    return _stop_whole(capacity, pods, priority, pool)


def _shrink_only(
    capacity: Capacity, pods: Sequence[PodRequest], priority: int, pool: VictimPool
) -> Plan | None:
    """A plan that only shrinks, or None if the greedy search finds none."""
    start = capacity.mark()
    cut: dict[str, int] = {}
    placed: dict[int, Placement] = {}
    with pool.lent_surplus_room(priority) as room:
        reach = Reach(capacity, room)
        for position, pod in _biggest_first(pods):
            placement = place_pod(capacity, pod)
            if placement is None:
                for job, count in _cuts_for(capacity, pod, priority, pool, reach, cut):
                    newly = pool.surplus(job)[cut.get(job.key, 0) : count]
                    capacity.release(p for _, p in newly)
                    pool.forget(room, newly)
                    reach.touch(row for row, _ in newly)
                    cut[job.key] = count
                placement = place_pod(capacity, pod)
            if placement is None:
                capacity.undo(start)
                return None
            capacity.hold([placement])
            reach.touch([capacity.index.get(placement.node)])
            placed[position] = placement
    found = tuple(placed[i] for i in range(len(pods)))
    capacity.undo(start)
    return _settle(capacity, pods, priority, pool, [], cut, found)


def _cuts_for(
    capacity: Capacity,
    pod: PodRequest,
    priority: int,
    pool: VictimPool,
    reach: Reach,
    cut: dict[str, int],
) -> list[tuple[RunningJob, int]]:
    """The cheapest shrinks that free one node enough for ``pod``: (job, pods cut in all)."""
    rows = np.flatnonzero(reach.could(pod))
    nearest = rows[np.argsort(_lacking(capacity, pod, rows), kind="stable")[:NODES_EXAMINED]]
    best: list[tuple[RunningJob, int]] = []
    best_cost: tuple[int, int] | None = None
    for row in nearest:
        found = _cuts_on(
            capacity, int(row), pod, pool.surplus_on_row(int(row), priority), pool, cut
        )
        if not found:
            continue
        cost = (
            max(job.priority for job, _ in found),
            sum(count - cut.get(job.key, 0) for job, count in found),
        )
        if best_cost is None or cost < best_cost:
            best, best_cost = found, cost
    return best


def _cuts_on(
    capacity: Capacity,
    row: int,
    pod: PodRequest,
    candidates: Sequence[RunningJob],
    pool: VictimPool,
    cut: dict[str, int],
) -> list[tuple[RunningJob, int]]:
    """Shrinks until ``pod`` fits on node ``row``: each step takes the candidate whose
    next pod there is cheapest to reach (lowest priority, fewest pods cut on the way,
    rank). Empty if shrinking every candidate there is not enough."""
    node = _Node(capacity, row)
    reach = {job.key: cut.get(job.key, 0) for job in candidates}
    while not node.fits(pod):
        step: tuple[tuple[int, int, int], RunningJob, int] | None = None
        for job in candidates:
            surplus = pool.surplus(job)
            first = reach[job.key]
            here = next((i for i in range(first, len(surplus)) if surplus[i][0] == row), None)
            if here is None:
                continue
            cost = (job.priority, here + 1 - first, pool.rank(job))
            if step is None or cost < step[0]:
                step = (cost, job, here)
        if step is None:
            return []
        _, job, here = step
        for at, p in pool.surplus(job)[reach[job.key] : here + 1]:
            if at == row:
                node.release(p)
        reach[job.key] = here + 1
    return [(job, reach[job.key]) for job in candidates if reach[job.key] > cut.get(job.key, 0)]


def _stop_whole(
    capacity: Capacity, pods: Sequence[PodRequest], priority: int, pool: VictimPool
) -> Plan | None:
    """With every candidate shrunk to its minimum, the victims to stop as well, or None."""
    start = capacity.mark()
    _shrink_all(capacity, priority, pool)
    chosen: dict[str, RunningJob] = {}
    placed: dict[int, Placement] = {}
    with pool.lent_room(priority) as room:
        reach = Reach(capacity, room)
        for position, pod in _biggest_first(pods):
            placement = place_pod(capacity, pod)
            if placement is None:
                victims = _make_room(capacity, pod, priority, pool, reach, set(chosen))
                for victim in victims:
                    capacity.release(p for _, p in pool.core(victim))
                    pool.forget(room, pool.core(victim))
                    reach.touch(row for row, _ in pool.core(victim))
                    chosen[victim.key] = victim
                placement = place_pod(capacity, pod)
            if placement is None:
                capacity.undo(start)
                return None
            capacity.hold([placement])
            reach.touch([capacity.index.get(placement.node)])
            placed[position] = placement
    found = tuple(placed[i] for i in range(len(pods)))
    capacity.undo(start)
    victims = sorted(chosen.values(), key=pool.rank)
    return _settle(capacity, pods, priority, pool, victims, None, found)


def _shrink_all(capacity: Capacity, priority: int, pool: VictimPool) -> None:
    if pool.any_surplus_below(priority):
        with pool.lent_surplus_room(priority) as room:
            capacity.release_all(room.cpu, room.memory, room.gpu_used)


def _make_room(
    capacity: Capacity,
    pod: PodRequest,
    priority: int,
    pool: VictimPool,
    reach: Reach,
    chosen: set[str],
) -> list[RunningJob]:
    """The cheapest victims that free one node enough for ``pod``; empty if none can."""
    rows = np.flatnonzero(reach.could(pod))
    nearest = rows[np.argsort(_lacking(capacity, pod, rows), kind="stable")[:NODES_EXAMINED]]
    best: list[RunningJob] = []
    best_cost: tuple[int, float, int] | None = None
    for row in nearest:
        candidates = pool.on_row(int(row), priority, chosen)
        victims = _victims_on(capacity, int(row), pod, candidates, pool)
        if not victims:
            continue
        cost = (max(v.priority for v in victims), sum(pool.size(v) for v in victims), len(victims))
        if best_cost is None or cost < best_cost:
            best, best_cost = victims, cost
    return best


def _lacking(capacity: Capacity, pod: PodRequest, rows: Indices) -> Floats:
    """How much of each node must be freed for ``pod``, as a sum of node fractions."""
    cpu = np.maximum(pod.cpu_millis - capacity.free_cpu[rows], 0) / np.maximum(
        capacity.total_cpu[rows], 1
    )
    memory = np.maximum(pod.memory_bytes - capacity.free_memory[rows], 0) / np.maximum(
        capacity.total_memory[rows], 1
    )
    if pod.gpu >= 1:
        gpu_short = np.maximum(int(pod.gpu) - capacity.whole_free[rows], 0)
    else:
        none_fits = ~(capacity.gpu_used[rows] <= 1.0 - pod.gpu + EPS).any(axis=1)
        gpu_short = np.where(none_fits, pod.gpu, 0.0)
    gpu = gpu_short / np.maximum(capacity.total_gpus[rows], 1)
    lacking: Floats = cpu + memory + gpu
    return lacking


def _victims_on(
    capacity: Capacity,
    row: int,
    pod: PodRequest,
    candidates: Sequence[RunningJob],
    pool: VictimPool,
) -> list[RunningJob]:
    """Candidates on node ``row`` in rank order until ``pod`` fits there; empty if never."""
    node = _Node(capacity, row)
    victims: list[RunningJob] = []
    for victim in candidates:
        for at, p in pool.core(victim):
            if at == row:
                node.release(p)
        victims.append(victim)
        if node.fits(pod):
            return victims
    return []


class _Node:
    """One node's free resources as plain numbers, for stepping through its candidates
    one by one: cheaper than one-row arrays, and the same arithmetic as ``fits``."""

    def __init__(self, capacity: Capacity, row: int) -> None:
        self._devices = int(capacity.total_gpus[row])
        self._cpu = int(capacity.free_cpu[row])
        self._memory = int(capacity.free_memory[row])
        self._used: list[float] = capacity.gpu_used[row].tolist()

    def release(self, placement: Placement) -> None:
        """Give back what ``placement`` holds here."""
        self._cpu += placement.cpu_millis
        self._memory += placement.memory_bytes
        for device in placement.gpu_ids:
            if 0 <= device < self._devices:
                self._used[device] -= placement.gpu_share

    def fits(self, pod: PodRequest) -> bool:
        if self._cpu < pod.cpu_millis or self._memory < pod.memory_bytes:
            return False
        if pod.gpu >= 1:
            return len([used for used in self._used if used <= EPS]) >= int(pod.gpu)
        if pod.gpu > 0:
            room = 1.0 - pod.gpu + EPS
            return any(used <= room for used in self._used)
        return True


def _settle(
    capacity: Capacity,
    pods: Sequence[PodRequest],
    priority: int,
    pool: VictimPool,
    victims: list[RunningJob],
    cut: dict[str, int] | None,
    found: tuple[Placement, ...],
) -> Plan:
    """Trim a plan that works down to what the gang needs.

    ``found`` fits once ``victims`` are stopped and ``cut`` pods per job are shrunk
    (None: every candidate shrunk to its minimum). Victims the gang fits without,
    largest first, are spared (kept at their minimum); then each job needs to lose
    only its surplus up to the last pod on a node the gang uses, and gives back those
    pods too, last first, while the gang still fits. Starts from ``found`` in case the
    plain greedy placement orders things differently and misses.
    """
    start = capacity.mark()
    if cut is None:
        _shrink_all(capacity, priority, pool)
    else:
        for key, count in cut.items():
            capacity.release(p for _, p in pool.surplus(pool.current(key))[:count])
    for victim in victims:
        capacity.release(p for _, p in pool.core(victim))
    placements = found
    stopped = victims
    trial = _trial(capacity, pods) if victims else None
    if trial is not None:
        placements = trial
        spared: set[str] = set()
        bound = FitBound(capacity, pods)
        for victim in sorted(victims, key=lambda j: (-pool.size(j), pool.rank(j))):
            mark = capacity.mark()
            capacity.hold(p for _, p in pool.core(victim))
            touched = {row for row, _ in pool.core(victim)}
            bound.refresh(touched)
            trial = _trial(capacity, pods) if bound.possible() else None
            if trial is None:
                capacity.undo(mark)
                bound.refresh(touched)
            else:
                spared.add(victim.key)
                placements = trial
        stopped = [v for v in victims if v.key not in spared]
    rows = set(capacity.node_indices(placements))
    counts = _needed_cuts(pool, priority, rows, cut, {v.key for v in stopped})
    capacity.undo(start)
    for victim in stopped:
        capacity.release(victim.placements)
    for job, count in counts.values():
        capacity.release(p for _, p in pool.surplus(job)[:count])
    cuts: list[Cut] = []
    given_back: FitBound | None = None
    for job, count in sorted(counts.values(), key=lambda item: -pool.rank(item[0])):
        if given_back is None:
            given_back = FitBound(capacity, pods)
        while count > 0:
            row, placement = pool.surplus(job)[count - 1]
            mark = capacity.mark()
            capacity.hold([placement])
            at_row = () if row is None else (row,)
            given_back.refresh(at_row)
            if row in rows:
                trial = _trial(capacity, pods) if given_back.possible() else None
                if trial is None:
                    capacity.undo(mark)
                    given_back.refresh(at_row)
                    break
                placements = trial
                rows = set(capacity.node_indices(placements))
            count -= 1
        if count:
            cuts.append(Cut(job, count))
    capacity.undo(start)
    return Plan(tuple(stopped), placements, tuple(sorted(cuts, key=lambda c: pool.rank(c.job))))


def _needed_cuts(
    pool: VictimPool,
    priority: int,
    rows: set[int],
    cut: dict[str, int] | None,
    stopped: set[str],
) -> dict[str, tuple[RunningJob, int]]:
    """Per job not stopped, how much of its surplus must go so the nodes in ``rows``
    look as they did: up to its last cut pod there (a shrink removes a prefix)."""
    needed: dict[str, tuple[RunningJob, int]] = {}
    for row in sorted(rows):
        for job in pool.surplus_on_row(row, priority):
            if job.key in stopped or job.key in needed:
                continue
            surplus = pool.surplus(job)
            limit = len(surplus) if cut is None else cut.get(job.key, 0)
            count = max((i + 1 for i in range(limit) if surplus[i][0] in rows), default=0)
            if count:
                needed[job.key] = (job, count)
    return needed


def _biggest_first(pods: Sequence[PodRequest]) -> list[tuple[int, PodRequest]]:
    return sorted(enumerate(pods), key=lambda item: (*size_key(item[1]), item[0]))


def _trial(capacity: Capacity, pods: Sequence[PodRequest]) -> tuple[Placement, ...] | None:
    mark = capacity.mark()
    placed = try_gang(capacity, pods)
    capacity.undo(mark)
    return placed


def _sum(pods: Sequence[PodRequest]) -> ResourceVector:
    total = ResourceVector()
    for pod in pods:
        total = total + pod.vector
    return total


def _covers(have: ResourceVector, need: ResourceVector) -> bool:
    return (
        have.cpu_millis >= need.cpu_millis
        and have.memory_bytes >= need.memory_bytes
        and have.gpu >= need.gpu - EPS
    )
