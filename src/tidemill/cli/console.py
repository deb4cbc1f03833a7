"""The ``tidemill`` console script (and ``python -m tidemill``).

It imports the commands itself, inside ``main``: Ctrl-C while they load (half a second,
more on a busy machine) would otherwise end the process with a traceback from inside
some library's import, where Ctrl-C a moment later says ``interrupted`` and exits 130.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress

from tidemill.cli.exit_codes import EXIT_INTERRUPTED


def main() -> None:
    """The ``tidemill`` command.

    After Ctrl-C a command has already stopped what it started (``run`` deleted its job
    and killed what was left), so the process leaves without the interpreter's teardown:
    that takes up to a second on a busy machine, and ``run`` promises to return within
    3 s of Ctrl-C.
    """
    try:
        from tidemill.cli.main import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        _leave()
    except SystemExit as exc:
        if exc.code != EXIT_INTERRUPTED:
            raise
        _leave()


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_INTERRUPTED)
