"""Ctrl-C in ``tidemill run``: stop the job and the embedded server in bounded time.

Deleting a job waits for its processes to stop, and one that ignores SIGTERM holds the
delete for the server's whole stop grace; stopping the server waits for requests in
flight. A person who pressed Ctrl-C should get the prompt back at once, and no
replica should outlive ``run``. So every step has a deadline: the delete request gets
``GRACE_S``, replicas still alive then are killed (SIGKILL, their whole process tree),
and the server is given what is left of ``BUDGET_S`` to stop.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psutil

from tidemill.api.status import JobView
from tidemill.cli.common import say
from tidemill.client import Client, TidemillError, TimedOut

GRACE_S = 1.0
"""From Ctrl-C until replicas still running are killed: their time to exit on SIGTERM."""
BUDGET_S = 2.0
"""From Ctrl-C to the return of ``run``; what is not done by then (a server still
stopping) is abandoned. The process then leaves at once (see ``tidemill.cli.console``)."""
CREATE_TIME_SLACK_S = 1.0
"""A pid is a replica's only if its process started after the replica (pids are reused)."""


@contextmanager
def shielded() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) cannot cut the bounded clean-up short."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_job(url: str, view: JobView, kill_at: float, deadline: float) -> None:
    """Delete the job (waiting until ``kill_at`` at most), SIGKILL its processes still
    alive then, and wait for them until ``deadline``.

    ``view`` is the latest the caller has; a fresh one is asked for first, so replicas
    started since are known too.
    """
    key = f"{view.namespace}/{view.name}"
    timeout_s = max(0.1, kill_at - time.monotonic())
    procs: list[psutil.Process] = []
    try:
        with Client(url, timeout_s=timeout_s) as client:
            view = client.get(view.name, view.namespace)
            procs = replica_processes(view)
            client.delete(view.name, view.namespace)
    except TimedOut:
        say(f"job {key}: replicas still running {timeout_s:.1f}s after SIGTERM; killing them")
    except TidemillError as exc:
        say(f"could not delete job {key} ({exc}); killing its processes")
    procs = procs or replica_processes(view)
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, kill_at - time.monotonic()))
    for proc in alive:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=max(0.0, deadline - time.monotonic()))


def replica_processes(view: JobView) -> list[psutil.Process]:
    """The running processes of ``view``'s replicas: each replica's process and its tree."""
    procs: dict[int, psutil.Process] = {}
    for replica in view.replicas:
        if replica.pid is None:
            continue
        try:
            proc = psutil.Process(replica.pid)
            started = replica.started_at
            if started is not None and proc.create_time() < started - CREATE_TIME_SLACK_S:
                continue
            for member in [proc, *proc.children(recursive=True)]:
                procs[member.pid] = member
        except psutil.Error:
            continue
    return list(procs.values())


class OnceStop:
    """Stops the embedded server once: fully when ``run`` ends, or by a deadline."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self._stopped = False

    def __call__(self, deadline: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if deadline is None:
            self._stop()
        else:
            stop_within(self._stop, deadline)


def stop_within(stop: Callable[[], None], deadline: float) -> None:
    """Run ``stop`` on a thread of its own and wait for it until ``deadline`` at most."""
    thread = threading.Thread(target=stop, name="tidemill-stop", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        say("the embedded server is still stopping; exiting without waiting for it")


__all__ = [
    "BUDGET_S",
    "GRACE_S",
    "OnceStop",
    "replica_processes",
    "shielded",
    "stop_job",
    "stop_within",
]
