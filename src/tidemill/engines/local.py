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

The files under ``state_dir`` are listed in :mod:`tidemill.engines.local_files`; how a
replica's processes are found and signalled, in :mod:`tidemill.engines.local_processes`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
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
    job_folders,
    launch_files,
    read_exit,
    replica_sibling,
)
from tidemill.engines.local_processes import (
    ENGINE_NAME,
    SUPERVISOR,
    LocalReplica,
    alive,
    child_pid,
    find_supervisor,
    local_replica,
    orphaned_child,
    reap,
    replica_processes,
    running_supervisor,
    safe_children,
    signal_all,
    supervisor_in,
    supervisor_record,
    track,
    wait_gone,
)
from tidemill.engines.log_trim import LOG_KEPT_BYTES, LOG_MAX_BYTES, trim_log
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

PYTHON_NAMES = ("python", "python3")
"""``argv[0]`` values that mean "the interpreter tidemill runs in"."""
KILL_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"
"""Where replicas of the local engine reach each other: every node is this machine."""


class LocalEngine:
    """Runs replicas as local processes; state (logs, exit codes) lives in ``state_dir``.

    ``warm_start`` (off also when ``TIDEMILL_WARM_START=0``) forks Python replicas from
    a server that imported ``preload`` once; ``close`` stops that server.

    Replicas outlive the engine, so that a restarted control plane adopts them, unless
    ``tethered``: then they are stopped when this engine closes or its process ends,
    however it ends (``kill -9`` included), for a control plane that no later one can
    take over (``tidemill run``'s). See :mod:`tidemill.engines._supervise`.

    A job gone from the store takes its files with it (:meth:`forget`) unless
    ``keep_files``: ``tidemill run`` keeps them, its state folder being the user's.
    """

    name = ENGINE_NAME

    def __init__(
        self,
        state_dir: Path,
        warm_start: bool = True,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        tethered: bool = False,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_kept_bytes: int = LOG_KEPT_BYTES,
        keep_files: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.keep_files = keep_files
        self.log_max_bytes, self.log_kept_bytes = log_max_bytes, log_kept_bytes
        """A running replica's log is trimmed past this size (see ``log_trim``)."""
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
        return local_replica(files, pid, created, warm).to_handle()

    def adopt(self, spec: LaunchSpec) -> ReplicaHandle | None:
        """The replica ``launch`` started for ``spec.launch_id``, from its files (or, in
        the moment before its supervisor wrote them, its processes); None if none ran.

        A live supervisor gives the very handle ``launch`` returned; one that ended gives
        a handle that observes its exit code (or its loss) and stops what it left. When
        the launch left no file, this reads the environment of every process here.
        """
        files = self.files(spec)
        found = supervisor_record(files)
        if found is None:
            found = find_supervisor(files.uid)
        if found is None:
            return None
        pid, created, warm = found
        return local_replica(files, pid, created, warm).to_handle()

    def files(self, spec: LaunchSpec) -> LaunchFiles:
        """Where the launch ``spec.launch_id`` keeps its files, and its processes' uid."""
        return launch_files(self.state_dir, spec)

    def replica_host(self, job: str, role: str, index: int, node: str) -> str:
        """Every node of the local engine is this machine."""
        return LOOPBACK

    def free_port(self, node: str) -> int:
        return free_port(LOOPBACK)

    def forget(self, job: str, job_uid: str) -> None:
        """Remove the job's log and replica folders (and the name's and namespace's
        folders, when that leaves them empty): a loop of short jobs left five files a
        replica behind, without end."""
        if self.keep_files:
            return
        for folder in job_folders(self.state_dir, job, job_uid):
            shutil.rmtree(folder, ignore_errors=True)
            for parent in (folder.parent, folder.parent.parent):
                with contextlib.suppress(OSError):
                    parent.rmdir()  # only when empty

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
        reap(replica.supervisor_pid)
        ended = read_exit(replica.exit_file)
        if ended is None and running_supervisor(replica) is not None:
            trim_log(Path(replica.log_file), self.log_max_bytes, self.log_kept_bytes)
            return Observation(running=True, pid=child_pid(replica))
        ended = ended or read_exit(replica.exit_file)
        if ended is not None:
            message = ended.reason or f"exited with code {ended.code}"
            return Observation(
                False,
                ended.code,
                child_pid(replica),
                message,
                control_plane_ended=ended.reason.endswith(CONTROL_PLANE_ENDED),
            )
        orphan = orphaned_child(replica)
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
        supervisor = running_supervisor(LocalReplica.from_handle(handle))
        if supervisor is not None:
            signal_all([supervisor], signal.SIGTERM)

    def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL every process of the replica (found as ``stop`` finds them) and return.

        The supervisor goes first, so it records nothing after its command dies; its exit
        file then says the replica was killed. A command the supervisor started after the
        processes were listed (the kill came as it was starting it) carries the replica's
        uid: once the supervisor is gone nothing new can start, so a second listing finds
        it (a job deleted right after its launch once left its master running).
        """
        replica = LocalReplica.from_handle(handle)
        supervisor = running_supervisor(replica)
        procs = replica_processes(replica, supervisor)
        procs.sort(key=lambda proc: proc.pid != replica.supervisor_pid)
        signal_all(procs, signal.SIGKILL)
        if supervisor is not None:
            wait_gone(replica, [supervisor], time.monotonic() + 1.0)
            signal_all(replica_processes(replica, supervisor), signal.SIGKILL)
            # FileNotFoundError: the job was forgotten meanwhile (a delete asked twice at
            # once), its folder removed; nothing is left to read the record
            if read_exit(replica.exit_file) is None:
                with contextlib.suppress(FileNotFoundError):
                    write_atomic(replica.exit_file, f"{128 + signal.SIGKILL}\nkilled by tidemill\n")

    def stop(self, handle: ReplicaHandle, grace_s: float = 5.0) -> None:
        """SIGTERM every process of the replica, SIGKILL what is left after ``grace_s``.

        The supervisor forwards SIGTERM to its child, so the child is not signalled
        twice; everything else (grandchildren, escaped daemons) is signalled directly.
        """
        replica = LocalReplica.from_handle(handle)
        supervisor = running_supervisor(replica)
        procs = replica_processes(replica, supervisor)
        forwarded = set()
        if supervisor is not None:
            forwarded = {p.pid for p in safe_children(supervisor, recursive=False)}
        signal_all([p for p in procs if p.pid not in forwarded], signal.SIGTERM)
        wait_gone(replica, procs, time.monotonic() + grace_s)
        killed_supervisor = False
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while True:
            fresh = replica_processes(replica, running_supervisor(replica))
            left = list({p.pid: p for p in [*procs, *fresh] if alive(p)}.values())
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not stop replica {replica.log_file}: pids "
                    f"{sorted(p.pid for p in left)} survived SIGKILL for {KILL_TIMEOUT_S:g}s"
                )
            killed_supervisor |= any(p.pid == replica.supervisor_pid for p in left)
            signal_all(left, signal.SIGKILL)
            wait_gone(replica, left, time.monotonic() + 1.0)
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
                running = supervisor_in(table, replica)
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
        pid = child_pid(replica)
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
    track(popen)
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


if TYPE_CHECKING:
    _conforms: type[Engine] = LocalEngine  # the registry creates it by name, unchecked
