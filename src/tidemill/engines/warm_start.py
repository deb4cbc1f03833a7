"""Warm start: Python replicas forked from a server that has already imported torch.

Scaling out means starting new worker processes, and ``import torch`` alone takes
seconds, so the time from "add two workers" to the first step at the new size is mostly
interpreter start-up. The local engine therefore keeps one *fork server* per engine
(``_fork_server.py``, started by the first Python launch): it imports
:data:`DEFAULT_PRELOAD` once, then forks replicas whose command is ``python SCRIPT ...``
or ``python -m MODULE ...`` in milliseconds. Launches never wait for it: until it
serves, and for every other command or a replica whose start-up environment differs
from the server's, replicas start cold as before.

What a forked replica shares with its server, and how that is kept honest:

- variables read while the interpreter and the preloaded libraries start
  (:func:`is_startup_var`: ``PYTHON*``, thread-pool sizes such as ``OMP_NUM_THREADS``,
  ``TORCH_*``, the locale, ``LD_*``) must be equal, else the replica starts cold
  (:func:`startup_conflict`). The server takes them from the first replica it serves;
- modules, and their state after import; random generators are re-seeded in every
  replica (``random``, ``numpy``, ``torch``), so replicas never draw the same numbers;
- the string-hash seed (unless ``PYTHONHASHSEED`` fixes it): one per fork server
  rather than one per process;
- ``/proc/PID/cmdline`` and the inherited part of ``/proc/PID/environ`` show the
  server's. The replica's own ``os.environ`` is its full environment, and its
  ``TIDEMILL_REPLICA_UID`` is written into the inherited block, so ``stop`` finds
  warm replicas exactly as it finds cold ones.

The server is tied to the engine by a pipe: it exits when the engine is closed or
garbage-collected, or when the control plane dies. Replicas it forked run on (they
are in sessions of their own) and stay observable from their handles, like cold ones.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from tidemill.engines._supervise import TETHER_VAR, UID_VAR
from tidemill.engines.inherited_env import inherited_env

log = logging.getLogger(__name__)

WARM_START_VAR = "TIDEMILL_WARM_START"
"""Set to ``0`` (or ``false``/``no``/``off``) to start every replica cold."""
DEFAULT_PRELOAD = (
    "torch",
    "torch._dynamo",  # the first torch.optim optimizer imports it: ~2 s cold
    "numpy",
    "tidemill.runtime",
    "tidemill.runtime._preload",  # loads the state copy's compiled kernel: 0.4 s a process
    "tidemill.runtime.elastic_loop",
    "tidemill.wire",
)
"""Imported by the fork server before it forks anything; missing ones are skipped."""
SERVER_SCRIPT = str(Path(__file__).with_name("_fork_server.py"))
UID_PLACEHOLDER = "0" * 32
"""The fork server's ``TIDEMILL_REPLICA_UID``: no replica's (a uuid4 hex has a 4 in it),
and as long as one, so a forked replica can overwrite it in place."""
STARTUP_VAR_PREFIXES = (
    "PYTHON",
    "TORCH_",
    "PYTORCH_",
    "OMP_",
    "KMP_",
    "GOMP_",
    "MKL_",
    "OPENBLAS_",
)
STARTUP_VARS = frozenset({"LD_PRELOAD", "LD_LIBRARY_PATH", "LANG", "LC_ALL", "LC_CTYPE"})
REPLY_TIMEOUT_S = 10.0
POLL_S = 0.01
CLOSE_TIMEOUT_S = 5.0


def warm_start_enabled(requested: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an engine built with ``warm_start=requested`` forks its Python replicas.

    >>> warm_start_enabled(True, {"TIDEMILL_WARM_START": "0"})
    False
    """
    setting = environ.get(WARM_START_VAR, "1").strip().lower()
    return requested and setting not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class PythonEntry:
    """What a ``python SCRIPT ARGS...`` or ``python -m MODULE ARGS...`` command runs."""

    kind: Literal["script", "module"]
    target: str
    """the script's path as given, or the module's dotted name"""
    args: tuple[str, ...]

    def sys_argv(self) -> list[str]:
        """``sys.argv`` as the interpreter sets it before running the entry (``-m`` then
        replaces ``argv[0]`` with the module's file, as ``runpy`` does)."""
        return [self.target if self.kind == "script" else "-m", *self.args]


