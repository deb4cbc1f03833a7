"""Run one replica command as a child and record how it ended.

The local engine starts this file by path (``python -I _supervise.py ...``) so that it
imports only the standard library and starts in milliseconds. It exists because a
restarted control plane is no longer the parent of the replicas it launched and so
cannot ``wait()`` for them: the exit code must outlive both processes, in a file.

Usage: ``_supervise.py SUPERVISOR_FILE PID_FILE EXIT_FILE WORKING_DIR -- ARGV...``

The supervisor file is written first, before anything runs: ``{"supervisor_pid": N,
"warm_start": false}``; the engine's ``adopt`` reads it to find a launch it did not
get to record. The pid file holds the command's pid once it started. The exit file
holds the exit code on its first line (a signal is written as
``128 + signum``, as a shell does: ``kill -9`` reads 137) and, optionally, a reason
on the second. It is written atomically (temporary file, then rename).

The warm-start fork server (``_fork_server.py``) supervises forked commands with the
same :class:`Supervisor`, so both paths write the same files the same way.

``TIDEMILL_CPUS`` in the environment (CPU numbers joined by commas) pins the supervisor
before it starts the command, so the command and all its threads and children inherit
the CPU set: the CPUs of the NUMA node its GPUs sit on.

``TIDEMILL_TETHER_FD`` (taken out of the environment before the command starts) names
an inherited file descriptor: the read end of a pipe whose write end only the control
plane holds. A control plane that no later one can take over (``tidemill run``'s, with
its state in a folder of its own) tethers its replicas so: when the pipe reads
end-of-file, that control plane has ended, however it ended (``kill -9`` included), and
nothing is left to stop the replica, so the supervisor stops it itself: SIGTERM to the
command, then, after :data:`TETHER_GRACE_S`, SIGKILL to what is left of the replica
(its process group, and every process carrying its :data:`UID_VAR`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import MutableMapping
from types import FrameType
from typing import Protocol

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
EXIT_NOT_FOUND = 127
CPUS_VAR = "TIDEMILL_CPUS"
EXIT_NOT_EXECUTABLE = 126
UID_VAR = "TIDEMILL_REPLICA_UID"
"""Carried by every process of a launch, unique per launch: how ``stop`` finds them."""
TETHER_VAR = "TIDEMILL_TETHER_FD"
TETHER_GRACE_S = 5.0
"""How long a tethered command whose control plane ended has to finish on SIGTERM."""
CONTROL_PLANE_ENDED = "stopped because the control plane that ran it had ended"
"""The end of the exit file's reason when a tethered replica was stopped so: the next
control plane on the same state starts it again rather than count it as a failure."""


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class Child(Protocol):
    """The supervised command: a ``subprocess.Popen`` or a forked process."""

    @property
    def pid(self) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def wait(self) -> int:
        """Block until it ends; its exit code, or ``-signum`` if a signal ended it."""
        ...


class Supervisor:
    """Starts the child, forwards signals to it, waits, and writes its exit code."""

    def __init__(
        self,
        supervisor_file: str,
        pid_file: str,
        exit_file: str,
        working_dir: str,
        argv: list[str],
        warm_start: bool = False,
        tether: int | None = None,
    ):
        self.supervisor_file = supervisor_file
        self.tether = tether
        """see :func:`take_tether`; None: the replica outlives its control plane"""
        self.warm_start = warm_start
        self.pid_file = pid_file
        self.exit_file = exit_file
        self.working_dir = working_dir
        self.argv = argv
        self.child: Child | None = None
        self.pending_signal: int | None = None
        self.untethered = False
        """the tether read end-of-file and the command was sent SIGTERM before it ended"""
        self.ended = threading.Event()
        self.ending = threading.Lock()
        """orders the command's end against the tether's SIGTERM: one of them is first"""

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is None:
            self.pending_signal = signum
        else:
            self.child.send_signal(signum)

    def finish(self, code: int, reason: str = "") -> int:
        if self.untethered:
            reason = f"{reason}; {CONTROL_PLANE_ENDED}" if reason else CONTROL_PLANE_ENDED
        write_atomic(self.exit_file, f"{code}\n{reason}\n" if reason else f"{code}\n")
        return code

    def cannot_start(self, code: int, why: str) -> int:
        reason = f"cannot start {self.argv[0]!r}: {why}"
        print(f"tidemill: {reason}", file=sys.stderr, flush=True)
        return self.finish(code, reason)

    def cannot_start_with(self, exc: OSError) -> int:
        code = EXIT_NOT_EXECUTABLE if isinstance(exc, PermissionError) else EXIT_NOT_FOUND
        return self.cannot_start(code, exc.strerror or str(exc))

    def prepare(self) -> int | None:
        """Install the signal forwarding; the exit code already written if the command
        must not start (no working directory, or a signal came first)."""
        record = {"supervisor_pid": os.getpid(), "warm_start": self.warm_start}
        write_atomic(self.supervisor_file, json.dumps(record) + "\n")
        for signum in FORWARDED:
            signal.signal(signum, self.on_signal)
        pinned = os.environ.get(CPUS_VAR)
        if pinned:
            pin_cpus(pinned)
        if not os.path.isdir(self.working_dir):
            return self.cannot_start(
                EXIT_NOT_FOUND, f"working directory {self.working_dir!r} does not exist"
            )
        if self.pending_signal is not None:
            return self.killed_by(self.pending_signal)
        return None

    def run(self) -> int:
        refused = self.prepare()
        if refused is not None:
            return refused
        try:
            child = subprocess.Popen(self.argv, cwd=self.working_dir)
        except OSError as exc:
            return self.cannot_start_with(exc)
        return self.supervise(child)

    def supervise(self, child: Child) -> int:
        """Record the started child's pid, wait for it, and record how it ended."""
        self.child = child
        write_atomic(self.pid_file, f"{child.pid}\n")
        if self.pending_signal is not None:
            child.send_signal(self.pending_signal)
        if self.tether is not None:
            threading.Thread(target=self.hold_tether, args=(child,), daemon=True).start()
        returncode = child.wait()
        with self.ending:
            self.ended.set()
        if self.untethered:
            kill_the_rest()
        if returncode < 0:
            return self.killed_by(-returncode)
        return self.finish(returncode)

    def hold_tether(self, child: Child) -> None:
        """Wait for the control plane to end; then stop the command (a thread's job)."""
        assert self.tether is not None
        try:
            while os.read(self.tether, 4096):
                continue
        except OSError as exc:
            print(f"tidemill: cannot read the tether, stopping: {exc}", file=sys.stderr)
        with self.ending:
            if self.ended.is_set():
                return
            print(
                "tidemill: the control plane that ran this replica ended; stopping it "
                f"(SIGTERM, SIGKILL after {TETHER_GRACE_S:g}s)",
                file=sys.stderr,
                flush=True,
            )
            self.untethered = True
            child.send_signal(signal.SIGTERM)
        if not self.ended.wait(TETHER_GRACE_S):
            kill_the_rest()

    def killed_by(self, signum: int) -> int:
        return self.finish(128 + signum, f"killed by {signal.Signals(signum).name}")


