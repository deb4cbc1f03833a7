"""A quick "cannot fit" for what-if trials, read from the nodes a change touched.

Preemption planning places the gang again after each small change (a victim spared, a
shrunk pod given back), and nearly every such trial fails. Placing a gang scores nodes
cluster-wide, pod by pod; this bound is kept current by reading only the nodes the
change touched. Per pod shape in the gang, each node counts at most how many pods of
that shape it could hold on its own (by free cpu, memory, whole devices or room on its
devices, on an eligible node offering the extended resources); placing other pods only
lowers those counts. So when the counts summed over nodes fall short of the gang's
pods of some shape, no placement exists and the trial would fail. Otherwise the trial
runs as before: the bound only skips trials that cannot succeed, and plans stay exactly
what trying every time finds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from tidemill.scheduler.arrays import Indices, Ints
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.types import PodRequest

SLACK = 1e-6
"""Added before rounding pods per device down, so float error in summed shares can only
raise a count (an upper bound may be loose, never short)."""


class FitBound:
    """Per pod shape of a gang, how many such pods the nodes could hold, kept current by
    ``refresh`` as the capacity it reads changes."""

    def __init__(self, capacity: Capacity, pods: Sequence[PodRequest]) -> None:
        wanted: dict[tuple[object, ...], tuple[PodRequest, int]] = {}
        for pod in pods:
            key = (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model, pod.extended)
            first, count = wanted.get(key, (pod, 0))
            wanted[key] = (first, count + 1)
        self._capacity = capacity
        self._wanted = list(wanted.values())
        everyone = np.arange(capacity.free_cpu.size)
        self._most: list[Ints] = [_most(capacity, pod, everyone, n) for pod, n in self._wanted]
        self._total = [int(most.sum()) for most in self._most]

    def possible(self) -> bool:
        """False when some pod shape of the gang has fewer places than pods: it cannot fit."""
        return all(total >= n for total, (_, n) in zip(self._total, self._wanted, strict=True))

    def refresh(self, rows: Iterable[int]) -> None:
        """Read nodes ``rows`` (distinct) again after the capacity changed there."""
        for row in rows:
            for i, (pod, n) in enumerate(self._wanted):
                most = _most_on(self._capacity, pod, row, n)
                self._total[i] += most - int(self._most[i][row])
                self._most[i][row] = most


def _most(capacity: Capacity, pod: PodRequest, rows: Indices, cap: int) -> Ints:
    """Per node of ``rows``, an upper bound on the pods like ``pod`` it holds, at most ``cap``."""
    most: Ints = np.full(rows.size, cap, dtype=np.int64)
    if pod.cpu_millis > 0:
        np.minimum(most, np.maximum(capacity.free_cpu[rows], 0) // pod.cpu_millis, out=most)
    if pod.memory_bytes > 0:
        np.minimum(most, np.maximum(capacity.free_memory[rows], 0) // pod.memory_bytes, out=most)
    if pod.gpu >= 1:
        np.minimum(most, capacity.whole_free[rows] // int(pod.gpu), out=most)
    elif pod.gpu > 0:
        per_device = np.floor((1.0 + EPS - capacity.gpu_used[rows]) / pod.gpu + SLACK)
        on_devices = np.clip(per_device, 0, cap).sum(axis=1).astype(np.int64)
        np.minimum(most, on_devices, out=most)
    ok = capacity.eligible_mask(pod.gpu_model)[rows]
    for name, asked in pod.extended:
        if asked > 0:
            ok &= capacity.extended_free(name, rows) >= asked
    most[~ok] = 0
    return most


def _most_on(capacity: Capacity, pod: PodRequest, row: int, cap: int) -> int:
    """``_most`` for one node, in plain numbers: the same operations, cheaper for a few."""
    if not capacity.eligible_mask(pod.gpu_model)[row]:
        return 0
    for name, asked in pod.extended:
        if asked > 0 and capacity.extended_free(name, np.array([row]))[0] < asked:
            return 0
    most = cap
    if pod.cpu_millis > 0:
        most = min(most, max(int(capacity.free_cpu[row]), 0) // pod.cpu_millis)
    if pod.memory_bytes > 0:
        most = min(most, max(int(capacity.free_memory[row]), 0) // pod.memory_bytes)
    if pod.gpu >= 1:
        most = min(most, int(capacity.whole_free[row]) // int(pod.gpu))
    elif pod.gpu > 0:
        on_devices = 0
        for used in capacity.gpu_used[row].tolist():
            fitting = (1.0 + EPS - used) / pod.gpu + SLACK
            if fitting >= 1:
                on_devices += min(math.floor(fitting), cap)
        most = min(most, on_devices)
    return most
