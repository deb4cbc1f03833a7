"""Sizes of elastic roles: what to ask the scheduler for, and whom to remove first.

An elastic role (minReplicas < maxReplicas) starts with its minimum as a gang, takes
optional replicas up to its desired size when they fit, and gives back its highest
indexes first. Desired starts at maxReplicas (grow into idle capacity) and is pinned
by ``tidemill scale``. Pure functions over specs and replica rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from tidemill.api.job import Mode, TrainingJob

MASTER_ROLE = "master"
"""tidemill's per-job master: launched by :func:`needs_master`, never declared by users."""

UNPLACED = ""
"""The node of a replica lost with its node and waiting to be placed again
(:class:`~tidemill.controller.actions.Unplace`)."""


class Member(Protocol):
    """A replica as sizes see it: a store row or a lifecycle snapshot."""

    @property
    def role(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def drain_deadline(self) -> float | None: ...

    @property
    def node(self) -> str: ...


M = TypeVar("M", bound=Member)


def is_elastic(job: TrainingJob) -> bool:
    return any(role.is_elastic for role in job.spec.roles.values())


def is_static_gang(job: TrainingJob) -> bool:
    """A static AllReduce group: a member that fails restarts the whole group."""
    return job.spec.mode is Mode.ALLREDUCE and not is_elastic(job)


def needs_master(job: TrainingJob) -> bool:
    """Elastic jobs need the master for membership; jobs with ``spec.data`` for its shard
    leases and committed data progress, jobs with ``spec.checkpoint`` to restore their
    newest checkpoint, jobs with tidemill's PS to cut the tables with the dense model,
    also when their sizes are fixed, and jobs with ``spec.tensorboard`` to write their
    metrics."""
    return (
        is_elastic(job)
        or job.spec.data is not None
        or job.spec.checkpoint is not None
        or job.ps_server is not None
        or job.spec.tensorboard is not None
    )


def initial_desired(job: TrainingJob) -> dict[str, int]:
    """Elastic roles aim for their maximum; fixed roles for their replica count."""
    return {
        name: role.max_bound if role.is_elastic else role.replicas
        for name, role in job.spec.roles.items()
    }


def members(replicas: Sequence[M], role: str) -> list[M]:
    """Replicas of ``role`` that count towards its size (not leaving, not the master)."""
    return [r for r in replicas if r.role == role and r.drain_deadline is None]


def missing_indexes(replicas: Sequence[Member], role: str, desired: int) -> list[int]:
    """The lowest free indexes that would bring ``role`` up to ``desired``."""
    taken = {r.index for r in replicas if r.role == role}
    have = len(members(replicas, role))
    free = (i for i in range(desired + len(taken)) if i not in taken)
    return [next(free) for _ in range(max(0, desired - have))]


def unplaced(replicas: Sequence[M]) -> list[M]:
    """Replicas lost with their node and waiting for the scheduler to place them again."""
    return [r for r in replicas if r.node == UNPLACED]


def surplus(replicas: Sequence[M], role: str, keep: int) -> list[M]:
    """Replicas beyond the first ``keep``, highest index first: the ones to remove."""
    ordered = sorted(members(replicas, role), key=lambda r: r.index, reverse=True)
    return ordered[: max(0, len(ordered) - keep)]
