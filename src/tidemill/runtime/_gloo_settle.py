"""A pause after a gloo group is destroyed, so its last Python object can be freed.

On torch 2.13 a gloo worker thread drops its reference to a finished collective while
holding the group's mutex, and when that reference is the last one its destructor takes
the GIL (the work keeps Python thread-local state). The group object itself lives on
after ``destroy_process_group`` while a ``DistributedDataParallel`` still holds it;
freeing that wrapper runs the group's destructor with the GIL held, and the destructor
waits for the same mutex: each thread waits for the other, forever. Seen here as a
worker silent between two epochs (its heartbeats need the GIL; the master dropped it)
and as ``tidemill run`` never ending after training (py-spy: the main thread in
``~ProcessGroupGloo`` at ``pthread_mutex_lock``, a gloo thread in ``~AsyncWork`` waiting
for the GIL). Sleeping releases the GIL: the worker threads, whose collectives are all
complete by then, drop their references and go idle before anything frees the group.
"""

from __future__ import annotations

import time

SETTLE_S = 0.02
"""Chosen, not measured: a runnable thread normally gets a core well within it."""


def let_gloo_threads_settle() -> None:
    """Release the GIL briefly after the last collective of a group, before it is freed."""
    time.sleep(SETTLE_S)
