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

    def sample(self, key: str, processes: Iterable[ProcessSample]) -> ReplicaUsage | None:
        """Usage of ``processes`` (one replica's tree) under ``key``; None if none."""
        processes = list(processes)
        seconds = {(p.pid, p.created): p.cpu_s for p in processes}
        memory = sum(p.rss_bytes for p in processes)
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


@dataclass(frozen=True)
class ProcessSample:
    """One process as the process table shows it at one moment."""

    pid: int
    parent: int
    created: float
    """Unix seconds, as psutil's ``create_time`` gives it: (pid, created) tells a
    process from a later one with its pid."""
    zombie: bool
    cpu_s: float
    """User and system CPU seconds so far."""
    rss_bytes: int


class ProcessTable:
    """Every process on the machine, read once for every replica of a sample.

    Asking psutil replica by replica (is the supervisor alive? its children? their
    times and memory?) cost about half a millisecond per process and read the whole
    process table once per replica: 1.9 s for a 64-replica job on a busy machine. One
    pass over the table costs what the machine runs, not what is asked."""

    def __init__(self) -> None:
        self._by_pid = {p.pid: p for p in _all_processes()}
        self._children: dict[int, list[int]] = {}
        for process in self._by_pid.values():
            self._children.setdefault(process.parent, []).append(process.pid)

    def process(self, pid: int) -> ProcessSample | None:
        return self._by_pid.get(pid)

    def descendants(self, pid: int) -> list[ProcessSample]:
        """``pid``'s children, theirs, and so on (not ``pid`` itself)."""
        found = []
        stack = list(self._children.get(pid, ()))
        while stack:
            child = self._by_pid[stack.pop()]
            found.append(child)
            stack.extend(self._children.get(child.pid, ()))
        return found


def _all_processes() -> list[ProcessSample]:
    """On Linux one read of ``/proc/PID/stat`` per process; elsewhere through psutil."""
    if not psutil.LINUX:
        return list(_through_psutil())
    boot_s = psutil.boot_time()
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # after "pid (name) ": state, ppid, ... utime (11), stime (12),
                # starttime (19), rss in pages (21); see proc(5)
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        found.append(
            ProcessSample(
                pid=int(entry.name),
                parent=int(fields[1]),
                created=boot_s + int(fields[19]) / ticks_per_s,
                zombie=fields[0] == b"Z",
                cpu_s=(int(fields[11]) + int(fields[12])) / ticks_per_s,
                rss_bytes=int(fields[21]) * page_bytes,
            )
        )
    return found


def _through_psutil() -> Iterable[ProcessSample]:
    wanted = ["ppid", "create_time", "status", "cpu_times", "memory_info"]
    for process in psutil.process_iter(wanted):
        info = process.info
        if any(info[name] is None for name in wanted):
            continue  # not ours to read
        yield ProcessSample(
            pid=process.pid,
            parent=info["ppid"],
            created=info["create_time"],
            zombie=info["status"] == psutil.STATUS_ZOMBIE,
            cpu_s=info["cpu_times"].user + info["cpu_times"].system,
            rss_bytes=info["memory_info"].rss,
        )
