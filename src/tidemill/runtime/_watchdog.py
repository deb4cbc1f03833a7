"""A last resort for a worker stuck between two epochs.

A native call that blocks while holding the GIL (a collective or a process-group
teardown waiting on a peer that is gone) stops every Python thread, heartbeats
included: the job master evicts the worker, but the process lives on, and the job
waits for it. ``faulthandler``'s timer runs in a C thread that needs no GIL, so it
still fires: it prints every thread's stack (what to fix) and ends the process, whose
restart policy then brings a fresh one.
"""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import Iterator
from contextlib import contextmanager

GROUP_CHANGE_LIMIT_S = 120.0
"""Longer than any step of a group change may take (forming waits at most the master's
rendezvous timeout, 60 s by default)."""


@contextmanager
def watchdog(limit_s: float = GROUP_CHANGE_LIMIT_S) -> Iterator[None]:
    """Exit with every thread's stack if the block has not finished after ``limit_s``."""
    faulthandler.dump_traceback_later(limit_s, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
