"""What one cycle hands the next: the snapshot's free capacity and who holds what.

Rebuilding free capacity from every running placement costs a cycle what runs, not
what changed. A ``Memo`` keeps that work for the snapshot it was made from; ``carry``
brings it to the next snapshot by comparing running jobs (the same object, found by id,
or an equal one under the same key, is unchanged) and touching only the nodes of jobs
that started, ended or changed, and of nodes whose capacity or cordon changed.

A memo is a value: ``carry`` never changes the one it is given, so any memo may be
carried to any snapshot and the result is what a fresh build of that snapshot gives.
Only what the snapshot alone decides is kept, never what a cycle decided.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tidemill.scheduler.arrays import Ints
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.fragmentation import Shape, held_shape
from tidemill.scheduler.types import ClusterState, NodeInfo, Placement, ResourceVector, RunningJob

REBUILD_FRACTION = 0.25
"""Carrying a memo across more changed jobs than this fraction of those running costs
more than a fresh build, so it is rebuilt instead."""

GPU_DIGITS = 9
"""Decimals a queue's held GPUs are rounded to, so sums taken in another order agree."""


@dataclass(frozen=True, eq=False)
class Memo:
    """A snapshot's derived state; never changed once made (the capacity is cloned to use)."""

    nodes: tuple[NodeInfo, ...]
    running: tuple[RunningJob, ...]
    ids: Ints
    """``id()`` of each of ``running``, in order."""
    jobs: Mapping[str, RunningJob]
    """Running jobs by key; with a key repeated in ``running`` the memo is always rebuilt."""
    capacity: Capacity
    held_raw: Mapping[str, ResourceVector]
    preemptible_priorities: Counter[int]
    """How many preemptible running jobs there are at each priority."""
    held_shapes: Counter[Shape]
    """How many running pods hold each shape: the running part of the pod mix that
    fragmentation scoring keeps room for, which would cost a cycle every running pod."""

    @property
    def held(self) -> dict[str, ResourceVector]:
        """What running jobs hold per queue (queues the snapshot does not define too)."""
        return {queue: _rounded(amount) for queue, amount in self.held_raw.items()}

    def lowest_preemptible(self) -> int | None:
        """The lowest priority of a preemptible running job; None when there is none."""
        return min(self.preemptible_priorities, default=None)


def build(state: ClusterState) -> Memo:
    """The memo of ``state`` from nothing."""
    held: dict[str, ResourceVector] = {}
    priorities: Counter[int] = Counter()
    for job in state.running:
        held[job.queue] = held.get(job.queue, ResourceVector()) + job.total
        if job.preemptible:
            priorities[job.priority] += 1
    capacity = Capacity.of(state)
    capacity.group_by_free_gpus()
    return Memo(
        nodes=state.nodes,
        running=state.running,
        ids=_ids(state.running),
        jobs={job.key: job for job in state.running},
        capacity=capacity,
        held_raw=held,
        preemptible_priorities=priorities,
        held_shapes=Counter(map(held_shape, _placements(state.running))),
    )


def carry(memo: Memo | None, state: ClusterState) -> Memo:
    """The memo of ``state``, from ``memo`` (of an earlier snapshot) when that is cheaper."""
    if memo is None or len(memo.jobs) != len(memo.running):
        return build(state)
    if memo.running is state.running and memo.nodes is state.nodes:
        return memo
    capacity = memo.capacity
    if memo.nodes is not state.nodes and memo.nodes != state.nodes:
        moved = capacity.with_nodes(state.nodes)
        if moved is None:
            return build(state)
        capacity = moved
        capacity.group_by_free_gpus()
    # Objects first, by id in numpy (the memo keeps its jobs alive, so no id is reused
    # while compared), then by key and value for the few objects that differ.
    ids = _ids(state.running)
    appeared = [
        state.running[i] for i in np.flatnonzero(~np.isin(ids, memo.ids, assume_unique=True))
    ]
    gone = np.flatnonzero(~np.isin(memo.ids, ids, assume_unique=True))
    vanished = {memo.running[i].key: memo.running[i] for i in gone}
    jobs = dict(memo.jobs)
    for key in vanished:
        del jobs[key]
    started: list[RunningJob] = []
    for job in appeared:
        jobs[job.key] = job
        if vanished.get(job.key) == job:
            del vanished[job.key]
        else:
            started.append(job)
    ended = list(vanished.values())
    if len(jobs) != len(state.running):
        return build(state)
    if len(started) + len(ended) > REBUILD_FRACTION * max(len(jobs), 1):
        return build(state)
    if started or ended:
        capacity = capacity.changed(_placements(ended), _placements(started))
    held = dict(memo.held_raw)
    priorities = memo.preemptible_priorities.copy()
    shapes = memo.held_shapes.copy()
    for job, sign in [*((job, -1) for job in ended), *((job, 1) for job in started)]:
        amount = job.total if sign > 0 else ResourceVector() - job.total
        held[job.queue] = held.get(job.queue, ResourceVector()) + amount
        if job.preemptible:
            priorities[job.priority] += sign
            if not priorities[job.priority]:
                del priorities[job.priority]
        for shape in map(held_shape, job.placements):
            shapes[shape] += sign
            if not shapes[shape]:
                del shapes[shape]
    return Memo(state.nodes, state.running, ids, jobs, capacity, held, priorities, shapes)


def _ids(running: tuple[RunningJob, ...]) -> Ints:
    ids: Ints = np.fromiter(map(id, running), dtype=np.int64, count=len(running))
    return ids


def _placements(jobs: Sequence[RunningJob]) -> list[Placement]:
    return [p for job in jobs for p in job.placements]


def _rounded(amount: ResourceVector) -> ResourceVector:
    gpu = round(amount.gpu, GPU_DIGITS) + 0.0  # + 0.0: no -0 from a sum that ran out
    return ResourceVector(amount.cpu_millis, amount.memory_bytes, gpu)
