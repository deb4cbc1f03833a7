"""Which job to try next: DRF across queues, priority then FIFO within a queue.

Dominant Resource Fairness: a queue's share is its largest fraction of any cluster
resource, divided by its weight; the queue with the smallest share goes next, so a team
that holds little gets served before one that holds much. Queues still below their
``guaranteed`` amount go before all others.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping

from tidemill.scheduler.types import JobRequest, QueueInfo, ResourceVector


def dominant_share(held: ResourceVector, capacity: ResourceVector) -> float:
    """The largest fraction of any cluster resource ``held`` takes; absent resources are skipped."""
    fractions = [
        used / total
        for used, total in (
            (held.cpu_millis, capacity.cpu_millis),
            (held.memory_bytes, capacity.memory_bytes),
            (held.gpu, capacity.gpu),
        )
        if total > 0
    ]
    return max(fractions, default=0.0)


def within_queue_order(job: JobRequest) -> tuple[int, int, str]:
    """Highest priority first, then the earliest submitted (lowest ``sequence``)."""
    return (-job.priority, job.sequence, job.key)


class QueueOrder:
    """Hands out jobs one at a time, re-ranking queues as their allocation changes.

    A heap of (below-guarantee rank, weighted share, name, version); entries whose
    version is stale are skipped, so charging any queue is O(log queues).
    """

    def __init__(
        self,
        queues: Mapping[str, QueueInfo],
        jobs: Iterable[JobRequest],
        held: Mapping[str, ResourceVector],
        capacity: ResourceVector,
    ) -> None:
        self._queues = queues
        self._capacity = capacity
        self._held = {name: held.get(name, ResourceVector()) for name in queues}
        grouped: dict[str, list[JobRequest]] = {name: [] for name in queues}
        for job in jobs:
            grouped[job.queue].append(job)
        self._jobs = {
            name: deque(sorted(group, key=within_queue_order)) for name, group in grouped.items()
        }
        self._version = dict.fromkeys(queues, 0)
        self._heap: list[tuple[int, float, str, int]] = []
        for name in sorted(queues):
            self._push(name)

    def next(self) -> JobRequest | None:
        """The next job to try, or None when every queue is empty."""
        while self._heap:
            _, _, name, version = heapq.heappop(self._heap)
            if version != self._version[name] or not self._jobs[name]:
                continue
            job = self._jobs[name].popleft()
            self._push(name)
            return job
        return None

    def held(self, queue: str) -> ResourceVector:
        """What ``queue`` holds now: running jobs plus jobs bound this cycle."""
        return self._held[queue]

    def charge(self, queue: str, amount: ResourceVector) -> None:
        """Count ``amount`` against ``queue`` (negative to give back)."""
        self._held[queue] = self._held[queue] + amount
        self._version[queue] += 1
        self._push(queue)

    def drop(self, queue: str) -> list[JobRequest]:
        """Take every job still waiting in ``queue`` out of the order, in its order."""
        rest = list(self._jobs[queue])
        self._jobs[queue].clear()
        return rest

    def _push(self, name: str) -> None:
        info = self._queues[name]
        held = self._held[name]
        share = dominant_share(held, self._capacity)
        weighted = share / info.weight if info.weight > 0 else float("inf")
        heapq.heappush(self._heap, (self._rank(info, held), weighted, name, self._version[name]))

    @staticmethod
    def _rank(info: QueueInfo, held: ResourceVector) -> int:
        """0 while the queue holds less than a non-zero guarantee of some resource."""
        wanted = info.guaranteed
        below = (
            held.cpu_millis < wanted.cpu_millis
            or held.memory_bytes < wanted.memory_bytes
            or held.gpu < wanted.gpu
        )
        return 0 if below else 1
