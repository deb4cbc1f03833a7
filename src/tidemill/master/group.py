"""What a membership is made of: the bounds and deadlines of its rendezvous (``Rules``),
where the group stands (``Phase``) and each registered worker (``Replica``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    FORMING = "forming"
    """No group trains: waiting for at least ``min_workers`` ready workers."""
    RUNNING = "running"
    CHANGING = "changing"
    """Members are stopping at a step boundary (or after a failure) to re-form."""
    RESUMING = "resuming"
    """A restarted master waits for the last epoch's members to reconnect."""
    FINISHED = "finished"


@dataclass(frozen=True)
class Rules:
    """Bounds and deadlines of the rendezvous."""

    min_workers: int
    max_workers: int
    settle_s: float = 0.3
    """Wait this long after the last registration before forming, to take joiners
    that start together in one change rather than one change each."""
    timeout_s: float = 60.0
    """For members to reach a step boundary, and to form a process group."""
    register_timeout_s: float = 30.0
    """After this long below ``min_workers``, name the replicas that never registered."""
    reconnect_timeout_s: float = 15.0
    """For the members of the last epoch to reconnect to a restarted master."""
    restores_checkpoints: bool = False
    """The job keeps durable checkpoints: a group that forms with no state restores one."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(
                f"elastic bounds must satisfy 1 <= min <= max, got min={self.min_workers} "
                f"max={self.max_workers}"
            )


@dataclass
class Replica:
    """A registered, connected worker."""

    name: str
    pid: int
    status: str
    """``member`` (trains in the current epoch), ``ready`` (waits for the next one) or
    ``stale`` (claims an epoch that is over; told to abort, then it syncs)."""
    step: int | None = None
    """Step of the state it holds while ready; None for a fresh worker."""
    data: Any = None
    formed: bool = False
    done: bool = False
    since: float = 0.0
