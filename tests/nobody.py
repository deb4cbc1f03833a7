"""Another user of this machine, for real: a stdlib Python program run as ``nobody``.

Needs root (to switch user), /usr/bin/python3 and Linux sock_diag; tests skip without.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tidemill.peer_user import can_tell_users

SYSTEM_PYTHON = Path("/usr/bin/python3")


def nobody_uid() -> int | None:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None


needs_nobody = pytest.mark.skipif(
    not (os.geteuid() == 0 and nobody_uid() is not None and SYSTEM_PYTHON.exists())
    or not can_tell_users(),
    reason="needs root (to run a process as nobody), /usr/bin/python3 and Linux sock_diag",
)


def start_as_nobody(source: str, *args: str) -> subprocess.Popen[str]:
    """Start ``source`` with ``args`` as nobody (isolated stdlib Python); stdout piped."""
    return subprocess.Popen(
        [str(SYSTEM_PYTHON), "-I", "-c", source, *args],
        user="nobody",
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )


def run_as_nobody(source: str, *args: str) -> str:
    """Run ``source`` with ``args`` as nobody (isolated stdlib Python); its stdout."""
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", source, *args],
        user="nobody",
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout
