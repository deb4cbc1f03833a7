"""The local engine: every replica is a process tree on this machine.

Each replica runs under a small supervisor (``_supervise.py``) in a session of its
own. The supervisor writes the child's exit code to a file, so ``observe`` works from
the persisted handle alone, also in a control plane restarted while replicas ran or
finished. Every process of a launch carries ``TIDEMILL_REPLICA_UID`` in its
environment, derived from the launch's ``launch_id``; ``stop`` and ``kill`` use it to
find processes that left the process tree (``setsid``, double fork) as well as the tree
itself, and ``adopt`` to find a supervisor that had no time to record itself.

``adopt`` finds an earlier launch by its files alone: their names come from the job's
uid and the ``launch_id``, and the supervisor's first act, before it starts anything, is
to write its pid there. No supervisor file and no process carrying the launch's uid
means nothing ran (a warm-start supervisor that never got the engine's go-ahead exits
having run nothing), so a relaunch cannot make a second copy.

Replicas inherit only the server variables listed in
:mod:`tidemill.engines.inherited_env`, cold and warm alike.

Python replicas (``python SCRIPT`` or ``python -m MODULE``) are forked from a warm
fork server instead, when they can be (see :mod:`tidemill.engines.warm_start`): same
supervision, same files, same handle, plus ``warm_start: true``; the log header says
which way each attempt started, and why a Python one started cold.

The files under ``state_dir`` are listed in :mod:`tidemill.engines.local_files`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from tidemill.engines._supervise import (
    CONTROL_PLANE_ENDED,
    CPUS_VAR,
    TETHER_VAR,
    UID_VAR,
    write_atomic,
)
from tidemill.engines.base import Engine, LaunchPlan, LaunchSpec, Observation, ReplicaHandle
from tidemill.engines.inherited_env import inherited_env
from tidemill.engines.local_files import (
    LaunchFiles,
    launch_files,
    read_exit,
    read_supervisor,
    replica_sibling,
)
from tidemill.engines.nvml import Nvml
from tidemill.engines.replica_exec import (
    LocalCommand,
    ReplicaCommand,
    read_launch_env,
    write_launch_env,
)
from tidemill.engines.stacks import StackDump, dump_process
from tidemill.engines.usage import CpuMeter, ProcessTable, ReplicaUsage, Watched
from tidemill.engines.warm_start import (
    DEFAULT_PRELOAD,
    ForkRequest,
    ForkServer,
    WarmStartUnavailable,
    python_entry,
    warm_start_enabled,
)
from tidemill.stack_signal import STACK_DUMP_TO, STACK_DUMP_VAR

SUPERVISOR = str(Path(__file__).with_name("_supervise.py"))
PYTHON_NAMES = ("python", "python3")
"""``argv[0]`` values that mean "the interpreter tidemill runs in"."""
CREATE_TIME_SLACK_S = 1.0
"""psutil derives start times from the boot time, which /proc gives in whole seconds."""
POLL_S = 0.02
KILL_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"
"""Where replicas of the local engine reach each other: every node is this machine."""
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
        if handle.engine != LocalEngine.name:
            raise ValueError(
                f"handle belongs to engine {handle.engine!r}, not {LocalEngine.name!r}: "
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
        return ReplicaHandle(engine=LocalEngine.name, data=asdict(self))


class LocalEngine:
    """Runs replicas as local processes; state (logs, exit codes) lives in ``state_dir``.

    ``warm_start`` (off also when ``TIDEMILL_WARM_START=0``) forks Python replicas from
    a server that imported ``preload`` once; ``close`` stops that server.

    Replicas outlive the engine, so that a restarted control plane adopts them, unless
    ``tethered``: then they are stopped when this engine closes or its process ends,
    however it ends (``kill -9`` included), for a control plane that no later one can
    take over (``tidemill run``'s). See :mod:`tidemill.engines._supervise`.
    """

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        warm_start: bool = True,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        tethered: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self._tether: tuple[int, int] | None = os.pipe() if tethered else None
        """(read end, write end): the read end goes to every supervisor; only this
        process holds the write end (not inherited), so it closes when this one ends"""
        self._cpu = CpuMeter()
        self._nvml = Nvml()
        self._usage_lock = threading.Lock()
        """/metrics scrapes may overlap; the CPU meter keeps the last sample per replica."""
        self.fork_server: ForkServer | None = None
        if warm_start_enabled(warm_start):
            tether = None if self._tether is None else self._tether[0]
            self.fork_server = ForkServer(self.state_dir / "warm", preload, tether)

    def dry_run(self, spec: LaunchSpec) -> LaunchPlan:
        """The argv, environment and folder of the replica process ``launch`` would start.

        The environment is the server's variables listed in
        :mod:`~tidemill.engines.inherited_env`, then ``CUDA_VISIBLE_DEVICES`` from
        ``spec.gpu_ids`` (empty: no GPU) with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (so CUDA
        numbers devices as nvidia-smi, NVML and a NUMA layout do), ``TIDEMILL_CPUS``
        from ``spec.cpu_ids`` (the supervisor pins the replica to them with
        ``os.sched_setaffinity``; absent: not pinned), then ``spec.env``, then
        ``TIDEMILL_STACK_DUMP`` (see :mod:`tidemill.stack_signal`). ``launch`` adds only
        ``TIDEMILL_REPLICA_UID``, unique per launch.
        """
        argv = list(spec.argv)
        if not argv:
            raise ValueError(f"{spec.job} {spec.role}-{spec.index}: empty command")
        if argv[0] in PYTHON_NAMES:
            argv[0] = sys.executable
        env = {
            **inherited_env(os.environ),
            "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in spec.gpu_ids),
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            **({CPUS_VAR: ",".join(str(cpu) for cpu in spec.cpu_ids)} if spec.cpu_ids else {}),
            **spec.env,
            STACK_DUMP_VAR: STACK_DUMP_TO,
        }
        return LaunchPlan(argv=tuple(argv), env=env, working_dir=spec.working_dir or os.getcwd())

    def launch(self, spec: LaunchSpec) -> ReplicaHandle:
        """Start the replica; a ``launch_id`` that already started one is refused."""
        plan = self.dry_run(spec)
        files = self.files(spec)
        if Path(files.supervisor_file).exists():
            raise ValueError(
                f"{spec.job} {spec.role}-{spec.index}: launch {spec.launch_id!r} already "
                "started a replica; adopt it instead of launching it again"
            )
        files.log_file.parent.mkdir(parents=True, exist_ok=True)
        Path(files.exit_file).parent.mkdir(parents=True, exist_ok=True)
        env = {**plan.env, UID_VAR: files.uid}
        write_launch_env(files.env_file, env, plan.working_dir)
        entry = python_entry(plan.argv)
        supervisor: tuple[int, float] | None = None
        note = ""
        if self.fork_server is not None and entry is not None:
            request = ForkRequest(
                plan.argv,
                entry,
                plan.working_dir,
                env,
                files.uid,
                files.supervisor_file,
                files.pid_file,
                files.exit_file,
                str(files.log_file),
            )
            try:
                supervisor = _fork(self.fork_server, request, _header(spec, plan, "warm start"))
            except WarmStartUnavailable as exc:
                note = f"cold start: {exc}"
        warm = supervisor is not None
        if supervisor is None:
            supervise = [
                sys.executable,
                "-I",
                SUPERVISOR,
                files.supervisor_file,
                files.pid_file,
                files.exit_file,
                plan.working_dir,
            ]
            header = _header(spec, plan, note)
            supervisor = _start(
                [*supervise, "--", *plan.argv], env, files.log_file, header, self._tether
            )
        pid, created = supervisor
        return _replica(files, pid, created, warm).to_handle()

    def adopt(self, spec: LaunchSpec) -> ReplicaHandle | None:
        """The replica ``launch`` started for ``spec.launch_id``, from its files (or, in
        the moment before its supervisor wrote them, its processes); None if none ran.

        A live supervisor gives the very handle ``launch`` returned; one that ended gives
        a handle that observes its exit code (or its loss) and stops what it left. When
        the launch left no file, this reads the environment of every process here.
        """
        files = self.files(spec)
        found = _supervisor_record(files)
        if found is None:
            found = _find_supervisor(files.uid)
        if found is None:
            return None
        pid, created, warm = found
        return _replica(files, pid, created, warm).to_handle()

    def files(self, spec: LaunchSpec) -> LaunchFiles:
        """Where the launch ``spec.launch_id`` keeps its files, and its processes' uid."""
        return launch_files(self.state_dir, spec)

    def replica_host(self, job: str, role: str, index: int, node: str) -> str:
        """Every node of the local engine is this machine."""
        return LOOPBACK

    def free_port(self, node: str) -> int:
        return free_port(LOOPBACK)

    def close(self) -> None:
        """Stop the warm-start fork server, if one runs; replicas keep running unless
        tethered (then each is stopped by its supervisor)."""
        if self.fork_server is not None:
            self.fork_server.close()
        if self._tether is not None:
            tether, self._tether = self._tether, None
            for fd in tether:
                os.close(fd)

    def observe(self, handle: ReplicaHandle) -> Observation:
        replica = LocalReplica.from_handle(handle)
        _reap(replica.supervisor_pid)
        ended = read_exit(replica.exit_file)
        if ended is None and _supervisor(replica) is not None:
            return Observation(running=True, pid=_child_pid(replica))
        ended = ended or read_exit(replica.exit_file)
        if ended is not None:
            message = ended.reason or f"exited with code {ended.code}"
            return Observation(
                False,
                ended.code,
                _child_pid(replica),
                message,
                control_plane_ended=ended.reason.endswith(CONTROL_PLANE_ENDED),
            )
        orphan = _orphaned_child(replica)
        if orphan is not None:
            return Observation(
                running=True,
                pid=orphan.pid,
                message="the replica's supervisor is gone; its exit code will not be known",
            )
        return Observation(
            running=False,
            message=(
                f"replica process vanished: supervisor pid {replica.supervisor_pid} ended "
                f"without writing an exit code to {replica.exit_file}"
            ),
        )

    def terminate(self, handle: ReplicaHandle) -> None:
        """SIGTERM to the supervisor, which forwards it to the command; returns at once."""
        supervisor = _supervisor(LocalReplica.from_handle(handle))
        if supervisor is not None:
            _signal_all([supervisor], signal.SIGTERM)

    def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL every process of the replica (found as ``stop`` finds them) and return.

        The supervisor goes first, so it records nothing after its command dies; its exit
        file then says the replica was killed. A command the supervisor started after the
        processes were listed (the kill came as it was starting it) carries the replica's
        uid: once the supervisor is gone nothing new can start, so a second listing finds
        it (a job deleted right after its launch once left its master running).
        """
        replica = LocalReplica.from_handle(handle)
        supervisor = _supervisor(replica)
        procs = _replica_processes(replica, supervisor)
        procs.sort(key=lambda proc: proc.pid != replica.supervisor_pid)
        _signal_all(procs, signal.SIGKILL)
        if supervisor is not None:
            _wait_gone(replica, [supervisor], time.monotonic() + 1.0)
            _signal_all(_replica_processes(replica, supervisor), signal.SIGKILL)
            if read_exit(replica.exit_file) is None:
                write_atomic(replica.exit_file, f"{128 + signal.SIGKILL}\nkilled by tidemill\n")

    def stop(self, handle: ReplicaHandle, grace_s: float = 5.0) -> None:
        """SIGTERM every process of the replica, SIGKILL what is left after ``grace_s``.

        The supervisor forwards SIGTERM to its child, so the child is not signalled
        twice; everything else (grandchildren, escaped daemons) is signalled directly.
        """
        replica = LocalReplica.from_handle(handle)
        supervisor = _supervisor(replica)
        procs = _replica_processes(replica, supervisor)
        forwarded = set()
        if supervisor is not None:
            forwarded = {p.pid for p in _safe_children(supervisor, recursive=False)}
        _signal_all([p for p in procs if p.pid not in forwarded], signal.SIGTERM)
        _wait_gone(replica, procs, time.monotonic() + grace_s)
        killed_supervisor = False
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while True:
            fresh = _replica_processes(replica, _supervisor(replica))
            left = list({p.pid: p for p in [*procs, *fresh] if _alive(p)}.values())
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not stop replica {replica.log_file}: pids "
                    f"{sorted(p.pid for p in left)} survived SIGKILL for {KILL_TIMEOUT_S:g}s"
                )
            killed_supervisor |= any(p.pid == replica.supervisor_pid for p in left)
            _signal_all(left, signal.SIGKILL)
            _wait_gone(replica, left, time.monotonic() + 1.0)
        if killed_supervisor and read_exit(replica.exit_file) is None:
            write_atomic(replica.exit_file, f"{128 + signal.SIGKILL}\nkilled by tidemill stop\n")

    def log_path(self, handle: ReplicaHandle) -> str | None:
        return LocalReplica.from_handle(handle).log_file

    def usage(self, replicas: Mapping[str, Watched]) -> dict[str, ReplicaUsage]:
        """What each running replica's command and its children use (not its supervisor,
        a small process that only waits); GPUs through NVML where there is one."""
        found: dict[str, ReplicaUsage] = {}
        with self._usage_lock:
            table = ProcessTable()
            for key, watched in replicas.items():
                replica = LocalReplica.from_handle(watched.handle)
                running = _supervisor_in(table, replica)
                tree = table.descendants(replica.supervisor_pid) if running else []
                sample = self._cpu.sample(key, tree)
                if sample is None:
                    continue
                pids = {process.pid for process in tree}
                gpus = self._nvml.devices(watched.gpu_ids, pids) if watched.gpu_ids else ()
                found[key] = replace(sample, gpus=gpus)
            self._cpu.prune()
        return found

    def stacks(self, handle: ReplicaHandle) -> StackDump:
        """Every thread's Python stack of the replica's command (see
        :mod:`tidemill.engines.stacks`)."""
        replica = LocalReplica.from_handle(handle)
        pid = _child_pid(replica)
        if pid is None:
            return StackDump(problem="no stacks: the replica's command has not started")
        return dump_process(pid, replica.log_file)

    def exec_command(self, handle: ReplicaHandle, argv: list[str]) -> ReplicaCommand:
        """Start ``argv`` with the environment and in the folder the replica started
        with; ``FileNotFoundError`` if the command or the record is missing."""
        replica = LocalReplica.from_handle(handle)
        env, working_dir = read_launch_env(replica_sibling(replica.pid_file, "env"))
        return LocalCommand(argv, env, working_dir)


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now on ``host`` (its user binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _replica(files: LaunchFiles, pid: int, created: float, warm: bool) -> LocalReplica:
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


def _supervisor_record(files: LaunchFiles) -> tuple[int, float, bool] | None:
    """Pid, start time (:data:`ENDED` once it ended) and warm start of the supervisor
    that wrote ``files.supervisor_file``; None before it wrote it."""
    record = read_supervisor(files.supervisor_file)
    if record is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        created = proc.create_time() if _carries_uid(proc, files.uid) else ENDED
    except psutil.Error:
        created = ENDED
    return record.pid, created, record.warm_start


def _find_supervisor(uid: str) -> tuple[int, float, bool] | None:
    """The running supervisor of the launch with ``uid``, before it recorded itself: the
    first session leader carrying the uid."""
    leaders: list[tuple[float, int, bool]] = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid() or not _carries_uid(proc, uid):
            continue
        try:
            if os.getsid(proc.pid) == proc.pid and _alive(proc):
                leaders.append((proc.create_time(), proc.pid, SUPERVISOR not in proc.cmdline()))
        except (OSError, psutil.Error):
            continue
    if not leaders:
        return None
    created, pid, warm = min(leaders)
    return pid, created, warm


def _start(
    argv: list[str],
    env: dict[str, str],
    log_file: Path,
    header: str,
    tether: tuple[int, int] | None,
) -> tuple[int, float]:
    """Start a supervisor in a new interpreter (holding the ``tether``'s read end, if
    one); its pid and start time."""
    pass_fds: tuple[int, ...] = ()
    if tether is not None:
        env = {**env, TETHER_VAR: str(tether[0])}
        pass_fds = (tether[0],)
    with open(log_file, "ab") as log:
        log.write(header.encode())
        log.flush()
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    with _children_lock:
        _children[popen.pid] = popen
    return popen.pid, psutil.Process(popen.pid).create_time()


RECORD_WAIT_S = 2.0
"""How long a warm launch waits for its supervisor to record itself (it takes ms)."""


def _fork(server: ForkServer, request: ForkRequest, header: str) -> tuple[int, float]:
    """Have the fork server fork a supervisor; its pid and start time."""
    with server.fork(request) as forked:
        try:
            created = psutil.Process(forked.pid).create_time()
        except psutil.Error as exc:
            raise WarmStartUnavailable(f"the forked supervisor vanished: {exc}") from None
        with open(request.log_file, "ab") as log:
            log.write(header.encode())
        forked.release()
    # Return once the supervisor has recorded itself, so that a control plane dying
    # right after this launch is found by ``adopt`` when it comes back, however soon.
    deadline = time.monotonic() + RECORD_WAIT_S
    while not os.path.exists(request.supervisor_file) and time.monotonic() < deadline:
        time.sleep(0.002)
    return forked.pid, created


def _header(spec: LaunchSpec, plan: LaunchPlan, note: str = "") -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    shown = f" [{note}]" if note else ""
    return (
        f"===== tidemill: {spec.job} {spec.role}-{spec.index} attempt {spec.attempt} "
        f"started {now} in {plan.working_dir}: {' '.join(plan.argv)}{shown} =====\n"
    )


def _reap(pid: int) -> None:
    with _children_lock:
        popen = _children.get(pid)
        if popen is not None and popen.poll() is not None:
            del _children[pid]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _supervisor(replica: LocalReplica) -> psutil.Process | None:
    """The supervisor if it still runs (and its pid was not reused since launch)."""
    try:
        proc = psutil.Process(replica.supervisor_pid)
        same = abs(proc.create_time() - replica.supervisor_create_time) < CREATE_TIME_SLACK_S
    except psutil.Error:
        return None
    return proc if same and _alive(proc) else None


def _supervisor_in(table: ProcessTable, replica: LocalReplica) -> bool:
    """Whether ``table`` shows the supervisor running (and its pid not reused)."""
    supervisor = table.process(replica.supervisor_pid)
    return (
        supervisor is not None
        and not supervisor.zombie
        and abs(supervisor.created - replica.supervisor_create_time) < CREATE_TIME_SLACK_S
    )


def _child_pid(replica: LocalReplica) -> int | None:
    try:
        return int(Path(replica.pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def _carries_uid(proc: psutil.Process, uid: str) -> bool:
    try:
        return proc.environ().get(UID_VAR) == uid
    except psutil.Error:
        return False


def _orphaned_child(replica: LocalReplica) -> psutil.Process | None:
    """The replica's command, still running after its supervisor died."""
    pid = _child_pid(replica)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return proc if _alive(proc) and _carries_uid(proc, replica.uid) else None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _safe_children(proc: psutil.Process, recursive: bool) -> list[psutil.Process]:
    try:
        return proc.children(recursive=recursive)
    except psutil.Error:
        return []


def _replica_processes(
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
        if in_group or _carries_uid(proc, replica.uid):
            roots.append(proc)
    for root in roots:
        for proc in [root, *_safe_children(root, recursive=True)]:
            found.setdefault(proc.pid, proc)
    return [p for p in found.values() if _alive(p)]


def _signal_all(procs: list[psutil.Process], signum: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            continue


def _wait_gone(replica: LocalReplica, procs: list[psutil.Process], deadline: float) -> None:
    while True:
        _reap(replica.supervisor_pid)
        if not any(_alive(p) for p in procs) or time.monotonic() >= deadline:
            return
        time.sleep(POLL_S)


if TYPE_CHECKING:
    _conforms: type[Engine] = LocalEngine  # the registry creates it by name, unchecked
