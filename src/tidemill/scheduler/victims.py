"""The running jobs a preemptor may take room from, as they stand during one cycle.

Candidates are running, preemptible jobs; for a preemptor of priority p, those below p.
They are ranked cheapest to stop first: lowest priority, then smallest (dominant
share), then newest (it has lost the least work). Each candidate's placements split in
two: its *surplus*, the ``shrinkable`` pods that may be taken back one by one in the
order given (a shrink removes a prefix), and its *core*, what stays until the job is
stopped whole.

Per-node sums of what candidates below a priority hold (core and surplus apart) are
built on first use and kept current as jobs are shrunk or stopped, so a cycle where
everything fits, or where no candidate is below any preemptor, pays nothing and each
preemption reads a ready answer. A plan borrows them (``lent_room``) and they are put
back row by row when it ends, rather than copied whole for every plan.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from itertools import islice

import numpy as np

from tidemill.scheduler.arrays import Floats, Ints
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.flat import Flat
from tidemill.scheduler.ordering import dominant_share
from tidemill.scheduler.types import Placement, ResourceVector, RunningJob, usage

Located = tuple[int | None, Placement]
"""A placement and its node's row in the snapshot (None for a node no longer there)."""

Placed = tuple[int, Placement]
"""A placement on a node the snapshot has, and that node's row."""


@dataclass
class Room:
    """Per node, what stopping some set of placements would give back."""

    cpu: Ints
    memory: Ints
    gpu_used: Floats
    saved: list[tuple[int, int, int, Floats]] | None = None
    """While lent (``VictimPool.lent_room``): each changed row as it was, to put back."""

    def save(self, row: int) -> None:
        if self.saved is not None:
            self.saved.append(
                (row, int(self.cpu[row]), int(self.memory[row]), self.gpu_used[row].copy())
            )

    def put_back(self) -> None:
        """Undo every change since it was lent, last first."""
        for row, cpu, memory, used in reversed(self.saved or []):
            self.cpu[row], self.memory[row], self.gpu_used[row] = cpu, memory, used
        self.saved = None


