"""The optimizer's own copy of a committed state, filled in the background until its first step.

After a restore or a rollback the optimizer must not train on the committed tensors
themselves (they are what the next rollback returns to), so it gets a copy: most of
the state's bytes (Adam keeps two moments per parameter), written into fresh memory.
Fresh memory is the expensive part: on the development VM, copying 1 GB into pages
never touched took 0.78 s, into pages already touched 0.11 s. So the optimizer loads
empty tensors at once and a :class:`~tidemill.runtime._background_copy.BackgroundCopy`
fills them while forward and backward run.
"""

from __future__ import annotations

from typing import Any

import torch

from tidemill.runtime._background_copy import BackgroundCopy
from tidemill.runtime._state_copy import Pairs, shaped


class DeferredCopy(BackgroundCopy):
    """Loads a copy of ``state`` (an optimizer ``state_dict``) into ``optimizer`` at once,
    its bytes copied on a thread; :meth:`wait` returns when they are all there.

    Code that reads ``optimizer.state`` directly (not through the optimizer's methods)
    before the first step must call :meth:`wait` first.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        pairs: Pairs = []
        copied = shaped(state, pairs)
        super().__init__(pairs)
        optimizer.load_state_dict(copied)
        if not _holds_all(optimizer, [target for target, _ in pairs]):
            # The optimizer converted some values (another dtype or device), reading
            # them before they were filled: load them again, complete.
            self.wait()
            optimizer.load_state_dict(copied)
        self.hook(optimizer)


def _holds_all(optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor]) -> bool:
    """Every one of ``tensors`` is, as itself, a value of the optimizer's state."""
    wanted = {id(tensor) for tensor in tensors}
    held = {
        id(value)
        for values in optimizer.state.values()
        for value in values.values()
        if isinstance(value, torch.Tensor)
    }
    return wanted <= held
