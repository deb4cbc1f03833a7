"""First-fit, best-fit and FIFO: the textbook policies ``schedule`` is measured against.

Each is a policy like ``schedule``: a ``ClusterState`` and the pending jobs in,
``Decisions`` out. Jobs go in arrival order (``sequence``), whatever their queue or
priority; a gang is placed pod by pod, biggest first, all or nothing. ``first-fit``
and ``best-fit`` skip a job that does not fit and try the next; ``fifo`` stops at the
first one (head-of-line blocking, the classic batch queue) and places first-fit.
They never preempt and ignore extended resources and spread: they answer "what does
placement alone achieve", the way the FGD paper's baselines do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tidemill.scheduler import (
    Bind,
    ClusterState,
    Code,
    Decisions,
    JobRequest,
    Placement,
    PodRequest,
    Reason,
)
from tidemill.scheduler.arrays import Bools, Floats, Ints
from tidemill.scheduler.capacity import EPS


@dataclass(frozen=True)
class _Held:
    row: int
    placement: Placement


class _Free:
    """What is free per node: cpu, memory, and each device's used share."""

    def __init__(self, state: ClusterState) -> None:
        nodes = state.nodes
        self.names = [n.name for n in nodes]
        self.index = {name: row for row, name in enumerate(self.names)}
        self.schedulable: Bools = np.array([n.schedulable for n in nodes], dtype=np.bool_)
        self.models = np.array([n.gpu_model or "" for n in nodes], dtype=object)
        self.total_cpu: Ints = np.array([n.cpu_millis for n in nodes], dtype=np.int64)
        self.total_gpus: Ints = np.array([n.gpus for n in nodes], dtype=np.int64)
        self.cpu: Ints = self.total_cpu.copy()
        self.memory: Ints = np.array([n.memory_bytes for n in nodes], dtype=np.int64)
        width = int(self.total_gpus.max(initial=0))
        slots = np.arange(width)[np.newaxis, :] < self.total_gpus[:, np.newaxis]
        self.used: Floats = np.where(slots, 0.0, np.inf)
        for job in state.running:
            for placement in job.placements:
                row = self.index.get(placement.node)
                if row is not None:
                    self.apply(_Held(row, placement), sign=1)

    def fitting(self, pod: PodRequest) -> Bools:
        """Per node, whether ``pod`` fits there now."""
        ok: Bools = (
            self.schedulable & (self.cpu >= pod.cpu_millis) & (self.memory >= pod.memory_bytes)
        )
        if pod.gpu_model:
            ok &= self.models == pod.gpu_model
        if pod.gpu >= 1:
            ok &= (self.used <= EPS).sum(axis=1) >= int(pod.gpu)
        elif pod.gpu > 0:
            ok &= (self.used <= 1.0 - pod.gpu + EPS).any(axis=1)
        return ok

    def leftover(self, pod: PodRequest, rows: npt.NDArray[np.intp]) -> Floats:
        """Share of its GPUs plus share of its cpu each node in ``rows`` would have left."""
        gpu_free = np.clip(1.0 - self.used[rows], 0.0, 1.0).sum(axis=1) - pod.gpu
        gpu_part = gpu_free / np.maximum(self.total_gpus[rows], 1)
        cpu_part = (self.cpu[rows] - pod.cpu_millis) / np.maximum(self.total_cpu[rows], 1)
        left: Floats = gpu_part + cpu_part
        return left

    def devices(self, row: int, gpu: float, tightest: bool) -> tuple[int, ...]:
        """Devices on ``row`` for ``gpu``: the first free ones, or for a share the first
        device it fits (``tightest``: the fullest that still fits)."""
        used = self.used[row]
        if gpu >= 1:
            return tuple(int(d) for d in np.flatnonzero(used <= EPS)[: int(gpu)])
        if gpu <= 0:
            return ()
        fitting = np.flatnonzero(used <= 1.0 - gpu + EPS)
        if tightest:
            return (int(fitting[int(np.argmax(used[fitting]))]),)
        return (int(fitting[0]),)

    def apply(self, held: _Held, sign: int) -> None:
        p = held.placement
        self.cpu[held.row] -= sign * p.cpu_millis
        self.memory[held.row] -= sign * p.memory_bytes
        for device in p.gpu_ids:
            self.used[held.row, device] += sign * p.gpu_share


def _place(free: _Free, job: JobRequest, best: bool) -> tuple[Placement, ...] | int:
    """Hold every pod of ``job``'s gang, or none and return how many fitted first."""
    held: list[_Held] = []
    order = sorted(
        enumerate(job.gang), key=lambda item: (-item[1].gpu, -item[1].cpu_millis, item[0])
    )
    placed: dict[int, Placement] = {}
    for position, pod in order:
        rows = np.flatnonzero(free.fitting(pod))
        if rows.size == 0:
            for undo in held:
                free.apply(undo, sign=-1)
            return len(held)
        row = int(rows[int(np.argmin(free.leftover(pod, rows)))]) if best else int(rows[0])
        devices = free.devices(row, pod.gpu, tightest=best)
        share = 0.0 if not devices else (1.0 if pod.gpu >= 1 else pod.gpu)
        placement = Placement(
            pod.role, pod.index, free.names[row], pod.cpu_millis, pod.memory_bytes, devices, share
        )
        held.append(_Held(row, placement))
        free.apply(held[-1], sign=1)
        placed[position] = placement
    return tuple(placed[i] for i in range(len(order)))


def _greedy(
    state: ClusterState, pending: Sequence[JobRequest], *, best: bool, blocking: bool, name: str
) -> Decisions:
    free = _Free(state)
    decisions = Decisions()
    head: str | None = None
    for job in sorted(pending, key=lambda j: (j.sequence, j.key)):
        if job.grow:
            continue
        if head is not None:
            message = f"{name} starts jobs in arrival order; {head} is waiting ahead of it"
            decisions.pending[job.key] = Reason(Code.BLOCKED_BY_QUEUE_HEAD, message)
            continue
        placed = _place(free, job, best)
        if isinstance(placed, tuple):
            decisions.binds.append(Bind(job.key, placed))
            continue
        count = len(job.gang)
        message = f"{placed} of {count} pod(s) fit on free room ({name})"
        decisions.pending[job.key] = Reason(Code.GANG_DOES_NOT_FIT, message)
        if blocking:
            head = job.key
    return decisions


def first_fit(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """Each pod on the first node (in the cluster's order) where it fits; misfits skipped."""
    return _greedy(state, pending, best=False, blocking=False, name="first-fit")


def best_fit(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """Each pod on the node it leaves with the least GPU and cpu share free; misfits skipped."""
    return _greedy(state, pending, best=True, blocking=False, name="best-fit")


def fifo(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """First-fit in strict arrival order: the first job that does not fit holds the rest."""
    return _greedy(state, pending, best=False, blocking=True, name="fifo")
