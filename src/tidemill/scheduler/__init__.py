"""Pure scheduling policy: a snapshot in, decisions out.

``schedule(state, pending, config)`` is the whole interface; the modules behind it each
answer one question: ``ordering`` (who goes next), ``quota`` (may the queue take more),
``placement`` (where does a gang fit), ``preemption`` (whom to shrink or stop),
``victims`` (who may give room back), ``reasons`` (why a job waits), ``capacity`` (what
is free, with undo), ``memo`` (what one cycle hands the next, so it pays for what
changed). ``schedule_incremental(state, pending, config, memo)`` decides the same and
returns the memo for the next call.
"""

from tidemill.scheduler.core import schedule, schedule_incremental
from tidemill.scheduler.memo import Memo
from tidemill.scheduler.reasons import Code
from tidemill.scheduler.types import (
    Bind,
    ClusterState,
    Decisions,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
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
    "Memo",
    "NodeInfo",
    "Placement",
    "PodRequest",
    "Preemption",
    "QueueInfo",
    "Reason",
    "ResourceVector",
    "RunningJob",
    "SchedulerConfig",
    "Shrink",
    "schedule",
    "schedule_incremental",
]