def take_tether(environ: MutableMapping[str, str]) -> int | None:
    """Remove :data:`TETHER_VAR` from ``environ``; the file descriptor it names, if open
    (else None, said on stderr: the replica is then left untethered rather than stopped)."""
    value = environ.pop(TETHER_VAR, None)
    if value is None:
        return None
    try:
        fd = int(value)
        os.fstat(fd)
    except (ValueError, OSError) as exc:
        print(f"tidemill: {TETHER_VAR}={value!r} is no open file: {exc}", file=sys.stderr)
        return None
    return fd


def kill_the_rest() -> None:
    """SIGKILL every other process of this replica: this process group, and what carries
    this replica's :data:`UID_VAR` (what left the group with ``setsid``)."""
    uid = os.environ.get(UID_VAR)
    tag = f"{UID_VAR}={uid}".encode() if uid else None
    group = os.getpgrp()
    for pid in _pids():
        if pid != os.getpid() and (_group_of(pid) == group or _carries(pid, tag)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _group_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[2])  # proc(5): state, ppid, pgrp after the command name


def _carries(pid: int, tag: bytes | None) -> bool:
    if tag is None:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return tag in environ.read().split(b"\0")
    except OSError:
        return False


def pin_cpus(listed: str) -> None:
    """Pin this process to the CPUs ``listed`` that it may use here; say on stderr (the
    replica's log) what could not be honoured. A replica runs unpinned rather than not
    at all: a declared NUMA layout may describe a larger machine than this one."""
    allowed = os.sched_getaffinity(0)
    try:
        wanted = {int(cpu) for cpu in listed.split(",")}
    except ValueError:
        print(
            f"tidemill: {CPUS_VAR}={listed!r} is not a list of CPU numbers; running unpinned",
            file=sys.stderr,
            flush=True,
        )
        return
    usable = wanted & allowed
    if not usable:
        print(
            f"tidemill: {CPUS_VAR} names CPUs {sorted(wanted)}; this process may use only "
            f"{sorted(allowed)}; running unpinned",
            file=sys.stderr,
            flush=True,
        )
        return
    os.sched_setaffinity(0, usable)
    if usable != wanted:
        print(
            f"tidemill: pinned to CPUs {sorted(usable)}; {sorted(wanted - usable)} of "
            f"{CPUS_VAR} are not available here",
            file=sys.stderr,
            flush=True,
        )


def main(args: list[str]) -> int:
    if len(args) < 6 or args[4] != "--":
        print(
            f"usage: {sys.argv[0]} SUPERVISOR_FILE PID_FILE EXIT_FILE WORKING_DIR -- ARGV... "
            f"(got {args!r})",
            file=sys.stderr,
        )
        return 2
    supervisor_file, pid_file, exit_file, working_dir, _, *argv = args
    tether = take_tether(os.environ)
    return Supervisor(supervisor_file, pid_file, exit_file, working_dir, argv, tether=tether).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
