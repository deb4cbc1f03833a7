"""A local replica's processes: its handle, and finding, signalling and reaping them.

A replica is its supervisor (``_supervise.py``, or one forked by the warm-start fork
server), the supervisor's process tree and group, and every process carrying its
``TIDEMILL_REPLICA_UID``, so processes that left the tree (``setsid``, double fork) are
found too. A supervisor is told from a later process with its pid by its start time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tidemill.engines._supervise import UID_VAR
from tidemill.engines.base import ReplicaHandle
from tidemill.engines.local_files import LaunchFiles, read_supervisor
from tidemill.engines.usage import ProcessTable

ENGINE_NAME = "local"
SUPERVISOR = str(Path(__file__).with_name("_supervise.py"))
CREATE_TIME_SLACK_S = 1.0
"""psutil derives start times from the boot time, which /proc gives in whole seconds."""
POLL_S = 0.02
ENDED = 0.0
"""``supervisor_create_time`` of a supervisor that had ended when its handle was made:
matches no process, so a reused pid is never taken for it."""

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Supervisors this process started, whichever engine instance did: polled to reap them."""
_children_lock = threading.Lock()


@dataclass(frozen=True)
class LocalReplica:
    """What a local handle holds (``ReplicaHandle.data``), as plain JSON values."""

    supervisor_pid: int
    supervisor_create_time: float
    """psutil's start time, to tell the supervisor from a later process with its pid;
    :data:`ENDED` when it had ended before the handle was made"""
    pgid: int
    uid: str
    pid_file: str
    exit_file: str
    log_file: str
    warm_start: bool = False
    """forked from the warm fork server rather than started by a new interpreter"""

    @classmethod
    def from_handle(cls, handle: ReplicaHandle) -> LocalReplica:
        if handle.engine != ENGINE_NAME:
            raise ValueError(
                f"handle belongs to engine {handle.engine!r}, not {ENGINE_NAME!r}: "
                "observe or stop it with the engine that launched it"
            )
        data = handle.data
        try:
            return cls(
                supervisor_pid=int(str(data["supervisor_pid"])),
                supervisor_create_time=float(str(data["supervisor_create_time"])),
                pgid=int(str(data["pgid"])),
                uid=str(data["uid"]),
                pid_file=str(data["pid_file"]),
                exit_file=str(data["exit_file"]),
                log_file=str(data["log_file"]),
                warm_start=data.get("warm_start") is True,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a local replica handle ({exc!r}): {data!r}") from None

    def to_handle(self) -> ReplicaHandle:
        return ReplicaHandle(engine=ENGINE_NAME, data=asdict(self))


def local_replica(files: LaunchFiles, pid: int, created: float, warm: bool) -> LocalReplica:
    return LocalReplica(
        supervisor_pid=pid,
        supervisor_create_time=created,
        pgid=pid,
        uid=files.uid,
        pid_file=files.pid_file,
        exit_file=files.exit_file,
        log_file=str(files.log_file),
        warm_start=warm,
    )


def supervisor_record(files: LaunchFiles) -> tuple[int, float, bool] | None:
    """Pid, start time (:data:`ENDED` once it ended) and warm start of the supervisor
    that wrote ``files.supervisor_file``; None before it wrote it."""
    record = read_supervisor(files.supervisor_file)
    if record is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        created = proc.create_time() if carries_uid(proc, files.uid) else ENDED
    except psutil.Error:
        created = ENDED
    return record.pid, created, record.warm_start


def find_supervisor(uid: str) -> tuple[int, float, bool] | None:
    """The running supervisor of the launch with ``uid``, before it recorded itself: the
    first session leader carrying the uid."""
    leaders: list[tuple[float, int, bool]] = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid() or not carries_uid(proc, uid):
            continue
        try:
            if os.getsid(proc.pid) == proc.pid and alive(proc):
                leaders.append((proc.create_time(), proc.pid, SUPERVISOR not in proc.cmdline()))
        except (OSError, psutil.Error):
            continue
    if not leaders:
        return None
    created, pid, warm = min(leaders)
    return pid, created, warm


def reap(pid: int) -> None:
    with _children_lock:
        popen = _children.get(pid)
        if popen is not None and popen.poll() is not None:
            del _children[pid]


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def running_supervisor(replica: LocalReplica) -> psutil.Process | None:
    """The supervisor if it still runs (and its pid was not reused since launch)."""
    try:
        proc = psutil.Process(replica.supervisor_pid)
        same = abs(proc.create_time() - replica.supervisor_create_time) < CREATE_TIME_SLACK_S
    except psutil.Error:
        return None
    return proc if same and alive(proc) else None


def supervisor_in(table: ProcessTable, replica: LocalReplica) -> bool:
    """Whether ``table`` shows the supervisor running (and its pid not reused)."""
    supervisor = table.process(replica.supervisor_pid)
    return (
        supervisor is not None
        and not supervisor.zombie
        and abs(supervisor.created - replica.supervisor_create_time) < CREATE_TIME_SLACK_S
    )


def child_pid(replica: LocalReplica) -> int | None:
    try:
        return int(Path(replica.pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def carries_uid(proc: psutil.Process, uid: str) -> bool:
    try:
        return proc.environ().get(UID_VAR) == uid
    except psutil.Error:
        return False


def orphaned_child(replica: LocalReplica) -> psutil.Process | None:
    """The replica's command, still running after its supervisor died."""
    pid = child_pid(replica)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return proc if alive(proc) and carries_uid(proc, replica.uid) else None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def safe_children(proc: psutil.Process, recursive: bool) -> list[psutil.Process]:
    try:
        return proc.children(recursive=recursive)
    except psutil.Error:
        return []


def replica_processes(
    replica: LocalReplica, supervisor: psutil.Process | None
) -> list[psutil.Process]:
    """Every live process of the replica: the supervisor's tree, its process group while
    it runs (the group id cannot be reused before then), and all carrying its uid."""
    found: dict[int, psutil.Process] = {}
    roots = [supervisor] if supervisor is not None else []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        in_group = supervisor is not None and _pgid(proc.pid) == replica.pgid
        if in_group or carries_uid(proc, replica.uid):
            roots.append(proc)
    for root in roots:
        for proc in [root, *safe_children(root, recursive=True)]:
            found.setdefault(proc.pid, proc)
    return [p for p in found.values() if alive(p)]


def signal_all(procs: list[psutil.Process], signum: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            continue


def wait_gone(replica: LocalReplica, procs: list[psutil.Process], deadline: float) -> None:
    while True:
        reap(replica.supervisor_pid)
        if not any(alive(p) for p in procs) or time.monotonic() >= deadline:
            return
        time.sleep(POLL_S)


def track(popen: subprocess.Popen[bytes]) -> None:
    """Reap the supervisor ``popen`` started once it ends (see :func:`reap`)."""
    with _children_lock:
        _children[popen.pid] = popen
