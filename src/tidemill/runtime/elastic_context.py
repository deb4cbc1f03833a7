"""What the training function sees in one epoch, and the two signals that end an epoch.

Tree::

    BaseException
    ├── SystemExit
    │   └── Left              this worker left the job; uncaught, the process exits 0
    └── StepBoundary          internal: the group agreed to change at this boundary
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tidemill.runtime._metrics import reporter
from tidemill.runtime.elastic_state import ElasticState


class Left(SystemExit):
    """This worker left the job: the controller scaled it in (SIGTERM), or training had
    already finished when it joined. It carries exit code 0, so a script that does not
    catch it ends cleanly; catch it to do something first.

    Example::

        >>> from tidemill.runtime import Left
        >>> try:
        ...     raise Left("worker-3 left the job at step 40 (SIGTERM)", step=40)
        ... except Left as left:
        ...     print(left.code, left.step, left)
        0 40 worker-3 left the job at step 40 (SIGTERM)
    """

    def __init__(self, reason: str, step: int) -> None:
        super().__init__(0)
        self.reason = reason
        self.step = step

    def __str__(self) -> str:
        return self.reason


class StepBoundary(BaseException):
    """Raised out of :meth:`ElasticContext.steps` when the group agreed to change.

    A BaseException so that a user's ``except Exception`` cannot swallow it.
    """


@dataclass
class ElasticContext:
    """This process's place in the current epoch of the group.

    ``model`` is the state's model wrapped in ``DistributedDataParallel`` for this
    epoch's group (the module itself when running alone); call it, not the bare module,
    so gradients are averaged. ``rank``/``world_size`` change between epochs: derive the
    data shard from them inside the training function, which runs again for every
    epoch.
    """

    rank: int
    world_size: int
    epoch: int
    replica: str
    members: tuple[str, ...]
    device: torch.device
    model: torch.nn.Module
    state: ElasticState
    boundary: Callable[[], None] = field(repr=False, default=lambda: None)

    @property
    def is_chief(self) -> bool:
        """Rank 0 of this epoch: the one to log and write results."""
        return self.rank == 0

    def steps(self, until: int | None = None, samples_per_step: int | None = None) -> Iterator[int]:
        """Yield ``state.step`` at every step boundary until it reaches ``until``.

        Before each step all ranks vote, with one tiny all-reduce, on whether the group
        should change (a worker joins, leaves or was lost). When it should, the loop
        ends the epoch on every rank at the same step, and the training function is
        called again in the new group. You advance ``state.step`` yourself.

        Each step is timed and reported as the metric ``step_time_s`` of this rank
        (and ``samples_per_s`` given this rank's ``samples_per_step``), so a straggler
        shows beside the others.

        Example::

            >>> import torch
            >>> from tidemill.runtime import ElasticContext, ElasticState
            >>> state = ElasticState(torch.nn.Linear(1, 1))
            >>> ctx = ElasticContext(0, 1, 1, "worker-0", ("worker-0",),
            ...                      torch.device("cpu"), state.model, state)
            >>> for step in ctx.steps(until=3):
            ...     state.step += 1
            >>> state.step
            3
        """
        timer = reporter()
        last: float | None = None
        while until is None or self.state.step < until:
            self.boundary()
            now = time.perf_counter()
            if last is not None:
                timer.step_took(self.state.step, now - last, samples_per_step)
            last = now
            yield self.state.step
