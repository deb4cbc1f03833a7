"""Pure scheduling policy: a snapshot in, decisions out.

``schedule(state, pending, config)`` is the whole interface; the modules behind it each
answer one question: ``ordering`` (who goes next), ``quota`` (may the queue take more),
``placement`` (where does a gang fit), ``fragmentation`` (which node a pod
fragments least), ``preemption`` (whom to shrink or stop),
``victims`` (who may give room back), ``reasons`` (why a job waits), ``capacity`` (what
is free, with undo).
"""

from tidemill.scheduler.core import schedule
from tidemill.scheduler.reasons import Code
from tidemill.scheduler.types import (
    Bind,
    ClusterState,
    Decisions,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    PodType,
    Preemption,
    QueueInfo,
    Reason,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Shrink,
)

__all__ = [
    "Bind",
    "ClusterState",
    "Code",
    "Decisions",
    "JobRequest",
    "NodeInfo",
    "Placement",
    "PodRequest",
    "PodType",
    "Preemption",
    "QueueInfo",
    "Reason",
    "ResourceVector",
    "RunningJob",
    "SchedulerConfig",
    "Shrink",
    "schedule",
]
