"""The policies a replay can compare, by the name ``--policy`` takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tidemill.scheduler import ClusterState, Decisions, JobRequest, schedule
from tidemill.scheduler.sim.baselines import best_fit, fifo, first_fit

Policy = Callable[[ClusterState, Sequence[JobRequest]], Decisions]
"""A scheduling policy: what ``schedule`` is, with its config fixed."""


def tidemill(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """tidemill's own ``schedule`` with its default config (DRF, gangs, preemption)."""
    return schedule(state, pending)


POLICIES: dict[str, Policy] = {
    "tidemill": tidemill,
    "first-fit": first_fit,
    "best-fit": best_fit,
    "fifo": fifo,
}
DEFAULT_POLICIES = ("tidemill", "first-fit", "best-fit")
"""What a replay compares unless told otherwise: tidemill against the two textbook fits."""
