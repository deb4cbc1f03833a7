"""Whether a queue may take more: its ``max`` caps what it holds, bound or running."""

from __future__ import annotations

from tidemill.scheduler.capacity import EPS
from tidemill.scheduler.types import QueueInfo, ResourceVector


def over_max(
    queue: QueueInfo, held: ResourceVector, asking: ResourceVector
) -> list[tuple[str, float, float]]:
    """(resource, what the queue would hold, its max) for each max ``asking`` would break."""
    after = held + asking
    over: list[tuple[str, float, float]] = []
    for resource, would, most in (
        ("cpu", after.cpu_millis, queue.max_cpu_millis),
        ("gpu", after.gpu, queue.max_gpu),
        ("memory", after.memory_bytes, queue.max_memory_bytes),
    ):
        if most is not None and would > most + EPS:
            over.append((resource, float(would), float(most)))
    return over