class VictimPool:
    """Preemption candidates in rank order; each is stopped at most once a cycle."""

    def __init__(
        self,
        running: Sequence[RunningJob],
        capacity: Capacity,
        cluster: ResourceVector,
        lowest: int | None,
    ) -> None:
        """``lowest``: the lowest priority of a preemptible job in ``running`` (None: none
        is), so a preemptor at or below it is turned away without building the pool."""
        self._running = running
        self._lowest = lowest
        self._capacity = capacity
        self._cluster = cluster
        self._built = False
        self._size: dict[str, float] = {}
        self._jobs: list[RunningJob] = []
        self._priorities: list[int] = []
        self._position: dict[str, int] = {}
        self._current: dict[str, RunningJob] = {}
        self._core: dict[str, list[Placed]] = {}
        self._surplus: dict[str, list[Located]] = {}
        self._with_surplus: list[int] = []
        self._on_row: dict[int, list[str]] = {}
        self._surplus_on_row: dict[int, list[str]] = {}
        self._cumulative = np.zeros((1, 3))
        self._surplus_cumulative = np.zeros((1, 3))
        self._taken: set[str] = set()
        self._first_left = 0
        """Rank of the first candidate not taken (taking only ever moves it on)."""
        self._rooms: dict[int, Room] = {}
        self._surplus_rooms: dict[int, Room] = {}

    def any_below(self, priority: int) -> bool:
        """Whether any candidate is left for a preemptor of ``priority``."""
        if self._lowest is None or priority <= self._lowest:
            return False
        self._build()
        jobs = self._jobs
        while self._first_left < len(jobs) and jobs[self._first_left].key in self._taken:
            self._first_left += 1
        return self._first_left < bisect_left(self._priorities, priority)

    def any_surplus_below(self, priority: int) -> bool:
        """Whether any candidate below ``priority`` still has pods it may give back."""
        self._build()
        end = bisect_left(self._priorities, priority)
        return bool(self._with_surplus) and self._with_surplus[0] < end

    def could_free(self, priority: int) -> ResourceVector:
        """An upper bound on what stopping every candidate below ``priority`` frees."""
        self._build()
        return self._bound(self._cumulative, priority)

    def could_shrink(self, priority: int) -> ResourceVector:
        """An upper bound on what shrinking every candidate below ``priority`` frees."""
        self._build()
        return self._bound(self._surplus_cumulative, priority)

    def size(self, job: RunningJob) -> float:
        return self._size[job.key]

    def rank(self, job: RunningJob) -> int:
        return self._position[job.key]

    def current(self, key: str) -> RunningJob:
        """Candidate ``key`` as it stands now: without the pods shrunk this cycle."""
        return self._current[key]

    def core(self, job: RunningJob) -> list[Placed]:
        """What ``job`` keeps however far it is shrunk, on nodes still in the snapshot."""
        return self._core[job.key]

    def surplus(self, job: RunningJob) -> list[Located]:
        """The pods ``job`` may still give back, in the order they go."""
        return self._surplus.get(job.key, [])

    def remaining(self) -> list[RunningJob]:
        """Every candidate not stopped this cycle, at any priority, as it stands now."""
        self._build()
        return [self._current[job.key] for job in self._jobs if job.key not in self._taken]

    def on_row(self, row: int, priority: int, spared: set[str]) -> list[RunningJob]:
        """Candidates with a core pod on node ``row``, in rank order, minus ``spared`` keys."""
        return self._below(self._on_row.get(row, ()), priority, spared)

    def surplus_on_row(self, row: int, priority: int) -> list[RunningJob]:
        """Candidates that had surplus pods on node ``row``, in rank order."""
        return self._below(self._surplus_on_row.get(row, ()), priority, set())

    def lent_room(self, priority: int) -> AbstractContextManager[Room]:
        """The core every candidate below ``priority`` holds, per node, for a planning
        step to change (by ``forget``) until the block ends and it is put back as it
        was: what a private copy gives, paying for the rows changed, not every node."""
        return self._lent(self._room(self._rooms, priority, self.core))

    def lent_surplus_room(self, priority: int) -> AbstractContextManager[Room]:
        """``lent_room`` for the surplus every candidate below ``priority`` holds."""
        return self._lent(self._room(self._surplus_rooms, priority, self.surplus))

    def take(self, victims: Sequence[RunningJob]) -> None:
        """Mark ``victims`` stopped: no later preemptor may pick them again."""
        for victim in victims:
            self._taken.add(victim.key)
            self._drop_surplus_rank(victim.key)
            position = self._position[victim.key]
            for end, room in self._rooms.items():
                if position < end:
                    self.forget(room, self.core(victim))
            for end, room in self._surplus_rooms.items():
                if position < end:
                    self.forget(room, self.surplus(victim))

    def shrink(self, key: str, count: int) -> tuple[Placement, ...]:
        """Take the first ``count`` surplus pods from candidate ``key``; returns them."""
        surplus = self._surplus[key]
        removed, self._surplus[key] = surplus[:count], surplus[count:]
        position = self._position[key]
        for end, room in self._surplus_rooms.items():
            if position < end:
                self.forget(room, removed)
        if not self._surplus[key]:
            self._drop_surplus_rank(key)
        gone = {(p.role, p.index) for _, p in removed}
        job = self._current[key]
        self._current[key] = replace(
            job,
            placements=tuple(p for p in job.placements if (p.role, p.index) not in gone),
            shrinkable=tuple(pair for pair in job.shrinkable if pair not in gone),
        )
        return tuple(p for _, p in removed)

    def forget(self, room: Room, placements: Iterable[Located]) -> None:
        """Remove what ``placements`` hold from ``room``."""
        for row, placement in placements:
            if row is None:
                continue
            room.save(row)
            room.cpu[row] -= placement.cpu_millis
            room.memory[row] -= placement.memory_bytes
            for device in self._devices(row, placement):
                room.gpu_used[row, device] -= placement.gpu_share

    def _below(self, keys: Iterable[str], priority: int, spared: set[str]) -> list[RunningJob]:
        jobs = (self._current[key] for key in keys)
        return [
            job
            for job in jobs
            if job.priority < priority and job.key not in self._taken and job.key not in spared
        ]

    def _bound(self, cumulative: Floats, priority: int) -> ResourceVector:
        """``cumulative`` as read after :meth:`_build` (the callers build first)."""
        cpu, memory, gpu = cumulative[bisect_left(self._priorities, priority)]
        return ResourceVector(int(cpu), int(memory), float(gpu))

    @staticmethod
    @contextmanager
    def _lent(room: Room) -> Iterator[Room]:
        if room.saved is not None:
            raise RuntimeError("a room is lent to one planning step at a time")
        room.saved = []
        try:
            yield room
        finally:
            room.put_back()

    def _room(
        self, cache: dict[int, Room], priority: int, part: Callable[[RunningJob], Sequence[Located]]
    ) -> Room:
        self._build()
        end = bisect_left(self._priorities, priority)
        if end not in cache:
            cache[end] = self._room_of(
                located
                for job in islice(self._jobs, end)
                if job.key not in self._taken
                for located in part(job)
            )
        return cache[end]

    def _drop_surplus_rank(self, key: str) -> None:
        ranks = self._with_surplus
        at = bisect_left(ranks, self._position[key])
        if at < len(ranks) and ranks[at] == self._position[key]:
            del ranks[at]

    def _build(self) -> None:
        if self._built:
            return
        self._built = True
        candidates = [job for job in self._running if job.preemptible]
        totals = {job.key: job.total for job in candidates}
        self._size = {key: dominant_share(total, self._cluster) for key, total in totals.items()}
        self._jobs = sorted(
            candidates, key=lambda j: (j.priority, self._size[j.key], -j.sequence, j.key)
        )
        self._priorities = [job.priority for job in self._jobs]
        on_row: dict[int, list[str]] = defaultdict(list)
        surplus_on_row: dict[int, list[str]] = defaultdict(list)
        for position, job in enumerate(self._jobs):
            self._position[job.key] = position
            self._current[job.key] = job
            core, surplus = self._split(job)
            self._core[job.key] = core
            for row in sorted({row for row, _ in core}):
                on_row[row].append(job.key)
            if surplus:
                self._surplus[job.key] = surplus
                self._with_surplus.append(position)  # positions come in order
                for row in sorted({row for row, _ in surplus if row is not None}):
                    surplus_on_row[row].append(job.key)
        self._on_row = dict(on_row)
        self._surplus_on_row = dict(surplus_on_row)
        self._cumulative = _cumulative(totals[j.key] for j in self._jobs)
        nothing = ResourceVector()
        self._surplus_cumulative = _cumulative(
            usage(p for _, p in self._surplus[j.key]) if j.key in self._surplus else nothing
            for j in self._jobs
        )

    def _split(self, job: RunningJob) -> tuple[list[Placed], list[Located]]:
        """(core on known nodes, surplus in removal order) of ``job``."""
        index = self._capacity.index
        if not job.shrinkable:
            return [(index[p.node], p) for p in job.placements if p.node in index], []
        by_pod = {(p.role, p.index): p for p in job.placements}
        surplus: list[Located] = []
        seen: set[tuple[str, int]] = set()
        for pair in job.shrinkable:
            placement = by_pod.get(pair)
            if placement is not None and pair not in seen:
                seen.add(pair)
                surplus.append((index.get(placement.node), placement))
        core: list[Placed] = [
            (index[p.node], p)
            for p in job.placements
            if (p.role, p.index) not in seen and p.node in index
        ]
        return core, surplus

    def _room_of(self, placements: Iterable[Located]) -> Room:
        capacity = self._capacity
        flat = Flat.of(capacity.total_gpus, [placements])
        room = Room(
            np.zeros_like(capacity.free_cpu),
            np.zeros_like(capacity.free_memory),
            np.zeros_like(capacity.gpu_used),
        )
        np.add.at(room.cpu, flat.rows, flat.cpu)
        np.add.at(room.memory, flat.rows, flat.memory)
        np.add.at(room.gpu_used, (flat.device_rows, flat.devices), flat.shares)
        return room

    def _devices(self, row: int, placement: Placement) -> list[int]:
        count = int(self._capacity.total_gpus[row])
        return [d for d in placement.gpu_ids if 0 <= d < count]


def _cumulative(totals: Iterable[ResourceVector]) -> Floats:
    """Row i: what the first i candidates hold together (row 0 is nothing)."""
    ranked = np.array(
        [[t.cpu_millis, t.memory_bytes, t.gpu] for t in totals], dtype=np.float64
    ).reshape(-1, 3)
    summed: Floats = np.vstack([np.zeros((1, 3)), np.cumsum(ranked, axis=0)])
    return summed
