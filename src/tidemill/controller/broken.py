"""Failing a job whose lifecycle step raised or whose spec cannot be read.

Kept apart from :func:`~tidemill.controller.lifecycle.step` so it cannot fail the same
way: it reads only the replicas' rows and what the engine saw.
"""

from __future__ import annotations

from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.actions import Action, ExpireAt, ForgetJob, Kill, Settle, Transition
from tidemill.controller.lifecycle import LifecycleConfig
from tidemill.controller.model import LIVE, Adoption, JobSnapshot, Observations

R = ReplicaPhase


def fail_broken(
    job: JobSnapshot, seen: Observations, message: str, now: float, config: LifecycleConfig
) -> list[Action]:
    """The job's step raised (or its spec cannot be read): kill its processes and fail
    it with ``message``."""
    actions: list[Action] = []
    for replica in job.replicas:
        handle = replica.handle
        adopted = seen.get(replica.name)
        if replica.phase is R.LAUNCHING and isinstance(adopted, Adoption):
            handle = adopted.handle
        if handle is not None and replica.phase in LIVE:
            actions.append(Kill(replica.name, handle, now + config.stop_grace_s))
        if not replica.phase.is_terminal:
            actions.append(Settle(replica.name))
    if job.deleted:
        actions.append(ForgetJob("its processes were killed"))
    elif not job.phase.is_terminal:
        actions.append(Transition(JobPhase.FAILED, "ControllerError", message, warning=True))
        actions.append(ExpireAt(None))
    return actions
