"""Every thread's Python stack on demand: a replica dumps them to its log on SIGUSR2.

``py-spy`` reads a stack from outside, but is not always installed (nor allowed to
ptrace). The fallback needs the process's help: the local engine sets
``TIDEMILL_STACK_DUMP=stderr``, and a Python replica registers ``faulthandler`` for
:data:`STACK_SIGNAL` on its stderr (the replica's log) before the training code runs:
the warm-start fork server does so for every replica it forks, ``tidemill.runtime`` on
import for any other. ``faulthandler`` writes from C without the GIL, so a process
stuck in a native call still answers. Standard library only: the fork server imports it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

STACK_DUMP_VAR = "TIDEMILL_STACK_DUMP"
STACK_DUMP_TO = "stderr"
"""The value that asks for the dump, and where it goes (a file of the process's own,
held open for its life, would be one more descriptor than a cold replica has)."""
STACK_SIGNAL = signal.SIGUSR2


def install_from_env() -> bool:
    """Register the dump if the engine asked for one; True if it is registered now."""
    if os.environ.get(STACK_DUMP_VAR) != STACK_DUMP_TO or sys.stderr is None:
        return False
    try:
        faulthandler.register(STACK_SIGNAL, file=sys.stderr, all_threads=True, chain=False)
    except (OSError, ValueError, RuntimeError):
        return False
    return True