def python_entry(argv: Sequence[str], executable: str = sys.executable) -> PythonEntry | None:
    """The script or module that ``argv`` runs, if the fork server can run it.

    Only this interpreter, without options: ``-c``, ``-u``, ``-I`` and friends, a script
    read from stdin, or another Python start cold.

    >>> python_entry([sys.executable, "-m", "tidemill.master", "--port", "1"])
    PythonEntry(kind='module', target='tidemill.master', args=('--port', '1'))
    >>> python_entry([sys.executable, "-c", "print(1)"]) is None
    True
    """
    if len(argv) < 2 or argv[0] != executable:
        return None
    first, rest = argv[1], tuple(argv[2:])
    if first == "-m" and rest:
        return PythonEntry("module", rest[0], rest[1:])
    if first.startswith("-m") and len(first) > 2:
        return PythonEntry("module", first[2:], rest)
    if first.startswith("-"):
        return None
    return PythonEntry("script", first, rest)


def is_startup_var(name: str) -> bool:
    """Read while the interpreter or a preloaded library starts, so fixed by the fork."""
    return name in STARTUP_VARS or name.startswith(STARTUP_VAR_PREFIXES)


def startup_env(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if is_startup_var(name)}


def startup_conflict(env: Mapping[str, str], server_env: Mapping[str, str]) -> str | None:
    """Why a replica with ``env`` cannot be forked from a server started with
    ``server_env``, or None if it can.

    >>> startup_conflict({"OMP_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "8"})
    "OMP_NUM_THREADS is '4' for this replica but '8' in the fork server"
    """
    wanted, have = startup_env(env), startup_env(server_env)
    differ = sorted(k for k in wanted.keys() | have.keys() if wanted.get(k) != have.get(k))
    if differ:
        return "; ".join(
            f"{name} is {_shown(wanted.get(name))} for this replica but "
            f"{_shown(have.get(name))} in the fork server"
            for name in differ
        )
    python_path = wanted.get("PYTHONPATH", "")
    relative = [p for p in python_path.split(os.pathsep) if python_path and not os.path.isabs(p)]
    if relative:
        return (
            f"PYTHONPATH has relative entries {relative}, which the interpreter resolves "
            "against the folder it starts in; use absolute paths to allow warm start"
        )
    return None


def _shown(value: str | None) -> str:
    return "unset" if value is None else repr(value)


@dataclass(frozen=True)
class ForkRequest:
    """One replica for the fork server: what to run, where, and where to record it."""

    argv: tuple[str, ...]
    """the whole command, interpreter first (the replica's ``sys.orig_argv``)"""
    entry: PythonEntry
    working_dir: str
    env: dict[str, str]
    """the replica's complete environment, ``TIDEMILL_REPLICA_UID`` included"""
    uid: str
    supervisor_file: str
    pid_file: str
    exit_file: str
    log_file: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ForkRequest:
        data = json.loads(text)
        entry = data.pop("entry")
        return cls(
            **{**data, "argv": tuple(data["argv"])},
            entry=PythonEntry(entry["kind"], entry["target"], tuple(entry["args"])),
        )


class WarmStartUnavailable(Exception):
    """This replica cannot be forked; the message says why, and it starts cold."""


class ForkedSupervisor:
    """A supervisor the fork server just forked, in its own session, waiting for ``release``.

    Until released it runs nothing; closed without a release it exits. So the caller can
    record the pid first and never leaves a replica behind that it does not know of.
    """

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self._conn = conn

    def release(self) -> None:
        """Let the supervisor start the replica's command."""
        try:
            self._conn.sendall(b"go\n")
        except OSError as exc:
            raise WarmStartUnavailable(f"the forked supervisor went away: {exc}") from None
        finally:
            self._conn.close()

    def __enter__(self) -> ForkedSupervisor:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._conn.close()


