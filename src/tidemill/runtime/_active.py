"""The epoch the elastic loop is running now, for code that must join in (the data loader).

Set by the elastic loop when a training function is entered and cleared when its
group closes, so a loader created anywhere (inside or outside the training function)
finds the current rank, group, state and job master without being handed them. This
one module-level slot stays because a loader is not handed the state; what the loader
contributes to a commit goes through the state's own hook registry, scoped to the
epoch: hooks added with :meth:`ActiveEpoch.hook_commits` are removed when the epoch
ends (its group is gone, so gathering progress over it would fail).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidemill.runtime._checkpointing import Checkpointing
    from tidemill.runtime.elastic_client import MasterClient
    from tidemill.runtime.elastic_context import ElasticContext
    from tidemill.runtime.elastic_state import CommitHook, ElasticState


@dataclass
class ActiveEpoch:
    ctx: ElasticContext
    client: MasterClient | None
    """None when the training function runs alone, without a job master."""
    checkpointing: Checkpointing | None = None
    """This worker's durable checkpoints, when the job keeps them."""
    hooks: list[CommitHook] = field(default_factory=list)
    """Commit hooks that live as long as this epoch."""
    abort_listeners: list[Callable[[], None]] = field(default_factory=list)
    """Called (from the master's thread) when the job master aborts this epoch, so code
    blocked outside the process group (a parameter-server pull) lets go at once."""

    def on_abort(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` if this epoch is aborted (a peer was lost)."""
        self.abort_listeners.append(fn)

    def hook_commits(self, fn: Callable[[ElasticState], None]) -> CommitHook:
        """Add ``fn`` to the state's commit hooks until this epoch ends."""
        hook = self.ctx.state.add_commit_hook(fn)
        self.hooks.append(hook)
        return hook


_current: ActiveEpoch | None = None


def current() -> ActiveEpoch | None:
    return _current


def activate(active: ActiveEpoch) -> None:
    global _current
    deactivate()
    _current = active


def deactivate() -> None:
    """End the current epoch (if any): its commit hooks are removed."""
    global _current
    active, _current = _current, None
    if active is not None:
        for hook in active.hooks:
            hook.remove()
        active.hooks.clear()
