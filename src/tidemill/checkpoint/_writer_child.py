"""The checkpoint writer process itself: maps staged states and saves them with the store.

Started by :class:`tidemill.checkpoint._writer_process.WriterProcess` as
``python -m tidemill.checkpoint._writer_child FD PARENT_PID NICE`` (NICE: the nice value
to run at); it answers each save request on the socket ``FD`` and exits when the socket
closes. A request names the arenas to map (their descriptors come with it) and those the
parent has closed; the others stay mapped from earlier requests.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import socket
import sys
from typing import Any

import torch

from tidemill.checkpoint import _channel
from tidemill.checkpoint._errors import CheckpointError
from tidemill.checkpoint._staging import unstage
from tidemill.checkpoint._store import CheckpointStore
from tidemill.runtime._shared_memory import SharedArena

log = logging.getLogger("tidemill.checkpoint.writer")

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    fd, parent, nice = (int(value) for value in argv)
    _die_with(parent)
    if os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    torch.set_num_threads(1)
    # DCP stores each tensor as a torch.save archive, whose records get a CRC-32 of
    # their own by default: a second pass over every byte of the state (on the
    # development VM, 1 GB saved in 0.6-0.75 s of CPU with it, 0.4 s without). The
    # store already takes each file's CRC-32 as it writes it and verifies it on every
    # restore; torch.load and DCP's readers load records without theirs.
    torch.serialization.set_crc32_options(False)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    sock = socket.socket(fileno=fd)
    arenas: dict[int, SharedArena] = {}
    while (message := _channel.receive(sock)) is not None:
        payload, fds = message
        url, keep, job, new, gone, staged = pickle.loads(payload)
        for generation in gone:
            arenas.pop(generation).close()
        for generation, fd in zip(new, fds, strict=True):
            arenas[generation] = SharedArena.adopt(fd, generation)
        _channel.send(sock, pickle.dumps(_save(url, keep, job, staged, arenas)))


def _save(
    url: str, keep: int, job: str | None, staged: bytes, arenas: dict[int, SharedArena]
) -> Any:
    """("saved", manifest) or ("failed", (url, detail)) for the parent's CheckpointError."""
    try:
        committed = unstage(staged, arenas)
        return ("saved", CheckpointStore(url, keep).save(committed, job))
    except CheckpointError as exc:
        return ("failed", (exc.url, exc.detail))
    except Exception as exc:
        log.exception("checkpoint save failed unexpectedly")
        return ("failed", (url, f"{type(exc).__name__}: {exc}"))


def _die_with(parent: int) -> None:
    """Be killed when the thread that started this process ends (Linux), the process too."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
