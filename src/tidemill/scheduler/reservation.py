"""Reservations: a job that waited past its bound gets room held for it as it frees.

Under steady load a big gang never finds its whole room free at once: small jobs take
each piece as it frees. So a job that has waited past its bound
(``QueueInfo.reserve_after_s``, else ``SchedulerConfig.reserve_after_s``) is tried
before the DRF order, and if it still does not fit, room is chosen for it where running
jobs are expected to end soonest and held: later jobs of the cycle do not see it free.
A job may still use held room if it is sure to end before the reservation is due (its
``runtime_s``, else its queue's ``runtime_estimate_s``): that is backfill.

A reservation lasts across cycles as data (``ClusterState.reservations`` in,
``Decisions.reservations`` out) and keeps its nodes while they can still hold the gang,
so room accumulates instead of the target moving each cycle.

Held room may overlap running jobs: holding it drives the free amounts there below
zero, so nothing else fits until those jobs end and the reservation is satisfied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from tidemill.scheduler import reasons
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.flat import Flat
from tidemill.scheduler.placement import try_gang
from tidemill.scheduler.reasons import Code
from tidemill.scheduler.types import (
    ClusterState,
    JobRequest,
    Placement,
    PodRequest,
    Reason,
    Reservation,
    RunningJob,
    SchedulerConfig,
)

WAITS_FOR_ROOM = frozenset(
    {
        Code.INSUFFICIENT_CPU.value,
        Code.INSUFFICIENT_MEMORY.value,
        Code.INSUFFICIENT_GPU.value,
        Code.INSUFFICIENT_EXTENDED_RESOURCE.value,
        Code.GANG_DOES_NOT_FIT.value,
    }
)
"""Reason codes that room freeing up would cure; other refusals get no reservation."""


class Reservations:
    """Who has waited too long this cycle, the room held for them, and who may backfill."""

    def __init__(
        self,
        state: ClusterState,
        config: SchedulerConfig,
        pending: Sequence[JobRequest],
        turns: Mapping[str, int] | None = None,
    ) -> None:
        """``turns``: each queue's place in the DRF order now (``ordering.queue_turns``),
        which decides between queues' late jobs; None: the longest waiting first."""
        self._state = state
        self._turns = {} if turns is None else turns
        self._config = config
        self._previous = {r.job: r for r in state.reservations}
        self._ending: tuple[frozenset[str], _Ending] | None = None
        self.held: list[Reservation] = []
        """The reservations made or kept this cycle, in the order they were held."""
        self.starving: list[JobRequest] = self._late(pending)
        """Jobs past their bound, longest waiting first (those already holding room
        before the rest, and queue by queue in turn), at most ``config.max_reservations``."""

    def reserve(
        self, capacity: Capacity, job: JobRequest, reason: Reason, stopped: set[str]
    ) -> Reason:
        """Hold room for ``job``, which does not fit now, and say when it should start.

        ``reason`` is why it does not fit; it comes back unchanged when no room could
        ever hold the gang, or when waiting for room would not help. ``stopped`` names
        jobs preempted earlier in the cycle: their room is free already.
        """
        now = self._state.now
        if reason.code not in WAITS_FOR_ROOM or now is None or job.waiting_since is None:
            return reason
        running = self._ending_without(capacity, frozenset(stopped))
        previous = self._previous.get(job.key)
        found: tuple[tuple[Placement, ...], float | None] | None = None
        if previous is not None and _same_gang(capacity, previous.placements, job.gang):
            kept = previous.placements
            ended = _ended(capacity, running, lambda: _room_for(capacity, kept))
            found = None if ended is None else (kept, running.due(ended, now))
        if found is None:
            found = _plan(capacity, running, now, job.gang)
        if found is None:
            return reason
        placements, due = found
        reservation = Reservation(job.key, placements, due)
        capacity.hold(placements)
        self.held.append(reservation)
        waited_s = now - job.waiting_since
        return reasons.reserved(reason, reservation, waited_s, self._bound(job) or 0.0)

    def backfill(self, capacity: Capacity, job: JobRequest) -> tuple[Placement, ...] | None:
        """Place ``job``'s gang in room reserved for jobs due after it ends, and hold it
        there; None when it does not fit that way or its end is unknown."""
        now = self._state.now
        runtime_s = job.runtime_s
        if runtime_s is None:
            runtime_s = self._state.queues[job.queue].runtime_estimate_s
        if not self.held or now is None or runtime_s is None:
            return None
        ends = now + runtime_s
        usable = [r for r in self.held if r.due is not None and ends <= r.due]
        if not usable:
            return None
        mark = capacity.mark()
        for reservation in usable:
            capacity.release(reservation.placements)
        placed = try_gang(capacity, job.gang)
        capacity.undo(mark)
        if placed is not None:
            capacity.hold(placed)
        return placed

    def note(self, reason: Reason) -> Reason:
        """``reason``, saying that room held for others was left out, when any was."""
        return reasons.with_reservation_note(reason, self.held) if self.held else reason

    def _ending_without(self, capacity: Capacity, stopped: frozenset[str]) -> _Ending:
        """Running jobs in end order, less ``stopped``; built once while that holds."""
        if self._ending is None or self._ending[0] != stopped:
            jobs = sorted((r for r in self._state.running if r.key not in stopped), key=_end_order)
            self._ending = (stopped, _Ending(capacity, jobs))
        return self._ending[1]

    def _bound(self, job: JobRequest) -> float | None:
        queue = self._state.queues[job.queue]
        if queue.reserve_after_s is not None:
            return queue.reserve_after_s
        return self._config.reserve_after_s

    def _late(self, pending: Sequence[JobRequest]) -> list[JobRequest]:
        """Jobs past their bound, at most ``max_reservations``: those holding room first;
        then each queue's longest waiting, then each one's next, and so on, queues taken
        in their DRF turn. So one queue's backlog of jobs that all waited long cannot
        keep every reservation while another queue's job has waited past its bound too."""
        now = self._state.now
        if now is None or self._config.max_reservations <= 0:
            return []
        late: list[tuple[float, JobRequest]] = []
        for job in pending:
            bound = self._bound(job)
            since = job.waiting_since
            if since is not None and bound is not None and now - since >= bound:
                late.append((since, job))
        late.sort(key=lambda item: (item[0], -item[1].priority, item[1].sequence, item[1].key))
        in_queue: dict[str, int] = {}
        ranked: list[tuple[bool, int, int, int, JobRequest]] = []
        for position, (_, job) in enumerate(late):
            in_queue[job.queue] = in_queue.get(job.queue, -1) + 1
            holds = job.key in self._previous
            queue_turn = self._turns.get(job.queue, 0)
            ranked.append((not holds, in_queue[job.queue], queue_turn, position, job))
        ranked.sort(key=lambda item: item[:4])
        return [job for *_, job in ranked[: self._config.max_reservations]]


