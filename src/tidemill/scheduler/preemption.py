"""Whom to stop so a higher-priority gang fits, freeing as little as possible.

Candidates are running, preemptible jobs of strictly lower priority, ranked cheapest
to stop first: lowest priority, then smallest (dominant share), then newest (it has
lost the least work). The gang's pods go biggest first; a pod that fits in free space
is held there. For one that does not, numpy finds the nodes where stopping every
candidate would make room, and the few needing the least freed are examined exactly:
on each, its candidates are added in rank order until the pod fits, and the node whose
set has the lowest top priority and frees the least wins. Once the whole gang fits,
each victim, largest first, is spared if the gang still fits without it.

Everything is tried on the snapshot and undone; the caller commits the plan.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from tidemill.scheduler.capacity import EPS, Capacity, Floats, Indices, Ints
from tidemill.scheduler.ordering import dominant_share
from tidemill.scheduler.placement import fits, place_pod, size_key, try_gang
from tidemill.scheduler.types import Placement, PodRequest, ResourceVector, RunningJob

NODES_EXAMINED = 16
"""Nodes per pod whose victims are worked out exactly; the rest are ranked by numpy only."""


@dataclass(frozen=True)
class Plan:
    """Stop ``victims``, then bind the preemptor with ``placements``."""

    victims: tuple[RunningJob, ...]
    placements: tuple[Placement, ...]


@dataclass
class _Room:
    """Per node, what stopping every remaining candidate below some priority gives back."""

    cpu: Ints
    memory: Ints
    gpu_used: Floats

    def copy(self) -> _Room:
        return _Room(self.cpu.copy(), self.memory.copy(), self.gpu_used.copy())


class VictimPool:
    """Preemptible running jobs in rank order; each is a victim at most once a cycle.

    Indexes are built on first use, so a cycle where everything fits pays nothing.
    """

    def __init__(
        self, running: Sequence[RunningJob], capacity: Capacity, cluster: ResourceVector
    ) -> None:
        self._running = running
        self._capacity = capacity
        self._cluster = cluster
        self._built = False
        self._size: dict[str, float] = {}
        self._jobs: list[RunningJob] = []
        self._priorities: list[int] = []
        self._position: dict[str, int] = {}
        self._on_row: dict[int, list[RunningJob]] = {}
        self._cumulative = np.zeros((1, 3))
        self._taken: set[str] = set()
        self._rooms: dict[int, _Room] = {}

    def any_below(self, priority: int) -> bool:
        """Whether any candidate is left for a preemptor of ``priority``."""
        self._build()
        end = bisect_left(self._priorities, priority)
        return any(job.key not in self._taken for job in islice(self._jobs, end))

    def could_free(self, priority: int) -> ResourceVector:
        """An upper bound on what stopping every candidate below ``priority`` frees."""
        self._build()
        cpu, memory, gpu = self._cumulative[bisect_left(self._priorities, priority)]
        return ResourceVector(int(cpu), int(memory), float(gpu))

    def size(self, job: RunningJob) -> float:
        return self._size[job.key]

    def rank(self, job: RunningJob) -> int:
        return self._position[job.key]

    def on_row(self, row: int, priority: int, spared: set[str]) -> list[RunningJob]:
        """Candidates with a pod on node ``row``, in rank order, minus ``spared`` keys."""
        return [
            job
            for job in self._on_row.get(row, ())
            if job.priority < priority and job.key not in self._taken and job.key not in spared
        ]

    def room(self, priority: int) -> _Room:
        """A private copy of what every candidate below ``priority`` holds, per node."""
        self._build()
        end = bisect_left(self._priorities, priority)
        if end not in self._rooms:
            self._rooms[end] = self._room_of(
                j for j in islice(self._jobs, end) if j.key not in self._taken
            )
        return self._rooms[end].copy()

    def take(self, victims: Sequence[RunningJob]) -> None:
        """Mark ``victims`` stopped: no later preemptor may pick them again."""
        self._taken.update(victim.key for victim in victims)
        for end, room in self._rooms.items():
            self.forget(room, (v for v in victims if self._position[v.key] < end))

    def forget(self, room: _Room, victims: Iterable[RunningJob]) -> None:
        """Remove what ``victims`` hold from ``room``."""
        for victim in victims:
            for row, placement in self._rows_of(victim):
                room.cpu[row] -= placement.cpu_millis
                room.memory[row] -= placement.memory_bytes
                for device in self._devices(row, placement):
                    room.gpu_used[row, device] -= placement.gpu_share

    def _build(self) -> None:
        if self._built:
            return
        self._built = True
        totals = {job.key: job.total for job in self._running}
        self._size = {key: dominant_share(total, self._cluster) for key, total in totals.items()}
        self._jobs = sorted(
            (job for job in self._running if job.preemptible),
            key=lambda j: (j.priority, self._size[j.key], -j.sequence, j.key),
        )
        self._priorities = [job.priority for job in self._jobs]
        self._position = {job.key: i for i, job in enumerate(self._jobs)}
        on_row: dict[int, list[RunningJob]] = defaultdict(list)
        for job in self._jobs:
            for row in sorted({row for row, _ in self._rows_of(job)}):
                on_row[row].append(job)
        self._on_row = dict(on_row)
        ranked = np.array(
            [
                [totals[j.key].cpu_millis, totals[j.key].memory_bytes, totals[j.key].gpu]
                for j in self._jobs
            ],
            dtype=np.float64,
        ).reshape(-1, 3)
        self._cumulative = np.vstack([np.zeros((1, 3)), np.cumsum(ranked, axis=0)])

    def _room_of(self, jobs: Iterable[RunningJob]) -> _Room:
        rows: list[int] = []
        cpu: list[int] = []
        memory: list[int] = []
        device_rows: list[int] = []
        devices: list[int] = []
        shares: list[float] = []
        for job in jobs:
            for row, placement in self._rows_of(job):
                rows.append(row)
                cpu.append(placement.cpu_millis)
                memory.append(placement.memory_bytes)
                for device in self._devices(row, placement):
                    device_rows.append(row)
                    devices.append(device)
                    shares.append(placement.gpu_share)
        capacity = self._capacity
        room = _Room(
            np.zeros_like(capacity.free_cpu),
            np.zeros_like(capacity.free_memory),
            np.zeros_like(capacity.gpu_used),
        )
        at = np.array(rows, dtype=np.intp)
        np.add.at(room.cpu, at, np.array(cpu, dtype=np.int64))
        np.add.at(room.memory, at, np.array(memory, dtype=np.int64))
        slots = (np.array(device_rows, dtype=np.intp), np.array(devices, dtype=np.intp))
        np.add.at(room.gpu_used, slots, np.array(shares, dtype=np.float64))
        return room

    def _rows_of(self, job: RunningJob) -> list[tuple[int, Placement]]:
        index = self._capacity.index
        return [(index[p.node], p) for p in job.placements if p.node in index]

    def _devices(self, row: int, placement: Placement) -> list[int]:
        count = int(self._capacity.total_gpus[row])
        return [d for d in placement.gpu_ids if 0 <= d < count]


def plan(
    capacity: Capacity, pods: Sequence[PodRequest], priority: int, pool: VictimPool
) -> Plan | None:
    """A small set of victims whose stopping lets ``pods`` fit, or None.

    ``capacity`` is left exactly as it was.
    """
    if not _covers(capacity.free_total() + pool.could_free(priority), _sum(pods)):
        return None
    room = pool.room(priority)
    start = capacity.mark()
    chosen: dict[str, RunningJob] = {}
    placed: dict[int, Placement] = {}
    for position, pod in sorted(enumerate(pods), key=lambda item: (*size_key(item[1]), item[0])):
        placement = place_pod(capacity, pod)
        if placement is None:
            victims = _make_room(capacity, pod, priority, pool, room, set(chosen))
            for victim in victims:
                capacity.release(victim.placements)
                chosen[victim.key] = victim
            pool.forget(room, victims)
            placement = place_pod(capacity, pod)
        if placement is None:
            capacity.undo(start)
            return None
        capacity.hold([placement])
        placed[position] = placement
    placements = tuple(placed[i] for i in range(len(pods)))
    capacity.undo(start)
    result = _spare(capacity, pods, sorted(chosen.values(), key=pool.rank), pool, placements)
    capacity.undo(start)
    return result


def _make_room(
    capacity: Capacity,
    pod: PodRequest,
    priority: int,
    pool: VictimPool,
    room: _Room,
    chosen: set[str],
) -> list[RunningJob]:
    """The cheapest victims that free one node enough for ``pod``; empty if none can."""
    could = capacity.eligible_mask(pod.gpu_model) & fits(
        pod,
        capacity.free_cpu + room.cpu,
        capacity.free_memory + room.memory,
        capacity.gpu_used - room.gpu_used,
    )
    rows = np.flatnonzero(could)
    nearest = rows[np.argsort(_lacking(capacity, pod, rows), kind="stable")[:NODES_EXAMINED]]
    best: list[RunningJob] = []
    best_cost: tuple[int, float, int] | None = None
    for row in nearest:
        victims = _victims_on(capacity, int(row), pod, pool.on_row(int(row), priority, chosen))
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
    capacity: Capacity, row: int, pod: PodRequest, candidates: Sequence[RunningJob]
) -> list[RunningJob]:
    """Candidates on node ``row`` in rank order until ``pod`` fits there; empty if never."""
    name = capacity.names[row]
    count = int(capacity.total_gpus[row])
    cpu = np.array([capacity.free_cpu[row]], dtype=np.int64)
    memory = np.array([capacity.free_memory[row]], dtype=np.int64)
    used = capacity.gpu_used[row : row + 1].copy()
    victims: list[RunningJob] = []
    for victim in candidates:
        for p in victim.placements:
            if p.node != name:
                continue
            cpu += p.cpu_millis
            memory += p.memory_bytes
            for device in p.gpu_ids:
                if 0 <= device < count:
                    used[0, device] -= p.gpu_share
        victims.append(victim)
        if fits(pod, cpu, memory, used)[0]:
            return victims
    return []


def _spare(
    capacity: Capacity,
    pods: Sequence[PodRequest],
    victims: list[RunningJob],
    pool: VictimPool,
    found: tuple[Placement, ...],
) -> Plan:
    """Put back each victim, largest first, that the gang fits without.

    Starts from ``found``, placements known to fit with every victim stopped, in case
    the plain greedy placement orders things differently and misses.
    """
    for victim in victims:
        capacity.release(victim.placements)
    placements = _trial(capacity, pods)
    if placements is None:
        return Plan(tuple(victims), found)
    spared: set[str] = set()
    for victim in sorted(victims, key=lambda j: (-pool.size(j), pool.rank(j))):
        mark = capacity.mark()
        capacity.hold(victim.placements)
        trial = _trial(capacity, pods)
        if trial is None:
            capacity.undo(mark)
        else:
            spared.add(victim.key)
            placements = trial
    return Plan(tuple(v for v in victims if v.key not in spared), placements)


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
