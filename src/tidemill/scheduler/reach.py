"""Where a pod would fit once the candidates' room on a node is freed, kept for one plan.

A preemption plan asks this for each pod that fits nowhere as things are, and between
asks changes only the nodes of the victims it picks and of the pods it places. So per
pod shape the answer is worked out over every node once per plan, then redone only on
the nodes the plan touched since: the same arithmetic per node, so the same answer as
working it all out on every ask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tidemill.scheduler.arrays import Bools, Indices
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.placement import fits
from tidemill.scheduler.types import Extended, PodRequest
from tidemill.scheduler.victims import Room

_Key = tuple[int, int, float, str | None, Extended]


class Reach:
    """Per pod shape, the nodes where it fits with ``room`` added to what is free."""

    def __init__(self, capacity: Capacity, room: Room) -> None:
        self._capacity = capacity
        self._room = room
        self._could: dict[_Key, Bools] = {}
        self._stale: dict[_Key, set[int]] = {}

    def touch(self, rows: Iterable[int | None]) -> None:
        """Nodes ``rows`` changed, in the capacity or the room (None: a node gone)."""
        changed = {row for row in rows if row is not None}
        for stale in self._stale.values():
            stale |= changed

    def could(self, pod: PodRequest) -> Bools:
        """Per node, whether ``pod`` fits there once its room is freed (on an eligible
        node offering the extended resources it asks)."""
        key = (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model, pod.extended)
        known = self._could.get(key)
        if known is None:
            known = self._could[key] = self._fits(pod, slice(None))
            self._stale[key] = set()
        elif self._stale[key]:
            rows: Indices = np.array(sorted(self._stale[key]), dtype=np.intp)
            known[rows] = self._fits(pod, rows)
            self._stale[key].clear()
        return known

    def _fits(self, pod: PodRequest, rows: Indices | slice) -> Bools:
        capacity, room = self._capacity, self._room
        ok: Bools = capacity.eligible_mask(pod.gpu_model)[rows] & fits(
            pod,
            capacity.free_cpu[rows] + room.cpu[rows],
            capacity.free_memory[rows] + room.memory[rows],
            capacity.gpu_used[rows] - room.gpu_used[rows],
        )
        if pod.extended:
            ok &= capacity.extended_mask(pod.extended, empty=True)[rows]
        return ok
