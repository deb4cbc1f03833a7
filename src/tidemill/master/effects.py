"""What the membership rules ask the master process to do, in order.

:class:`~tidemill.master.membership.Membership` returns these instead of acting, so
its rules are tested without sockets and the server is the only place with I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidemill.wire import MasterMessage


@dataclass(frozen=True)
class Send:
    replica: str
    message: MasterMessage


@dataclass(frozen=True)
class Notify:
    """An event for ``tidemill describe``."""

    type: str
    """``Normal`` or ``Warning``"""
    reason: str
    message: str
    replica: str | None = None


@dataclass(frozen=True)
class Evict:
    """Tell the replica why, then close its connection."""

    replica: str
    message: str


@dataclass(frozen=True)
class Save:
    """Persist :meth:`Membership.snapshot`; ``urgent`` saves complete before later sends."""

    urgent: bool


Effect = Send | Notify | Evict | Save
