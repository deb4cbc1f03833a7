"""Every thread's Python stack on demand: a replica dumps them to a file on SIGUSR2.

``py-spy`` reads a stack from outside, but is not always installed (nor allowed to
ptrace). The fallback needs the process's help: the local engine names a file in
``TIDEMILL_STACKS_FILE``, and a Python replica registers ``faulthandler`` for
:data:`STACK_SIGNAL` on it before the training code runs (the warm-start fork server
does so for every replica it forks; ``tidemill.runtime`` on import for any other).
``faulthandler`` writes from C without the GIL, so a process stuck in a native call
still answers. Standard library only: the fork server imports it.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from typing import TextIO

STACKS_FILE_VAR = "TIDEMILL_STACKS_FILE"
STACK_SIGNAL = signal.SIGUSR2

_registered: list[TextIO] = []
"""The open stacks file: faulthandler keeps its descriptor, so the file must stay open."""


def install_from_env() -> bool:
    """Register the dump if the engine asked for one; True if it is registered now."""
    path = os.environ.get(STACKS_FILE_VAR)
    if not path or _registered:
        return bool(_registered)
    try:
        out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the process's life
    except OSError:
        return False
    faulthandler.register(STACK_SIGNAL, file=out, all_threads=True, chain=False)
    _registered.append(out)
    return True
