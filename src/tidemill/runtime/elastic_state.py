"""The state elastic training keeps consistent: model, optimizer, step, extras, data positions.

``commit()`` takes an in-memory copy of the model and optimizer state (in host or
device memory; host copies reuse memory an older commit freed, see
:mod:`tidemill.runtime._commit_memory`), cheap next to a step for the models this is
meant for, so commit every few steps. A survivor of a failed collective rolls back to that copy;
when the group changes, the member holding the newest state broadcasts it to every
member, newcomers included, so all ranks continue from the same bytes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from tidemill.runtime._background_copy import BackgroundCopy
from tidemill.runtime._commit_memory import CommitMemory
from tidemill.runtime._deferred_copy import DeferredCopy
from tidemill.runtime._errors import CommitChangedError
from tidemill.runtime._shared_memory import SharedArena
from tidemill.runtime._state_copy import Pairs, copy_bytes, prefilled

EXTRAS_REPORT_LIMIT = 64 * 1024
"""Extras up to this size (as JSON) travel to the job master with each commit."""


@dataclass(frozen=True)
class Committed:
    """One committed state, never changed after it is taken: the elastic loop rolls back
    to it, and a checkpoint writer persists it on its own thread while training goes on.
    ``model`` and ``optimizer`` are copies (``state_dict()`` form) owned by this value."""

    step: int
    world_size: int
    extras: dict[str, Any]
    data: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    memory: SharedArena | None = field(default=None, compare=False, repr=False)
    """The shared memory the plain tensors of ``model`` and ``optimizer`` lie in, when
    they were copied there (a checkpoint writer process then maps it instead of
    copying them); None for any other state."""
    fill: BackgroundCopy | None = field(default=None, compare=False, repr=False)
    """The copy of parameters and optimizer state still running, if any (see
    :meth:`wait`)."""

    def wait(self) -> Committed:
        """This commit, once its tensors are all copied: a commit copies the parameters and
        optimizer state in the background until the optimizer's next step. Raises
        CommitChangedError when one was changed in place before its copy was taken."""
        if self.fill is not None:
            self.fill.wait()
        return self

    def report(self) -> dict[str, Any]:
        """The step, data positions and (small, JSON) extras, for the job master."""
        return {"step": self.step, "data": self.data, "extras": small_json(self.extras)}


def small_json(value: Any) -> Any:
    """``value`` when it is JSON and at most :data:`EXTRAS_REPORT_LIMIT` long, else None."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value if len(text) <= EXTRAS_REPORT_LIMIT else None


class CommitHook:
    """A function registered with :meth:`ElasticState.add_commit_hook` or
    :meth:`ElasticState.add_commit_listener`; ``remove()`` ends it."""

    def __init__(self, registry: list[CommitHook], fn: Callable[[Any], None]) -> None:
        self._registry = registry
        self.fn = fn

    def remove(self) -> None:
        if self in self._registry:
            self._registry.remove(self)


