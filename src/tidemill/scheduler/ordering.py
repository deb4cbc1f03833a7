"""Which job to try next: DRF across queues, priority then FIFO within a queue.

Dominant Resource Fairness: a queue's share is its largest fraction of any cluster
resource, divided by its weight; the queue with the smallest share goes next, so a team
that holds little gets served before one that holds much. Queues still below their
``guaranteed`` amount go before all others. Between queues whose shares are equal, the
one that used less lately (``recent_use.RecentUse``) goes first, then the name decides.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping

from tidemill.scheduler.recent_use import RecentUse
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


def weighted_share(info: QueueInfo, held: ResourceVector, capacity: ResourceVector) -> float:
    """``held``'s dominant share over the queue's weight; infinite for a weight of 0."""
    share = dominant_share(held, capacity)
    return share / info.weight if info.weight > 0 else float("inf")


QueueKey = tuple[int, float, float, str]
"""(below-guarantee rank, weighted share, recent use, name): the smallest goes first."""


def queue_key(
    info: QueueInfo, held: ResourceVector, capacity: ResourceVector, recent: RecentUse
) -> QueueKey:
    """Where a queue holding ``held`` stands in the order: 0 first while it holds less
    than a non-zero guarantee of some resource, then by weighted share, recent use, name."""
    wanted = info.guaranteed
    below = (
        held.cpu_millis < wanted.cpu_millis
        or held.memory_bytes < wanted.memory_bytes
        or held.gpu < wanted.gpu
    )
    return (
        0 if below else 1,
        weighted_share(info, held, capacity),
        recent.of(info.name),
        info.name,
    )


def queue_turns(
    queues: Mapping[str, QueueInfo],
    held: Mapping[str, ResourceVector],
    capacity: ResourceVector,
    recent: RecentUse,
) -> dict[str, int]:
    """Each queue's place in the order as things stand (0 goes first)."""
    keys = {
        name: queue_key(info, held.get(name, ResourceVector()), capacity, recent)
        for name, info in queues.items()
    }
    return {name: turn for turn, name in enumerate(sorted(keys, key=keys.__getitem__))}


def within_queue_order(job: JobRequest) -> tuple[int, int, str]:
    """Highest priority first, then the earliest submitted (lowest ``sequence``)."""
    return (-job.priority, job.sequence, job.key)


class QueueOrder:
    """Hands out jobs one at a time, re-ranking queues as their allocation changes.

    A heap of (``queue_key`` with the sequence of the queue's next job before the name,
    version); entries whose version is stale are skipped, so charging any queue is
    O(log queues). Between queues equal in share and recent use, the one whose next job
    was submitted first goes first.
    """

    def __init__(
        self,
        queues: Mapping[str, QueueInfo],
        jobs: Iterable[JobRequest],
        held: Mapping[str, ResourceVector],
        capacity: ResourceVector,
        recent: RecentUse | None = None,
    ) -> None:
        self._queues = queues
        self._recent = RecentUse() if recent is None else recent
        self._capacity = capacity
        self._held = {name: held.get(name, ResourceVector()) for name in queues}
        grouped: dict[str, list[JobRequest]] = {name: [] for name in queues}
        for job in jobs:
            grouped[job.queue].append(job)
        self._jobs = {
            name: deque(sorted(group, key=within_queue_order)) for name, group in grouped.items()
        }
        self._version = dict.fromkeys(queues, 0)
        self._heap: list[tuple[tuple[int, float, float, int, str], int]] = []
        for name in sorted(queues):
            self._push(name)

    def next(self) -> JobRequest | None:
        """The next job to try, or None when every queue is empty."""
        while self._heap:
            (*_, name), version = heapq.heappop(self._heap)
            if version != self._version[name] or not self._jobs[name]:
                continue
            job = self._jobs[name].popleft()
            self._push(name)
            return job
        return None

    @property
    def recent(self) -> RecentUse:
        """The recent use that orders queues of equal shares."""
        return self._recent

    def shares(self) -> dict[str, float]:
        """Each queue's weighted share of what it holds now."""
        return {
            name: weighted_share(info, self._held[name], self._capacity)
            for name, info in self._queues.items()
        }

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
        key = queue_key(self._queues[name], self._held[name], self._capacity, self._recent)
        waiting = self._jobs[name]
        head = waiting[0].sequence if waiting else -1
        heapq.heappush(self._heap, ((*key[:3], head, name), self._version[name]))
