"""Free resources per node as numpy arrays, with undo for what-if trials.

The cycle tries placements and preemptions on this snapshot and rolls them back
(Kueue's snapshot-with-undo), so the ``ClusterState`` it was built from is never
touched and scoring 10,000 nodes is a handful of vector operations.

GPU devices are a ``(nodes, widest node)`` matrix of used shares; slots past a node's
last device hold ``inf`` so they are never free and never fit a share.

Extended resources are a ``(nodes, names)`` matrix of free whole amounts, one column
per name any node offers; with none offered it has no columns and costs nothing.

Between cycles a snapshot is carried forward rather than rebuilt (``changed``,
``with_nodes``): only the nodes that binds, exits, preemptions or node changes touch are
rewritten. Device shares held by running jobs are rounded to ``SHARE_DIGITS`` decimals,
so a share added then taken away leaves exactly what a fresh sum gives
(0.1 + 0.2 - 0.1 is not 0.2 in floating point).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tidemill.scheduler.arrays import Bools, Floats, Indices, Ints
from tidemill.scheduler.flat import Flat
from tidemill.scheduler.types import (
    ClusterState,
    Extended,
    NodeInfo,
    NumaNode,
    Placement,
    ResourceVector,
    RunningJob,
)

if TYPE_CHECKING:
    from tidemill.scheduler.fragmentation import Fragmentation

EPS = 1e-9
"""Tolerance for summed GPU shares (0.1 + 0.2 is not 0.3 in floating point)."""

SHARE_DIGITS = 12
"""Decimals device shares held by running jobs are rounded to (see the module docstring)."""

GROUPED_FROM_NODES = 2_000
"""Clusters this large keep nodes grouped by free GPUs for best fit; on smaller ones
masking every node costs less than keeping the groups."""


@dataclass(frozen=True)
class _Saved:
    """One node's free resources before a change, to put back on undo."""

    node: int
    cpu_millis: int
    memory_bytes: int
    gpu_used: Floats
    extended: Ints | None


@dataclass(frozen=True)
class _SavedAll:
    """Every node's free resources before a bulk change, to put back on undo."""

    cpu_millis: Ints
    memory_bytes: Ints
    gpu_used: Floats
    whole_free: Ints
    least_used: Floats
    partial: Bools