class ElasticState:
    """What survives a resize or a lost peer: pass it to :func:`tidemill.runtime.elastic`.

    ``step`` counts optimizer steps and is yours to advance. ``data`` holds your data
    positions (plain JSON values: offsets, file names); it is committed with the model,
    so after a rollback or a resize you resume reading exactly where the committed
    model stopped, and rank 0 reports it to the job master. ``extras`` holds anything
    else to keep in step (picklable; reported to the master when small and JSON).
    ``world_size`` is the group size the state last trained at.

    ``commit()`` copies buffers and small values at once, and (in states of 1 MiB or
    more) the parameters and the optimizer's state on a background thread that the
    optimizer's next ``step()`` waits for: between a commit and that step, change
    parameters and optimizer state only through the optimizer (a change the tensors'
    version counters see stops the job with the tensor named; writes through ``.data``
    or numpy views go unseen). Pass ``copy_in_background=False`` to copy everything at
    once instead.

    Example::

        >>> import torch
        >>> from tidemill.runtime import ElasticState
        >>> model = torch.nn.Linear(2, 1)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> state = ElasticState(model, optimizer, extras={"epoch": 0}, data={"offset": 0})
        >>> state.step, state.data["offset"] = 5, 640
        >>> state.commit()
        >>> state.step, state.extras["epoch"] = 7, 1
        >>> state.restore()
        >>> state.step, state.extras, state.data, state.committed_step
        (5, {'epoch': 0}, {'offset': 640}, 5)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        step: int = 0,
        extras: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        copy_in_background: bool = True,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.step = step
        self.extras: dict[str, Any] = dict(extras or {})
        self.data: dict[str, Any] = dict(data or {})
        self.world_size = 1
        self.holds_group_state = False
        """False until this process trained in a group or received a group's state: a
        fresh process never becomes the source others copy from."""
        self._hooks: list[CommitHook] = []
        self._listeners: list[CommitHook] = []
        self._memory = CommitMemory()
        self._copy_in_background = copy_in_background
        self._fill: BackgroundCopy | None = None
        """The running copy of the last commit's parameters and optimizer state."""
        # At once: the caller may load weights into the model before the first step.
        self._saved = self._snapshot(in_background=False)
        self._live_is_committed = False
        """The live state is the committed one (set by commit, restore and adopt; the
        elastic driver only broadcasts right after one of them): a broadcast source then
        keeps its commit instead of copying the same state again. False at first: the
        caller may change the model after building this object."""
        self._deferred: DeferredCopy | None = None

    @property
    def committed_step(self) -> int:
        return self._saved.step

    @property
    def committed_data(self) -> dict[str, Any]:
        return copy.deepcopy(self._saved.data)

    @property
    def committed(self) -> Committed:
        """The last commit, complete (immutable: safe to hand to another thread)."""
        return self._saved.wait()

    def commit(self) -> None:
        """Make the current state the one to return to; call it between steps, on every rank."""
        for hook in list(self._hooks):
            hook.fn(self)
        self._end_deferred_copy()
        self._saved = self._snapshot()
        self._live_is_committed = True
        for listener in list(self._listeners):
            listener.fn(self._saved)

    def add_commit_hook(self, fn: Callable[[ElasticState], None]) -> CommitHook:
        """Call ``fn(state)`` at every :meth:`commit`, before the copy is taken.

        Hooks run in the order they were added; each writes what it owns into the state
        (a data loader its reading position into ``data``), so several loaders, or a
        loader and a checkpointer, all commit together. Keep the returned handle and
        call its ``remove()`` when the hook should stop (removing twice is harmless).

        Example::

            >>> import torch
            >>> from tidemill.runtime import ElasticState
            >>> state = ElasticState(torch.nn.Linear(1, 1))
            >>> first = state.add_commit_hook(lambda s: s.data.update(a=s.step))
            >>> second = state.add_commit_hook(lambda s: s.data.update(b=s.step))
            >>> state.step = 3
            >>> state.commit()
            >>> second.remove()
            >>> state.step = 4
            >>> state.commit()
            >>> state.committed_data
            {'a': 4, 'b': 3}
        """
        hook = CommitHook(self._hooks, fn)
        self._hooks.append(hook)
        return hook

    def add_commit_listener(self, fn: Callable[[Committed], None]) -> CommitHook:
        """Call ``fn(committed)`` after every :meth:`commit` (and :meth:`adopt`), with the
        copy just taken: the elastic loop reports it to the job master, the checkpointer
        hands it to its writer thread. ``remove()`` on the handle ends it.

        Example::

            >>> import torch
            >>> from tidemill.runtime import ElasticState
            >>> state = ElasticState(torch.nn.Linear(1, 1))
            >>> seen = []
            >>> listener = state.add_commit_listener(lambda c: seen.append(c.step))
            >>> state.step = 2
            >>> state.commit()
            >>> listener.remove()
            >>> state.commit()
            >>> seen
            [2]
        """
        listener = CommitHook(self._listeners, fn)
        self._listeners.append(listener)
        return listener

    def adopt(self, committed: Committed) -> None:
        """Make ``committed`` (read from a checkpoint) the current and committed state."""
        self._saved = committed
        self.restore()
        self.holds_group_state = True
        for listener in list(self._listeners):
            listener.fn(committed)

    def restore(self) -> None:
        """Go back to the last commit (in place: the optimizer keeps its parameters).

        The optimizer's copy of its committed state is filled on a background thread
        (see :mod:`tidemill.runtime._deferred_copy`); its next ``step()`` waits for it.
        """
        self._end_fill()
        self._end_deferred_copy()
        saved = self._saved
        self.step, self.world_size = saved.step, saved.world_size
        self.extras, self.data = copy.deepcopy(saved.extras), copy.deepcopy(saved.data)
        if self.optimizer is not None and saved.optimizer is not None:
            # Started first, so that it copies while the model loads.
            self._deferred = DeferredCopy(self.optimizer, saved.optimizer)
        with torch.no_grad():
            self.model.load_state_dict(prefilled(self.model, saved.model))
        self._live_is_committed = True

    def report(self) -> dict[str, Any]:
        """The committed step, data positions and (small, JSON) extras, for the master."""
        return self._saved.report()

    def broadcast(self, source_rank: int, rank: int, device: torch.device) -> None:
        """Copy the source's state to every rank of the current group, then commit it.

        The source keeps its commit when its live state is that commit (right after
        :meth:`commit`, :meth:`restore` or :meth:`adopt`); a group of one sends nothing.
        """
        keep = rank == source_rank and self._live_is_committed and self.step == self._saved.step
        self._end_fill(replaced=not keep)  # the exchange writes the live tensors it reads
        if dist.get_world_size() > 1:
            self._exchange(source_rank, rank, device)
        self.holds_group_state = True
        if not keep:
            self._end_deferred_copy()
            self._saved = self._snapshot()
        self._live_is_committed = False

    def _exchange(self, source_rank: int, rank: int, device: torch.device) -> None:
        """The source's model, optimizer, step, extras and data onto every other rank."""
        tensors = list(self.model.state_dict().values())
        works = [dist.broadcast(tensor, source_rank, async_op=True) for tensor in tensors]
        meta: list[Any] = [self._meta() if rank == source_rank else None]
        dist.broadcast_object_list(meta, src=source_rank, device=device)
        for work in works:
            if work is not None:
                work.wait()
        if rank != source_rank:
            received = meta[0]
            self.step, self.world_size = int(received["step"]), int(received["world_size"])
            self.extras, self.data = received["extras"], received["data"]
            if self.optimizer is not None and received["optimizer"] is not None:
                self.optimizer.load_state_dict(received["optimizer"])

    def _end_deferred_copy(self) -> None:
        """Wait for the optimizer's background copy, if one runs, and unhook it."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred.close()

    def _meta(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "world_size": self.world_size,
            "extras": self.extras,
            "data": self.data,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def _end_fill(self, replaced: bool = False) -> None:
        """Wait for the last commit's background copy, if one runs, and unhook it.

        ``replaced``: that commit is about to be replaced, so a change to its sources
        (``on_resize`` rescaling a parameter after a broadcast, say) no longer matters
        here; whoever still holds it (a checkpoint writer) gets the error from its wait.
        """
        fill, self._fill = self._fill, None
        if fill is not None:
            try:
                fill.close()
            except CommitChangedError:
                if not replaced:
                    raise

    def _snapshot(self, in_background: bool = True) -> Committed:
        self._end_fill(replaced=True)
        model_state = dict(self.model.state_dict())
        optimizer_state = None if self.optimizer is None else self.optimizer.state_dict()
        (model, optimizer), memory, pairs = self._memory.shaped((model_state, optimizer_state))
        # A small state (no arena) copies in less time than a thread takes to start.
        later = (
            {}
            if memory is None or not in_background
            else self._copied_later(pairs, model_state, optimizer_state)
        )
        copy_bytes([pair for pair in pairs if id(pair[1]) not in later])
        if later and self.optimizer is not None:
            self._fill = BackgroundCopy(
                [pair for pair in pairs if id(pair[1]) in later],
                [later[id(source)] for _, source in pairs if id(source) in later],
            )
            self._fill.hook(self.optimizer)
        return Committed(
            step=self.step,
            world_size=self.world_size,
            extras=copy.deepcopy(self.extras),
            data=copy.deepcopy(self.data),
            model=model,
            optimizer=optimizer,
            memory=memory,
            fill=self._fill,
        )

    def _copied_later(
        self, pairs: Pairs, model_state: dict[str, Any], optimizer_state: dict[str, Any] | None
    ) -> dict[int, str]:
        """The sources of ``pairs`` only the optimizer changes (its parameters and its
        state), by id, with a name for errors: they are copied in the background."""
        if not self._copy_in_background or self.optimizer is None or optimizer_state is None:
            return {}
        trained = {
            parameter.data_ptr()
            for group in self.optimizer.param_groups
            for parameter in group["params"]
        }
        named = {
            id(value): f"parameter {key!r}"
            for key, value in model_state.items()
            if isinstance(value, torch.Tensor) and value.data_ptr() in trained
        }
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    named[id(value)] = f"optimizer state {key!r} of parameter {index}"
        return {id(source): named[id(source)] for _, source in pairs if id(source) in named}
