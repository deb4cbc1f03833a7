"""Freeing a destroyed gloo group through its Python object, never through DDP.

On torch 2.13 a gloo worker thread drops its reference to a finished collective while
holding the group's mutex, and when that reference is the last one the collective's
destructor takes the GIL: a gradient all-reduce keeps the autograd engine's Python
context. The group's destructor takes that mutex and joins those threads. Torch wraps
a group's Python object so that dropping it releases the GIL around that destructor
(``IntrusivePtrNoGilDestructor`` in torch's c10d bindings), but a
``DistributedDataParallel`` reducer holds the group by a plain pointer: when the
wrapper outlives ``destroy_process_group`` and is freed last, the destructor runs
with the GIL held and waits for a thread that waits for the GIL, forever. Seen here
as ``tidemill run`` never ending after training (py-spy: the main thread in
``~ProcessGroupGloo``, a gloo thread in ``~AsyncWork`` waiting for the GIL) and as an
elastic worker silent between two epochs (its heartbeats need the GIL). Reproduced
with two processes cycling groups (DDP, three backward passes, destroy, free the
wrapper): hung within 5 cycles, 3 runs of 3; with the group's Python object freed
after the wrapper, 700 cycles over 4 runs, none hung.

So a group is retired, not dropped: its Python object is held until the next group
is retired, when the wrapper that held it is long gone and this reference is the
last, or until ``tidemill.init()`` joins a group again (the retired group holds its
store, whose server may own the port the new group is about to listen on), or until
the interpreter starts to exit (``atexit``: a group and its store server freed later,
during finalization, aborted rank 0 with "terminate called without an active
exception" in 5 of 30 two-process runs; released at exit, none in 60). At most one
old group (its sockets and two idle threads) is alive beside the current one.

A gloo thread may also still be waiting for the GIL when the interpreter exits: the
last collective finished a few milliseconds before, and the main thread ran through
``shutdown()`` and the exit handlers without ever yielding the GIL (it yields to a
waiter only after the switch interval, 5 ms). Once finalization starts, a thread that
takes the GIL is ended by ``pthread_exit``, whose unwinding through that destructor
calls ``std::terminate``: the process aborts with "terminate called without an active
exception" after training well. Releasing the group does not join those threads when a
``DistributedDataParallel`` was ever built on it: measured on torch 2.13, with the
wrapper freed, the group destroyed and its Python object dropped, the group's two
worker threads still run (something the wrapper's construction left in C++ holds it).
Seen in 3 of 10 two-process runs of ``examples/digits_ddp`` (and as a gang restart of
that example on the emulated cluster in CI); so at exit, while a gloo group is alive
or retired, the main thread first sleeps for ``EXIT_HANDOFF_S``, which hands the GIL
to any such thread (none of 30 runs aborted then).
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any

_RETIRED: list[Any] = []
EXIT_HANDOFF_S = 0.05
"""Long enough for a gloo thread waiting for the GIL to get a core on a loaded 2-core machine."""


def destroy_default_group(backend: str | None) -> None:
    """``destroy_process_group()``; a gloo group's Python object is then retired, and
    the one retired before it freed, whose destructor runs with the GIL released."""
    import torch.distributed as dist  # as late as the callers: tidemill.init imports torch late

    world = dist.group.WORLD
    dist.destroy_process_group()
    if backend == "gloo":
        _RETIRED[:] = [world]


def release_retired() -> None:
    """Free the retired group now, before a group that may reuse its store's port forms."""
    _RETIRED.clear()


def _hand_off_and_release_at_exit() -> None:
    """Let gloo threads free their last collective before finalization, then free the group."""
    if _RETIRED or _gloo_group_alive():
        time.sleep(EXIT_HANDOFF_S)
    release_retired()


def _gloo_group_alive() -> bool:
    dist = sys.modules.get("torch.distributed")  # never imports torch at exit
    return (
        dist is not None
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_backend() == "gloo"
    )


atexit.register(_hand_off_and_release_at_exit)
