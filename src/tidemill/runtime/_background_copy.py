"""State copied on a thread while training goes on, complete before the optimizer's next step.

Between a commit (or a restore) and the optimizer's next ``step()``, forward and
backward read the parameters and write only gradients and activations: the
parameters and the optimizer's state stay as they were. So their copy need not hold
the training thread; it runs on a thread of its own (one: the training thread keeps
its cores), and the optimizer's ``step``, ``state_dict`` and ``load_state_dict``
first wait for it, through the optimizer's own hooks. A thread that has to wait
copies what is left itself, alongside the background thread (the copy is cut into
chunks of :data:`~tidemill.runtime._state_copy.CHUNK_BYTES`), so a copy longer than
forward and backward ends on two cores.

A source changed in place before the copy was done (code that updates parameters
outside the optimizer between the commit and the step) would leave a copy of neither
moment. Each source's version counter is read when the copy starts and again when
its last chunk is done, before any waiter goes on; a change is reported as
:class:`CommitChangedError` by :meth:`BackgroundCopy.wait`, and so by the optimizer's
next step: the job stops with the tensor named instead of keeping a commit that never
existed. (Writes through ``tensor.data`` or numpy views bypass the counter; the
:class:`~tidemill.runtime.ElasticState` docstring says not to make them.)
"""

from __future__ import annotations

import collections
import threading

import torch
from torch.utils.hooks import RemovableHandle

from tidemill.runtime._errors import CommitChangedError
from tidemill.runtime._state_copy import Pairs, chunk_runs, spans
from tidemill.runtime._stream_copy import copy_spans


class BackgroundCopy:
    """Copies each (target, source) of ``pairs`` on a thread; after :meth:`hook`, an
    optimizer's methods wait for it.

    ``names`` (one per pair) turns on the version check: a source changed before the
    copy ended makes :meth:`wait` raise :class:`CommitChangedError` naming it.
    """

    def __init__(self, pairs: Pairs, names: list[str] | None = None) -> None:
        self._hooks: list[RemovableHandle] = []
        self._error: BaseException | None = None
        self._pairs = pairs  # the copy reads and writes their bytes by address
        self._spans = spans(pairs)
        self._chunks: collections.deque[tuple[int, int]] = collections.deque(
            chunk_runs(self._spans[2])
        )
        self._left = len(self._chunks)
        self._counted = threading.Lock()
        self._done = threading.Event()
        self._names = names
        self._versions = [source._version for _, source in pairs]
        if self._left == 0:
            self._finish()
        else:
            threading.Thread(target=self._work, name="tidemill-state-copy", daemon=True).start()

    def hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer``'s ``step``, ``state_dict`` and ``load_state_dict`` wait for it."""
        self._hooks += [
            optimizer.register_step_pre_hook(lambda *_: self.wait()),
            optimizer.register_state_dict_pre_hook(lambda *_: self.wait()),
            optimizer.register_load_state_dict_pre_hook(lambda *_: self.wait()),
        ]

    def wait(self) -> None:
        """Help copy what is left, return once the copy is complete; raises what the
        copy raised, if it failed, or :class:`CommitChangedError`."""
        self._work()
        self._done.wait()
        if isinstance(self._error, CommitChangedError):
            raise self._error
        if self._error is not None:
            raise RuntimeError(f"copying the state failed: {self._error}")

    def close(self) -> None:
        """Wait, then take the hooks off the optimizer (not from inside one of them: torch
        iterates over them while it calls them)."""
        try:
            self.wait()
        finally:
            for hook in self._hooks:
                hook.remove()

    def _work(self) -> None:
        """Copy chunks until none is left to take (any thread; the copy releases the GIL)."""
        while True:
            try:
                first, end = self._chunks.popleft()
            except IndexError:
                return
            targets, sources, sizes = self._spans
            try:
                copy_spans(targets[first:end], sources[first:end], sizes[first:end])
            except BaseException as exc:
                self._error = exc
            with self._counted:
                self._left -= 1
                last = self._left == 0
            if last:
                self._finish()

    def _finish(self) -> None:
        """Check the sources' versions (the last chunk is done; nobody has gone on yet)."""
        if self._names is not None and self._error is None:
            for (_, source), name, version in zip(
                self._pairs, self._names, self._versions, strict=True
            ):
                if source._version != version:
                    self._error = CommitChangedError(
                        f"{name} changed in place between state.commit() and the optimizer's"
                        " next step(), before its commit copy was complete; change"
                        " parameters and optimizer state only in or after optimizer.step(),"
                        " or pass ElasticState(..., copy_in_background=False)"
                    )
                    break
        self._done.set()
