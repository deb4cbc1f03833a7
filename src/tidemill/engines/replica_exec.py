"""``tidemill exec``: a command run where a replica runs, as the replica would run it.

The engine starts it (locally: a process with the replica's environment and folder;
on Kubernetes: the pods/exec subresource of the replica's container) and hands back a
:class:`ReplicaCommand`, whose output the server streams to the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from tidemill.engines._supervise import UID_VAR
from tidemill.stack_signal import STACK_DUMP_VAR

CHUNK_BYTES = 64 * 1024
NOT_FOR_EXEC = (UID_VAR, STACK_DUMP_VAR)
"""Variables that mark the replica's own processes: a command run beside it is not one
(``stop`` would count it as the replica, ``adopt`` could take it for its supervisor)."""


class ReplicaCommand(Protocol):
    """A command started in a replica's environment."""

    def output(self) -> Iterator[bytes]:
        """Its stdout and stderr, merged, as they come; ends when the command ends."""
        ...

    def wait(self) -> int:
        """Its exit code (``128 + signum`` when a signal ended it)."""
        ...

    def cancel(self) -> None:
        """End it (and what it started) now; the caller went away."""
        ...


def write_launch_env(path: str, env: dict[str, str], working_dir: str) -> None:
    """Record what a launch starts with; readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"env": env, "working_dir": working_dir}, out)


def read_launch_env(path: str) -> tuple[dict[str, str], str]:
    """The environment (less :data:`NOT_FOR_EXEC`) and folder a launch started with."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"the replica's environment was not recorded ({path}: {exc}); it was launched "
            "by an older tidemill: restart the replica to exec in it"
        ) from None
    env = {k: str(v) for k, v in record["env"].items() if k not in NOT_FOR_EXEC}
    return env, str(record["working_dir"])


class LocalCommand:
    """A process in its own session, so ``cancel`` ends its children too."""

    def __init__(self, argv: list[str], env: dict[str, str], working_dir: str) -> None:
        self._proc = subprocess.Popen(
            argv,
            cwd=working_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> Iterator[bytes]:
        if self._proc.stdout is None:
            return
        fd = self._proc.stdout.fileno()
        while chunk := os.read(fd, CHUNK_BYTES):
            yield chunk

    def wait(self) -> int:
        code = self._proc.wait()
        return 128 - code if code < 0 else code

    def cancel(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