def _end_order(job: RunningJob) -> tuple[bool, float, str]:
    """Soonest expected end first; jobs with no expected end last."""
    return (job.expected_end is None, job.expected_end or 0.0, job.key)


class _Ending:
    """Running jobs in expected-end order, and what each first ``n`` of them free per
    node as arrays: a bisection step frees thousands of pods in a few numpy calls."""

    def __init__(self, capacity: Capacity, jobs: Sequence[RunningJob]) -> None:
        self.jobs = jobs
        index = capacity.index
        self._held = Flat.of(
            capacity.total_gpus, ([(index.get(p.node), p) for p in j.placements] for j in jobs)
        )
        self._extended = [
            [
                replace(p, cpu_millis=0, memory_bytes=0, gpu_ids=())
                for p in job.placements
                if p.extended and p.node in index
            ]
            for job in jobs
        ]

    def __len__(self) -> int:
        return len(self.jobs)

    def release(self, capacity: Capacity, count: int) -> None:
        """Give back on ``capacity`` what the first ``count`` jobs hold (undo to restore)."""
        if count == 0:
            return
        held = self._held
        n, d = held.cuts[count], held.device_cuts[count]
        cpu = np.zeros_like(capacity.free_cpu)
        memory = np.zeros_like(capacity.free_memory)
        used = np.zeros_like(capacity.gpu_used)
        np.add.at(cpu, held.rows[:n], held.cpu[:n])
        np.add.at(memory, held.rows[:n], held.memory[:n])
        np.add.at(used, (held.device_rows[:d], held.devices[:d]), held.shares[:d])
        capacity.release_all(cpu, memory, used)
        capacity.release(p for extended in self._extended[:count] for p in extended)

    def due(self, ended: int, now: float) -> float | None:
        """When the first ``ended`` jobs should all have ended; None if one of them has
        no expected end."""
        if ended == 0:
            return now
        end = self.jobs[ended - 1].expected_end
        return None if end is None else max(now, end)


def _ended(capacity: Capacity, running: _Ending, fits: Callable[[], bool]) -> int | None:
    """How many of ``running`` (in end order) must end before ``fits`` holds; None if
    it does not hold even with all of them gone. Freeing more never makes a fit fail,
    so the answer is found by bisection."""
    low, high = 0, len(running) + 1
    while low < high:
        middle = (low + high) // 2
        mark = capacity.mark()
        running.release(capacity, middle)
        ok = fits()
        capacity.undo(mark)
        if ok:
            high = middle
        else:
            low = middle + 1
    return None if low > len(running) else low


def _plan(
    capacity: Capacity, running: _Ending, now: float, gang: Sequence[PodRequest]
) -> tuple[tuple[Placement, ...], float | None] | None:
    """Where ``gang`` fits soonest as running jobs end, and when; None if never."""
    ended = _ended(capacity, running, lambda: _placed(capacity, gang) is not None)
    if ended is None:
        return None
    mark = capacity.mark()
    running.release(capacity, ended)
    placements = _placed(capacity, gang)
    capacity.undo(mark)
    return None if placements is None else (placements, running.due(ended, now))


def _placed(capacity: Capacity, gang: Sequence[PodRequest]) -> tuple[Placement, ...] | None:
    mark = capacity.mark()
    placed = try_gang(capacity, gang)
    capacity.undo(mark)
    return placed


def _room_for(capacity: Capacity, placements: Sequence[Placement]) -> bool:
    """Whether ``placements`` can be held with nothing on their nodes over capacity."""
    mark = capacity.mark()
    capacity.hold(placements)
    ok = True
    for p in placements:
        row = capacity.index[p.node]
        devices = [d for d in p.gpu_ids if 0 <= d < capacity.total_gpus[row]]
        ok = ok and capacity.free_cpu[row] >= 0 and capacity.free_memory[row] >= 0
        ok = ok and bool((capacity.gpu_used[row, devices] <= 1.0 + EPS).all())
        ok = ok and bool((capacity.free_extended[row] >= 0).all())
    capacity.undo(mark)
    return ok


def _same_gang(
    capacity: Capacity, placements: Sequence[Placement], gang: Sequence[PodRequest]
) -> bool:
    """Whether a kept reservation still suits ``gang``: the same pods and sizes, on
    schedulable nodes of the right GPU model."""
    pods = {(p.role, p.index): p for p in gang}
    if len(pods) != len(placements) or len(placements) != len(gang):
        return False
    for placement in placements:
        pod = pods.get((placement.role, placement.index))
        row = capacity.index.get(placement.node)
        if pod is None or row is None or not capacity.eligible_mask(pod.gpu_model)[row]:
            return False
        gpu = placement.gpu_share * len(placement.gpu_ids)
        if (placement.cpu_millis, placement.memory_bytes, placement.extended) != (
            pod.cpu_millis,
            pod.memory_bytes,
            pod.extended,
        ) or abs(gpu - pod.gpu) > EPS:
            return False
    return True
