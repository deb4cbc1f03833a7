"""Pure scheduling policy: a snapshot in, decisions out.

``schedule(state, pending, config)`` is the whole interface; the modules behind it each
answer one question: ``ordering`` (who goes next), ``quota`` (may the queue take more),
``placement`` (where does a gang fit), ``fragmentation`` (which node a pod fragments
least), ``preemption`` (whom to shrink or stop),
``victims`` (who may give room back), ``reclaim`` (what a queue below its guarantee
takes back), ``reservation`` (room held for a job that waited too long), ``reasons``
(why a job waits), ``capacity`` (what is free, with undo), ``topology`` (which domain a
gang packs into), ``numa`` (which GPUs and CPUs inside a node), ``memo`` (what one cycle
hands the next, so it pays for what changed). ``schedule_incremental(state, pending,
config, memo)`` decides the same and returns the memo for the next call.
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
    NumaNode,
    Placement,
    PodRequest,
    PodType,
    Preemption,
    QueueInfo,
    Reason,
    Reclaim,
    Reservation,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    Shrink,
    TopologyRequest,
)

__all__ = [
    "Bind",
    "ClusterState",
    "Code",
    "Decisions",
    "JobRequest",
    "Memo",
    "NodeInfo",
    "NumaNode",
    "Placement",
    "PodRequest",
    "PodType",
    "Preemption",
    "QueueInfo",
    "Reason",
    "Reclaim",
    "Reservation",
    "ResourceVector",
    "RunningJob",
    "SchedulerConfig",
    "Shrink",
    "TopologyRequest",
    "schedule",
    "schedule_incremental",
]
