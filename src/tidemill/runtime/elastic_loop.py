"""Elastic training in place: the group changes between two steps; no process restarts.

TorchElastic (torchrun) restarts every worker when membership changes. Here, as in
the elastic designs Huya and ByteDance published (and Horovod Elastic's API), every
worker stops at the same step boundary, rebuilds its process group in its own
process, receives the newest committed state, and goes on:

- **A worker joins** (scale-out, or a replacement of a lost one): it registers with
  the job master; at the next boundary the group re-forms with it, and it receives
  the model, optimizer, step, extras and data positions by broadcast.
- **A worker leaves** (scale-in: the controller sends SIGTERM): at the next boundary
  the group agrees to drop it; its ``train()`` raises :class:`Left` (exit code 0).
- **A worker dies** (kill -9, crash): the master sees its connection close and aborts
  the epoch; the survivors' collectives fail at once, they roll back to their last
  :meth:`ElasticState.commit` and re-form without it within about a second.
- **The master dies**: training goes on; workers reconnect when it is back (same
  port) and it resumes from its saved state.

Learning-rate or batch-size scaling goes in ``on_resize(old_world_size,
new_world_size)``, called on every rank after the state is synced and before
training resumes; it also runs before the first epoch, from 1 (the state as you
built it) to the first group's size.

The master is found through ``TIDEMILL_MASTER_ADDR`` (tidemill sets it, with
``TIDEMILL_ROLE``/``TIDEMILL_INDEX`` naming the replica); ranks come from the master,
never from ``RANK``/``WORLD_SIZE``. Without ``TIDEMILL_MASTER_ADDR`` the function runs
once, alone, so the same script works on a laptop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import torch

from tidemill.runtime._active import ActiveEpoch, activate, deactivate
from tidemill.runtime._errors import RuntimeConfigError
from tidemill.runtime.elastic_context import ElasticContext, Left
from tidemill.runtime.elastic_driver import Driver, ResizeHook
from tidemill.runtime.elastic_state import ElasticState

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["ElasticContext", "ElasticState", "Left", "ResizeHook", "elastic"]


def elastic(
    state: ElasticState,
    *,
    on_resize: ResizeHook | None = None,
    backend: str | None = None,
) -> Callable[[Callable[Concatenate[ElasticContext, P], T]], Callable[P, T]]:
    """Make ``train(ctx, ...)`` elastic: it is called once per membership epoch.

    Write the function so that it continues from ``state`` (``state.step``,
    ``state.data``): it is entered again after every change, with a new
    :class:`ElasticContext`. Iterate ``ctx.steps(until=...)`` so that changes happen at
    step boundaries, and call ``state.commit()`` every few steps. Calling the decorated
    function returns ``train``'s result on every worker still in the group at the end,
    and raises :class:`Left` (exit 0) in a worker that was scaled in. ``backend``
    defaults to nccl for a CUDA model, gloo otherwise.

    Example (alone; under tidemill the same code trains in an elastic group)::

        >>> import torch
        >>> from tidemill.runtime import ElasticState, elastic
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> state = ElasticState(model, optimizer)
        >>> @elastic(state, on_resize=lambda old, new: print(f"world {old} -> {new}"))
        ... def train(ctx, target):
        ...     for step in ctx.steps(until=50):
        ...         loss = (ctx.model(torch.ones(1, 1)) - target).pow(2).mean()
        ...         optimizer.zero_grad()
        ...         loss.backward()
        ...         optimizer.step()
        ...         state.step += 1
        ...         if state.step % 10 == 0:
        ...             state.commit()
        ...     return round(model.weight.item(), 3)
        >>> train(3.0)
        3.0
    """

    def decorate(train: Callable[Concatenate[ElasticContext, P], T]) -> Callable[P, T]:
        @functools.wraps(train)
        def run(*args: P.args, **kwargs: P.kwargs) -> T:
            env = dict(os.environ)
            if env.get("TIDEMILL_MASTER_ADDR"):
                return Driver(state, env, on_resize, backend).run(train, args, kwargs)
            if env.get("TIDEMILL_ELASTIC") == "1":
                raise RuntimeConfigError(
                    "TIDEMILL_ELASTIC=1 but TIDEMILL_MASTER_ADDR is not set: an elastic "
                    "worker needs its job master's host:port (tidemill sets both)"
                )
            ctx = _alone(state)
            activate(ActiveEpoch(ctx, None))
            try:
                return train(ctx, *args, **kwargs)
            finally:
                deactivate()

        return run

    return decorate


def _alone(state: ElasticState) -> ElasticContext:
    device = next((p.device for p in state.model.parameters()), torch.device("cpu"))
    state.holds_group_state = True
    return ElasticContext(
        rank=0,
        world_size=1,
        epoch=0,
        replica="local",
        members=("local",),
        device=device,
        model=state.model,
        state=state,
    )