class Capacity:
    """What is free on every node right now, in this cycle's view."""

    def __init__(self, nodes: Sequence[NodeInfo]) -> None:
        self.names: tuple[str, ...] = tuple(node.name for node in nodes)
        self.index: dict[str, int] = {name: i for i, name in enumerate(self.names)}
        self.models: tuple[str | None, ...] = tuple(node.gpu_model for node in nodes)
        self.numa: tuple[tuple[NumaNode, ...], ...] = tuple(node.numa for node in nodes)
        self.schedulable: Bools = np.array([n.schedulable for n in nodes], dtype=np.bool_)
        self.total_cpu: Ints = np.array([n.cpu_millis for n in nodes], dtype=np.int64)
        self.total_memory: Ints = np.array([n.memory_bytes for n in nodes], dtype=np.int64)
        self.total_gpus: Ints = np.array([n.gpus for n in nodes], dtype=np.int64)
        self.free_cpu: Ints = self.total_cpu.copy()
        self.free_memory: Ints = self.total_memory.copy()
        width = int(self.total_gpus.max()) if len(nodes) else 0
        slots = np.arange(width)[np.newaxis, :] < self.total_gpus[:, np.newaxis]
        self.gpu_used: Floats = np.where(slots, 0.0, np.inf)
        self.whole_free: Ints = self.total_gpus.copy()
        self.least_used: Floats = np.where(self.total_gpus > 0, 0.0, np.inf)
        self.grouped = len(nodes) >= GROUPED_FROM_NODES
        """Whether ``by_free_gpus`` is worth reading (see ``GROUPED_FROM_NODES``)."""
        self._by_free: Ints | None = None
        """Node rows as ``whole_free * nodes + row``, sorted: nodes grouped by whole free
        GPUs, in node order within a group. Built on first use, kept current per node."""
        self.partial: Bools = np.zeros(len(nodes), dtype=np.bool_)
        """Per node, whether a device is partly used (a share below 1 held): only these
        can offer a shared pod anything fuller than an idle device."""
        self.extended_names: tuple[str, ...] = tuple(
            sorted({name for node in nodes for name in node.extended})
        )
        self.extended_column: dict[str, int] = {
            name: i for i, name in enumerate(self.extended_names)
        }
        self.total_extended: Ints = np.array(
            [[node.extended.get(name, 0) for name in self.extended_names] for node in nodes],
            dtype=np.int64,
        ).reshape(len(nodes), len(self.extended_names))
        self.free_extended: Ints = self.total_extended.copy()
        self.cpu_scale: Floats = 1.0 / np.maximum(self.total_cpu, 1)
        self.memory_scale: Floats = 1.0 / np.maximum(self.total_memory, 1)
        on = self.schedulable
        self._total = ResourceVector(
            int(self.total_cpu[on].sum()),
            int(self.total_memory[on].sum()),
            float(self.total_gpus[on].sum()),
        )
        self._journal: list[_Saved | _SavedAll] = []
        self._eligible: dict[str | None, tuple[Bools, Indices]] = {}
        self.fragmentation: Fragmentation | None = None
        """Scores where a pod goes when set (the cycle's pod mix); else placement is best fit."""

    @classmethod
    def of(cls, state: ClusterState) -> Capacity:
        """The snapshot of ``state``: node capacity minus what running jobs hold."""
        capacity = cls(state.nodes)
        capacity._hold_running(state.running)
        return capacity

    def clone(self) -> Capacity:
        """A copy to try things on: free amounts copied, node totals shared (never written)."""
        twin = Capacity.__new__(Capacity)
        twin.__dict__.update(self.__dict__)
        twin.free_cpu = self.free_cpu.copy()
        twin.free_memory = self.free_memory.copy()
        twin.gpu_used = self.gpu_used.copy()
        twin.whole_free = self.whole_free.copy()
        twin.least_used = self.least_used.copy()
        twin.partial = self.partial.copy()
        twin._by_free = None if self._by_free is None else self._by_free.copy()
        twin.free_extended = self.free_extended.copy()
        twin._journal = []
        return twin

    def changed(self, released: Sequence[Placement], held: Sequence[Placement]) -> Capacity:
        """A copy with ``released`` given back and ``held`` taken (jobs that ended, jobs
        that started): the next cycle's snapshot, paying only for the nodes they use."""
        twin = self.clone()
        twin.release(released)
        twin.hold(held)
        twin._journal.clear()
        rows = twin.node_indices([*released, *held])
        twin.gpu_used[rows] = np.round(twin.gpu_used[rows], SHARE_DIGITS)
        twin._summarise(rows)
        return twin

    def with_nodes(self, nodes: Sequence[NodeInfo]) -> Capacity | None:
        """A copy for ``nodes`` holding what this one holds, or None when that takes a
        rebuild: nodes came or went, or a node's GPU count or extended names changed."""
        fresh = Capacity(nodes)
        if (
            fresh.names != self.names
            or fresh.extended_names != self.extended_names
            or not np.array_equal(fresh.total_gpus, self.total_gpus)
        ):
            return None
        fresh.free_cpu = fresh.total_cpu - (self.total_cpu - self.free_cpu)
        fresh.free_memory = fresh.total_memory - (self.total_memory - self.free_memory)
        fresh.free_extended = fresh.total_extended - (self.total_extended - self.free_extended)
        fresh.gpu_used = self.gpu_used.copy()
        fresh.whole_free = self.whole_free.copy()
        fresh.least_used = self.least_used.copy()
        fresh.partial = self.partial.copy()
        return fresh

    def eligible(self, gpu_model: str | None) -> Indices:
        """Schedulable nodes a pod asking ``gpu_model`` may use, in node order."""
        return self._eligible_for(gpu_model)[1]

    def eligible_mask(self, gpu_model: str | None) -> Bools:
        """``eligible`` as a mask over all nodes: cheaper to combine than indices."""
        return self._eligible_for(gpu_model)[0]

    def total(self) -> ResourceVector:
        """What all schedulable nodes have, free or not: the DRF denominator."""
        return self._total

    def extended_mask(self, extended: Extended, *, empty: bool = False) -> Bools:
        """Per node, whether it has each of ``extended`` free (``empty``: on offer at all)."""
        amounts = self.total_extended if empty else self.free_extended
        ok: Bools = np.ones(len(self.names), dtype=np.bool_)
        for name, asked in extended:
            if asked <= 0:
                continue
            column = self.extended_column.get(name)
            if column is None:
                return np.zeros(len(self.names), dtype=np.bool_)
            ok &= amounts[:, column] >= asked
        return ok

    def extended_free(self, name: str, rows: Indices, *, empty: bool = False) -> Ints:
        """Free amount of ``name`` on ``rows`` (``empty``: what the nodes offer at all)."""
        column = self.extended_column.get(name)
        if column is None:
            return np.zeros(rows.size, dtype=np.int64)
        amounts = self.total_extended if empty else self.free_extended
        free: Ints = amounts[rows, column]
        return free

    def free_total(self) -> ResourceVector:
        """What is free across schedulable nodes, ignoring fragmentation."""
        on = self.schedulable
        shares = np.clip(1.0 - self.gpu_used[on], 0.0, 1.0)
        return ResourceVector(
            int(np.clip(self.free_cpu[on], 0, None).sum()),
            int(np.clip(self.free_memory[on], 0, None).sum()),
            float(shares.sum()),
        )

    def node_indices(self, placements: Iterable[Placement]) -> list[int]:
        """Rows of the nodes ``placements`` use; nodes gone from the cluster are skipped."""
        return sorted({self.index[p.node] for p in placements if p.node in self.index})

    def mark(self) -> int:
        """A point to ``undo`` back to."""
        return len(self._journal)

    def undo(self, mark: int) -> None:
        """Put every node changed since ``mark`` back as it was."""
        while len(self._journal) > mark:
            saved = self._journal.pop()
            if isinstance(saved, _SavedAll):
                self.free_cpu, self.free_memory = saved.cpu_millis, saved.memory_bytes
                self.gpu_used, self.whole_free = saved.gpu_used, saved.whole_free
                self.least_used, self.partial = saved.least_used, saved.partial
                self._by_free = None
            else:
                self._write(
                    saved.node, saved.cpu_millis, saved.memory_bytes, saved.gpu_used, saved.extended
                )

    def hold(self, placements: Iterable[Placement]) -> None:
        """Take what ``placements`` use (binding a pod, or a victim that stays)."""
        self._apply(placements, sign=1)

    def release(self, placements: Iterable[Placement]) -> None:
        """Give back what ``placements`` use (a victim being stopped)."""
        self._apply(placements, sign=-1)

    def release_all(self, cpu_millis: Ints, memory_bytes: Ints, gpu_used: Floats) -> None:
        """Give back per-node amounts on every node at once (one undo entry, no loop)."""
        self._journal.append(
            _SavedAll(
                self.free_cpu,
                self.free_memory,
                self.gpu_used,
                self.whole_free,
                self.least_used,
                self.partial,
            )
        )
        self.free_cpu = self.free_cpu + cpu_millis
        self.free_memory = self.free_memory + memory_bytes
        self.gpu_used = self.gpu_used - gpu_used
        rows = np.flatnonzero((gpu_used != 0).any(axis=1))
        self.whole_free = self.whole_free.copy()
        self.least_used = self.least_used.copy()
        self.partial = self.partial.copy()
        self._by_free = None
        self._summarise(rows)

    def preempt(self, freed: Sequence[Placement], placements: Sequence[Placement]) -> None:
        """Commit a preemption so what its victims free serves only their preemptor.

        ``freed`` is every placement stopped (whole victims and shrunk pods). Each
        touched node keeps the lesser free amount (and the larger used share per
        device) of "victims still running" and "victims gone, preemptor placed": later
        jobs in the cycle see neither the victims' leftovers nor the preemptor's room.
        """
        start = self.mark()
        self.release(freed)
        self.hold(placements)
        rows = self.node_indices([*freed, *placements])
        cpu_after = self.free_cpu[rows].copy()
        memory_after = self.free_memory[rows].copy()
        used_after = self.gpu_used[rows].copy()
        extended_after = self.free_extended[rows].copy()
        self.undo(start)
        for i, row in enumerate(rows):
            self._save(row)
            self._write(
                row,
                min(int(self.free_cpu[row]), int(cpu_after[i])),
                min(int(self.free_memory[row]), int(memory_after[i])),
                np.maximum(self.gpu_used[row], used_after[i]),
                np.minimum(self.free_extended[row], extended_after[i]),
            )

    def by_free_gpus(self, fewest: int) -> Iterator[Indices]:
        """Nodes with ``fewest`` whole free GPUs, then with one more, and so on: each group
        (never empty) in node order. Best fit reads the first groups only."""
        keys = self._grouped()
        count = len(self.names)
        width = self.gpu_used.shape[1]
        edges = np.searchsorted(keys, np.arange(fewest, width + 2) * count)
        for free, (start, end) in enumerate(itertools.pairwise(edges.tolist()), fewest):
            if end > start:
                rows: Indices = keys[start:end] - free * count
                yield rows

    def free_gpu_order(self) -> Ints:
        """Node rows as ``whole free GPUs * nodes + row``, sorted: ``by_free_gpus``'s
        groups in one array, for compiled code to walk. Not to be written."""
        return self._grouped()

    def group_by_free_gpus(self) -> None:
        """Build the grouping ``by_free_gpus`` reads now, so clones start with it."""
        if self.grouped:
            self._grouped()

    def _grouped(self) -> Ints:
        if self._by_free is None:
            count = len(self.names)
            self._by_free = np.sort(self.whole_free * count + np.arange(count, dtype=np.int64))
        return self._by_free

    def _regroup(self, keys: Ints, row: int, old: int, new: int) -> None:
        """Move ``row`` in ``keys`` from the group of ``old`` whole free GPUs to ``new``'s."""
        count = len(self.names)
        key = new * count + row
        at = int(np.searchsorted(keys, old * count + row))
        to = int(np.searchsorted(keys, key))
        if to > at:
            keys[at : to - 1] = keys[at + 1 : to]
            keys[to - 1] = key
        else:
            keys[to + 1 : at + 1] = keys[to:at]
            keys[to] = key

    def _eligible_for(self, gpu_model: str | None) -> tuple[Bools, Indices]:
        cached = self._eligible.get(gpu_model)
        if cached is None:
            mask = self.schedulable.copy()
            if gpu_model is not None:
                mask &= np.array([m == gpu_model for m in self.models], dtype=np.bool_)
            cached = (mask, np.flatnonzero(mask))
            self._eligible[gpu_model] = cached
        return cached

    def _hold_running(self, running: Sequence[RunningJob]) -> None:
        located = [(self.index.get(p.node), p) for job in running for p in job.placements]
        for row, p in located:
            if row is not None and p.extended:
                self._take_extended(row, p.extended, sign=1)
        flat = Flat.of(self.total_gpus, [located])
        np.subtract.at(self.free_cpu, flat.rows, flat.cpu)
        np.subtract.at(self.free_memory, flat.rows, flat.memory)
        np.add.at(self.gpu_used, (flat.device_rows, flat.devices), flat.shares)
        self.gpu_used = np.round(self.gpu_used, SHARE_DIGITS)
        self._refresh_devices()

    def _refresh_devices(self) -> None:
        self.whole_free = (self.gpu_used <= EPS).sum(axis=1).astype(np.int64)
        self.least_used = self.gpu_used.min(axis=1, initial=np.inf)
        self.partial = _partly_used(self.gpu_used)
        self._by_free = None

    def _summarise(self, rows: Sequence[int] | Indices) -> None:
        """Recompute the per-node device summaries of ``rows`` from ``gpu_used``."""
        used = self.gpu_used[rows]
        before = self.whole_free[rows]
        self.whole_free[rows] = (used <= EPS).sum(axis=1)
        if self._by_free is not None:
            for row, old, new in zip(rows, before, self.whole_free[rows], strict=True):
                if old != new:
                    self._regroup(self._by_free, int(row), int(old), int(new))
        self.least_used[rows] = used.min(axis=1, initial=np.inf)
        self.partial[rows] = _partly_used(used)

    def _apply(self, placements: Iterable[Placement], sign: int) -> None:
        for p in placements:
            row = self.index.get(p.node)
            if row is None:
                continue
            self._save(row)
            used = self.gpu_used[row].copy()
            for device in p.gpu_ids:
                if 0 <= device < self.total_gpus[row]:
                    used[device] += sign * p.gpu_share
            if p.extended:
                self._take_extended(row, p.extended, sign)
            self._write(
                row,
                int(self.free_cpu[row]) - sign * p.cpu_millis,
                int(self.free_memory[row]) - sign * p.memory_bytes,
                used,
            )

    def _take_extended(self, row: int, extended: Extended, sign: int) -> None:
        """Hold (sign 1) or give back (-1) extended amounts on ``row``; the caller saved it.

        Names the cluster does not offer are skipped, like devices past a node's last."""
        for name, held in extended:
            column = self.extended_column.get(name)
            if column is not None:
                self.free_extended[row, column] -= sign * held

    def _save(self, row: int) -> None:
        extended = self.free_extended[row].copy() if self.extended_names else None
        self._journal.append(
            _Saved(
                row,
                int(self.free_cpu[row]),
                int(self.free_memory[row]),
                self.gpu_used[row].copy(),
                extended,
            )
        )

    def _write(
        self,
        row: int,
        cpu_millis: int,
        memory_bytes: int,
        gpu_used: Floats,
        extended: Ints | None = None,
    ) -> None:
        self.free_cpu[row] = cpu_millis
        self.free_memory[row] = memory_bytes
        self.gpu_used[row] = gpu_used
        if extended is not None:
            self.free_extended[row] = extended
        shares = gpu_used.tolist()  # a node's few devices: plain floats beat numpy calls
        old, new = int(self.whole_free[row]), sum(share <= EPS for share in shares)
        self.whole_free[row] = new
        if old != new and self._by_free is not None:
            self._regroup(self._by_free, row, old, new)
        self.least_used[row] = min(shares, default=np.inf)
        self.partial[row] = any(share != 0.0 and share < 1.0 for share in shares)


def _partly_used(used: Floats) -> Bools:
    """Per row of ``used`` (device shares), whether a device holds a share other than
    0 below 1 (inf marks slots past a node's last device)."""
    partly: Bools = ((used != 0.0) & (used < 1.0)).any(axis=-1)
    return partly
