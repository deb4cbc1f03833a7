"""The epoch the elastic loop is running now, for code that must join in (the data loader).

Set by the elastic loop when a training function is entered and cleared when its
group closes, so a loader created anywhere (inside or outside the training function)
finds the current rank, group, state and job master without being handed them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidemill.runtime.elastic_client import MasterClient
    from tidemill.runtime.elastic_context import ElasticContext


@dataclass(frozen=True)
class ActiveEpoch:
    ctx: ElasticContext
    client: MasterClient | None
    """None when the training function runs alone, without a job master."""


_current: ActiveEpoch | None = None


def current() -> ActiveEpoch | None:
    return _current


def activate(active: ActiveEpoch | None) -> None:
    global _current
    _current = active
