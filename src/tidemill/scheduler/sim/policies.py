"""The policies a replay can compare, by the name ``--policy`` takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from tidemill.scheduler import ClusterState, Decisions, JobRequest, SchedulerConfig, schedule
from tidemill.scheduler.sim.baselines import best_fit, fifo, first_fit

Policy = Callable[[ClusterState, Sequence[JobRequest]], Decisions]
"""A scheduling policy: what ``schedule`` is, with its config fixed."""


_BEST_FIT = SchedulerConfig(scoring="best-fit")
_FRAGMENTATION = SchedulerConfig(scoring="fragmentation")


def tidemill(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """tidemill's own ``schedule`` with its default config (DRF, gangs, preemption)."""
    return schedule(state, pending)


def tidemill_best_fit(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """``schedule`` placing each pod by best fit (``scoring="best-fit"``)."""
    return schedule(state, pending, _BEST_FIT)


def tidemill_fragmentation(state: ClusterState, pending: Sequence[JobRequest]) -> Decisions:
    """``schedule`` placing each pod where it fragments the cluster least (FGD)."""
    return schedule(state, pending, _FRAGMENTATION)


POLICIES: dict[str, Policy] = {
    "tidemill": tidemill,
    "first-fit": first_fit,
    "best-fit": best_fit,
    "fifo": fifo,
    "tidemill-best-fit": tidemill_best_fit,
    "tidemill-fragmentation": tidemill_fragmentation,
}
DEFAULT_POLICIES = ("tidemill", "first-fit", "best-fit")
"""What a replay compares unless told otherwise: tidemill against the two textbook fits."""


def with_config(config: SchedulerConfig | None) -> dict[str, Policy]:
    """``POLICIES`` with ``tidemill`` scheduling by ``config`` (a cluster file's
    ``scheduler`` section) instead of the default; None: ``POLICIES`` as they are."""
    if config is None:
        return POLICIES
    return {**POLICIES, "tidemill": partial(schedule, config=config)}
