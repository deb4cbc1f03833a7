"""What a replica uses now: cpu, memory and its GPUs, for ``/metrics`` and the job view.

An engine that can tell implements :class:`MeasuresUsage`; one that cannot (or a
replica it cannot see) gives no figures rather than zeros, so a dashboard never shows
an idle replica that is in fact unknown.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import psutil

from tidemill.engines.base import ReplicaHandle

STALE_S = 600.0
"""A replica's last sample is kept this long; a later one measures over the gap."""


@dataclass(frozen=True)
class GpuUsage:
    """One device a replica holds: how busy it is, and the memory the replica's
    processes hold on it (None where the driver does not say)."""

    index: int
    utilization_percent: float | None
    memory_bytes: int | None


@dataclass(frozen=True)
class ReplicaUsage:
    cpu_cores: float | None
    """Cores busy on average since the last sample (None at the first sample)."""
    memory_bytes: int
    """Resident memory of all the replica's processes."""
    gpus: tuple[GpuUsage, ...] = ()


@dataclass(frozen=True)
class Watched:
    """A replica to measure: how to find it, and the GPUs it was given."""

    handle: ReplicaHandle
    gpu_ids: tuple[int, ...] = ()


@runtime_checkable
class MeasuresUsage(Protocol):
    """An engine that can read what its replicas use."""

    def usage(self, replicas: Mapping[str, Watched]) -> dict[str, ReplicaUsage]:
        """Key -> usage, for those of ``replicas`` it can see running now."""
        ...


class CpuMeter:
    """CPU use as the change of CPU seconds between two samples of the same processes.

    A process is known by (pid, start time), so a reused pid starts afresh; one that
    ended between samples takes its CPU seconds with it, which under-counts that one
    interval only."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, dict[tuple[int, float], float]]] = {}

    def sample(self, key: str, processes: Iterable[psutil.Process]) -> ReplicaUsage | None:
        """Usage of ``processes`` (one replica's tree) under ``key``; None if all ended."""
        seconds: dict[tuple[int, float], float] = {}
        memory = 0
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    seconds[(process.pid, process.create_time())] = times.user + times.system
                    memory += process.memory_info().rss
            except psutil.Error:
                continue
        if not seconds:
            self._last.pop(key, None)
            return None
        now = time.monotonic()
        cores = None
        before = self._last.get(key)
        if before is not None and now > before[0]:
            used = sum(s - before[1].get(ident, 0.0) for ident, s in seconds.items())
            cores = max(used, 0.0) / (now - before[0])
        self._last[key] = (now, seconds)
        return ReplicaUsage(cpu_cores=cores, memory_bytes=memory)

    def prune(self) -> None:
        """Drop what is kept for replicas not sampled for :data:`STALE_S` (ended, or
        no longer asked about)."""
        oldest = time.monotonic() - STALE_S
        for key in [k for k, (at, _) in self._last.items() if at < oldest]:
            del self._last[key]


class ProcessTree:
    """Who is whose child, read once for many replicas.

    psutil's ``children`` reads the whole process table on every call, so measuring a
    64-replica job that way read it 64 times (about a second on a busy machine); one
    reading serves every replica of a sample."""

    def __init__(self) -> None:
        self._children: dict[int, list[int]] = {}
        for pid, parent in _parent_pids().items():
            self._children.setdefault(parent, []).append(pid)

    def descendants(self, root: psutil.Process) -> list[psutil.Process]:
        """``root``'s children, theirs, and so on (not ``root``); those that ended since
        the table was read are left out."""
        found = []
        stack = list(self._children.get(root.pid, ()))
        while stack:
            pid = stack.pop()
            try:
                found.append(psutil.Process(pid))
            except psutil.Error:
                continue
            stack.extend(self._children.get(pid, ()))
        return found


def _parent_pids() -> dict[int, int]:
    """pid -> parent pid of every process: on Linux one small read of ``/proc`` per
    process, without the bookkeeping psutil does for each; elsewhere through psutil."""
    if not psutil.LINUX:
        return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])}
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                after_name = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(after_name[1])
    return parents
