"""The process that writes a training process's checkpoints, so writing never holds its GIL.

A writer thread in the training process slows the training thread by about the length
of each write, even on a free core: DCP's Python serialisation holds the interpreter
lock in slices, and every slice the training thread waits for is lost time. Measured on
the 2-core development machine (one core computing 6 ms steps, 100 MB of state): a DCP
save on a thread added 50-120 ms to the steps it overlapped, the same save from another
process 0-20 ms. So the writer thread only describes the state's place in shared memory
(:mod:`tidemill.checkpoint._staging`: a commit usually lies there already; anything
else is copied with byte copies that release the GIL) and hands it to this process,
which saves it with the same :class:`CheckpointStore` code.

The process starts on the first save (importing torch takes a few seconds, once),
runs at a lower priority, and dies with the thread that started it (the writer
thread, ``PR_SET_PDEATHSIG``): a training process killed with SIGKILL leaves no
writer behind. A writer process that dies is reported as that save's failure and
started again for the next one.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import weakref
from pathlib import Path

from tidemill.checkpoint import _channel
from tidemill.checkpoint._errors import CheckpointError
from tidemill.checkpoint._manifest import Manifest
from tidemill.checkpoint._staging import Stager
from tidemill.runtime._shared_memory import SharedArena
from tidemill.runtime.elastic_state import Committed

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
"""How long a closed writer process may take to exit before it is killed."""


class WriterProcess:
    """Saves committed states to ``url`` through a child process (see the module docstring).

    Call from one thread at a time (the :class:`CheckpointWriter` thread).
    """

    def __init__(self, url: str, keep: int, nice: int) -> None:
        self.url = url
        self.keep = keep
        self.nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)
        """The process's nice value: ``nice`` above the thread that made this object's."""
        self._stager = Stager()
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._mapped: dict[int, weakref.ref[SharedArena]] = {}
        """The arenas the process has mapped, by generation (one closed or gone here is
        unmapped there at the next save)."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def save(self, committed: Committed, job: str | None) -> Manifest:
        """Stage ``committed``, have the process save it, and return the manifest.

        Raises CheckpointError when the save failed or the process died doing it.
        """
        staged = self._stager.stage(committed)
        sock = self._started()
        new = [arena for arena in staged.arenas if arena.generation not in self._mapped]
        gone = [generation for generation, ref in self._mapped.items() if _closed(ref())]
        message = (self.url, self.keep, job, [a.generation for a in new], gone, staged.payload)
        try:
            _channel.send(sock, pickle.dumps(message), [a.fd for a in new if a.fd is not None])
            reply = _channel.receive(sock)
        except OSError:
            reply = None
        del staged  # the process is done reading the arenas
        if reply is None:
            raise CheckpointError(self.url, f"saving step {committed.step} failed: {self._lost()}")
        for generation in gone:
            del self._mapped[generation]
        self._mapped.update((arena.generation, weakref.ref(arena)) for arena in new)
        kind, value = pickle.loads(reply[0])
        if kind == "saved" and isinstance(value, Manifest):
            return value
        where, detail = value
        raise CheckpointError(where, detail)

    def close(self) -> None:
        """Ask the process to exit (it finishes nothing: the save in progress, if any, is
        left partial and cleaned up by a later save), then release the staging arena."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._process is not None:
            try:
                self._process.wait(CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._mapped = {}
        self._stager.close()

    def start(self) -> None:
        """Start the process unless it runs (it then imports torch while training goes on)."""
        self._started()

    def _started(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, path]))}
        argv = [sys.executable, "-m", "tidemill.checkpoint._writer_child"]
        with theirs:
            self._process = subprocess.Popen(
                [*argv, str(theirs.fileno()), str(os.getpid()), str(self.nice)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._sock, self._mapped = ours, {}
        return ours

    def _lost(self) -> str:
        """Why the process stopped answering; it is reaped and the next save starts another."""
        process, sock = self._process, self._sock
        self._process, self._sock, self._mapped = None, None, {}
        if sock is not None:
            sock.close()
        if process is None:
            return "the checkpoint writer process is gone"
        try:
            code = process.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        return f"the checkpoint writer process (pid {process.pid}) exited with code {code}"


def _closed(arena: SharedArena | None) -> bool:
    return arena is None or arena.closed
