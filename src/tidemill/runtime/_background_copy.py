"""State copied on a thread while training goes on, complete before the optimizer's next step.

Between a commit (or a restore) and the optimizer's next ``step()``, forward and
backward read the parameters and write only gradients and activations: the
parameters and the optimizer's state stay as they were. So their copy need not hold
the training thread; it runs on a thread of its own (one: the training thread keeps
its cores), and the optimizer's ``step``, ``state_dict`` and ``load_state_dict``
first wait for it, through the optimizer's own hooks.

A source changed in place before its copy was done (code that updates parameters
outside the optimizer between the commit and the step) would leave a copy of neither
moment. Each source's version counter is read before and after its copy; a change is
reported as :class:`CommitChangedError` by :meth:`BackgroundCopy.wait`, and so by the
optimizer's next step: the job stops with the tensor named instead of keeping a
commit that never existed. (Writes through ``tensor.data`` or numpy views bypass the
counter; the :class:`~tidemill.runtime.ElasticState` docstring says not to make them.)
"""

from __future__ import annotations

import threading

import torch
from torch.utils.hooks import RemovableHandle

from tidemill.runtime._errors import CommitChangedError
from tidemill.runtime._state_copy import Pairs, copy_bytes


class BackgroundCopy:
    """Copies each (target, source) of ``pairs`` on a thread; after :meth:`hook`, an
    optimizer's methods wait for it.

    ``names`` (one per pair) turns on the version check: a source changed during its
    copy makes :meth:`wait` raise :class:`CommitChangedError` naming it.
    """

    def __init__(self, pairs: Pairs, names: list[str] | None = None) -> None:
        self._hooks: list[RemovableHandle] = []
        self._error: BaseException | None = None
        versions = None if names is None else [source._version for _, source in pairs]
        self._thread = threading.Thread(
            target=self._copy,
            args=(pairs, names, versions),
            name="tidemill-state-copy",
            daemon=True,
        )
        self._thread.start()

    def hook(self, optimizer: torch.optim.Optimizer) -> None:
        """Make ``optimizer``'s ``step``, ``state_dict`` and ``load_state_dict`` wait for it."""
        self._hooks += [
            optimizer.register_step_pre_hook(lambda *_: self.wait()),
            optimizer.register_state_dict_pre_hook(lambda *_: self.wait()),
            optimizer.register_load_state_dict_pre_hook(lambda *_: self.wait()),
        ]

    def wait(self) -> None:
        """Return once the copy is complete; raises what the copy raised, if it failed."""
        self._thread.join()
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

    def _copy(self, pairs: Pairs, names: list[str] | None, versions: list[int] | None) -> None:
        try:
            if names is None or versions is None:
                copy_bytes(pairs)
                return
            for (target, source), name, version in zip(pairs, names, versions, strict=True):
                copy_bytes([(target, source)], threads=1)
                if source._version != version:
                    raise CommitChangedError(
                        f"{name} changed in place between state.commit() and the optimizer's"
                        " next step(), before its commit copy was taken; change parameters"
                        " and optimizer state only in or after optimizer.step(), or pass"
                        " ElasticState(..., copy_in_background=False)"
                    )
        except BaseException as exc:
            self._error = exc