class ForkServer:
    """The engine's side of one fork server: started on first use, restarted if it dies.

    Thread-safe: launches from several threads share the server.
    """

    def __init__(
        self, folder: Path, preload: Sequence[str] = DEFAULT_PRELOAD, tether: int | None = None
    ) -> None:
        self.folder = Path(folder)
        self.preload = tuple(preload)
        self.tether = tether
        """the read end the supervisors it forks hold (see :mod:`~tidemill.engines._supervise`)"""
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: weakref.finalize[[int], ForkServer] | None = None
        """closes our end of the server's stdin pipe: on ``close``, or when this object is
        collected (a ``Popen`` still running keeps itself, and its pipes, alive)"""
        self._env: dict[str, str] = {}
        self._socket = Path()
        self._log = Path()
        self._ready = False
        self._broken: str | None = None
        """why warm start is off for good: the server refused or failed to start"""

    @property
    def pid(self) -> int | None:
        """The running server's pid (None before the first Python launch)."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def fork(self, request: ForkRequest) -> ForkedSupervisor:
        """Fork a supervisor for ``request``; raises :class:`WarmStartUnavailable`."""
        with self._lock:
            self._start_if_needed(request.env)
            conflict = startup_conflict(request.env, self._env)
            if conflict is not None:
                raise WarmStartUnavailable(conflict)
            if not self._serving():
                raise WarmStartUnavailable(
                    "the fork server is still importing its modules; later replicas fork"
                )
            path = self._socket
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(REPLY_TIMEOUT_S)
        try:
            connect(conn, path)
            conn.sendall(request.to_json().encode() + b"\n")
            reply = json.loads(read_line(conn))
            if "error" in reply:
                raise WarmStartUnavailable(f"the fork server refused: {reply['error']}")
            return ForkedSupervisor(int(reply["supervisor_pid"]), conn)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            conn.close()
            raise WarmStartUnavailable(f"no answer from the fork server at {path}: {exc}") from None
        except WarmStartUnavailable:
            conn.close()
            raise

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the server (started by the first Python launch) serves.

        Launches never wait: until then they start cold. Raises
        :class:`WarmStartUnavailable` if it cannot serve, or not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._broken is not None:
                    raise WarmStartUnavailable(self._broken)
                if self._proc is None:
                    raise WarmStartUnavailable(
                        "no fork server runs: the first Python launch starts it"
                    )
                if self._serving():
                    return
            if time.monotonic() > deadline:
                raise WarmStartUnavailable(
                    f"the fork server is not ready after {timeout_s:g}s; see {self._log}"
                )
            time.sleep(POLL_S)

    def close(self) -> None:
        """Stop the server (replicas it forked keep running)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._lifeline is not None:
            self._lifeline()
        try:
            proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _start_if_needed(self, replica_env: Mapping[str, str]) -> None:
        if self._broken is not None:
            raise WarmStartUnavailable(self._broken)
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None and not self._ready:
            raise self._give_up(f"the fork server exited while starting: {_last_line(self._log)}")
        try:
            self._start(replica_env)
        except OSError as exc:
            raise self._give_up(f"cannot start the fork server: {exc}") from None

    def _start(self, replica_env: Mapping[str, str]) -> None:
        self._ready = False
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = uuid.uuid4().hex[:12]
        self._socket = self.folder / f"{name}.sock"
        self._log = self.folder / f"fork-server-{name}.log"
        self._env = {
            **{k: v for k, v in inherited_env(os.environ).items() if not is_startup_var(k)},
            **startup_env(replica_env),
            UID_VAR: UID_PLACEHOLDER,
            **({TETHER_VAR: str(self.tether)} if self.tether is not None else {}),
        }
        # Preloading torch._dynamo makes inductor create its cache folder at import time;
        # keep it with the engine's state instead of in the system's temporary folder.
        self._env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.folder / "torchinductor"))
        if self._lifeline is not None:
            self._lifeline()
        server_end, our_end = os.pipe()
        self._lifeline = weakref.finalize(self, os.close, our_end)
        try:
            with open(self._log, "ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, SERVER_SCRIPT, self._socket.name, *self.preload],
                    stdin=server_end,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self.folder,
                    start_new_session=True,
                    pass_fds=() if self.tether is None else (self.tether,),
                )
        finally:
            os.close(server_end)

    def _serving(self) -> bool:
        """Whether the started server accepts requests (its socket appears only then)."""
        if self._ready:
            return True
        if self._socket.exists():
            self._ready = True
        elif self._proc is not None and self._proc.poll() is not None:
            raise self._give_up(f"the fork server exited while starting: {_last_line(self._log)}")
        return self._ready

    def _give_up(self, reason: str) -> WarmStartUnavailable:
        """Turn warm start off for this engine: every replica starts cold from now on."""
        self._broken = reason
        log.warning("warm start is off, Python replicas start cold: %s", reason)
        return WarmStartUnavailable(reason)


def read_line(conn: socket.socket, limit: int = 1 << 24) -> str:
    """One newline-terminated message (without the newline); '' if the peer closed."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks).decode()
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks).decode()
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"message longer than {limit} bytes without a newline")


def connect(conn: socket.socket, path: Path) -> None:
    """Connect to the Unix socket at ``path``, however deep its folder: ``sun_path``
    holds 108 bytes, so the folder is reached through a file descriptor."""
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        conn.connect(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return lines[-1] if lines else f"(nothing in {path})"
