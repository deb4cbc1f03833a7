"""The warm-start fork server: imports torch and friends once, then forks replicas.

Started by :class:`tidemill.engines.warm_start.ForkServer` by path, in the folder of
its socket (``sun_path`` holds 108 bytes, so the name is relative), with its lifeline
pipe as stdin and its log as stdout and stderr::

    python _fork_server.py SOCKET_NAME [MODULE...]

It imports the modules (failures are logged and skipped), refuses to serve if that
left more than one Python thread or an initialised CUDA context (``fork()`` copies a
thread's locks but not the thread), and listens on the Unix socket. It exits when the
lifeline closes, also while it imports (torch takes seconds); the replicas it forked
live on.

One connection per replica, one JSON line each way, then a go-ahead:

1. engine → server: a :class:`ForkRequest`. The server forks a **supervisor** and
   goes back to listening (it reaps its supervisors as they end).
2. supervisor → engine: ``{"supervisor_pid": N}``, once it leads a session of its
   own. Engine → supervisor: ``go``; without it the supervisor exits, having run
   nothing.
3. The supervisor takes the replica's environment, logs and folder, then does what
   ``_supervise.py`` does, with the same :class:`Supervisor`: pid and exit files,
   signals forwarded. Its child, the **command**, is forked rather than executed: it
   returns from :func:`serve` to this file's top level and runs the script or module
   as ``python SCRIPT`` / ``python -m MODULE`` would, uncaught exceptions and exit
   codes included, then ends like any interpreter (threads joined, ``atexit`` run).
   It first registers the stack dump of :mod:`tidemill.stack_signal`, so ``tidemill
   debug stacks`` can read a warm replica without py-spy.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import gc
import importlib
import io
import json
import os
import pkgutil
import random
import runpy
import select
import selectors
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader, SourcelessFileLoader
from pathlib import Path
from typing import TextIO

from tidemill.engines._supervise import FORWARDED, UID_VAR, Supervisor, take_tether
from tidemill.engines.warm_start import UID_PLACEHOLDER, ForkRequest, read_line
from tidemill.stack_signal import STACK_SIGNAL, install_from_env

EXIT_REFUSED = 3
"""The server's exit code when forking would be unsafe (the reason is its last log line)."""
EXIT_ABANDONED = 70
"""A supervisor's exit code when the engine never said ``go`` (nothing ran)."""
LIFELINE_FD = 0
REQUEST_TIMEOUT_S = 10.0
GO_TIMEOUT_S = 30.0
REAP_EVERY_S = 0.5
LIFELINE_POLL_S = 0.05
"""While importing, how often the server looks whether its engine is gone."""
UID_TAG = f"{UID_VAR}={UID_PLACEHOLDER}".encode()


@dataclass
class Job:
    """A request, in the supervisor the server just forked for it."""

    conn: socket.socket
    request: ForkRequest


def say(message: str) -> None:
    print(f"tidemill fork server {os.getpid()}: {message}", flush=True)


def serve(args: list[str]) -> Command:
    """Run the server; returns only in a forked replica, with the command it must run."""
    if not args:
        sys.exit(f"usage: {sys.argv[0]} SOCKET_NAME [MODULE...]")
    socket_name, *preload = args
    if not sys.flags.safe_path:
        del sys.path[0]  # this file's folder; every replica gets its own sys.path[0]
    base_path = tuple(sys.path)
    started = time.monotonic()
    with exit_if_lifeline_closes():
        loaded, failed = import_all(preload)
    hazard = fork_hazard()
    if hazard is not None:
        say(f"warm start off: {hazard}")
        sys.exit(EXIT_REFUSED)
    gc.freeze()  # keeps the collector from touching (and so copying) the server's pages
    listener = listen(socket_name)
    skipped = "".join(f"; could not import {name}: {why}" for name, why in failed.items())
    imported = ", ".join(loaded) or "nothing"
    say(f"ready; imported {imported} in {time.monotonic() - started:.2f}s{skipped}")
    try:
        job = accept_until_closed(listener)
    finally:
        listener.close()
    if job is None:
        Path(socket_name).unlink(missing_ok=True)
        sys.exit(0)
    return supervise(job, base_path)


@contextlib.contextmanager
def exit_if_lifeline_closes() -> Iterator[None]:
    """Exit at once if the engine goes while the block runs (the imports).

    A server whose engine is gone serves nobody; importing on, it would outlive the
    engine by seconds and write into a state folder already removed (torch creates its
    inductor cache there). The watching thread ends with the block, before the server
    checks that it has one thread and forks anything."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            readable, _, _ = select.select([LIFELINE_FD], [], [], LIFELINE_POLL_S)
            if readable and not os.read(LIFELINE_FD, 4096):
                say("the engine went while the modules were importing; exiting")
                os._exit(0)

    watcher = threading.Thread(target=watch, name="tidemill-lifeline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def import_all(names: list[str]) -> tuple[list[str], dict[str, str]]:
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed[name] = repr(exc)
        else:
            loaded.append(name)
    return loaded, failed


def fork_hazard() -> str | None:
    """Why forking this process would hand replicas a broken interpreter, if it would."""
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"the preloaded modules started Python threads {others}, which fork() drops"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "a preloaded module initialised CUDA, which does not survive fork()"
    try:
        environ_tag_offset()
    except (OSError, ValueError) as exc:
        return f"cannot label forked replicas with their {UID_VAR}: {exc}"
    return None


def listen(path: str) -> socket.socket:
    """Listen on ``path``, which appears only once it accepts (engines wait for it)."""
    staging = f"{path}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(staging)
    os.chmod(staging, 0o600)
    listener.listen(64)
    os.rename(staging, path)
    return listener


def accept_until_closed(listener: socket.socket) -> Job | None:
    """Serve requests until the lifeline closes (None); in a forked supervisor, its job."""
    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(LIFELINE_FD, selectors.EVENT_READ)
        while True:
            ready = selector.select(REAP_EVERY_S)
            reap()
            for key, _ in ready:
                if key.fileobj == LIFELINE_FD:
                    if not os.read(LIFELINE_FD, 4096):
                        return None
                    continue
                try:
                    conn, _ = listener.accept()
                except OSError as exc:
                    say(f"cannot accept a request: {exc}")
                    continue
                job = fork_supervisor(conn)
                if job is not None:
                    return job


def fork_supervisor(conn: socket.socket) -> Job | None:
    """Fork a supervisor for the request on ``conn``: its job in the child, else None."""
    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        check_peer(conn)
        request = ForkRequest.from_json(read_line(conn))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        refuse(conn, repr(exc))
        return None
    if pid == 0:
        return Job(conn, request)
    conn.close()
    return None


def check_peer(conn: socket.socket) -> None:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise PermissionError(f"uid {uid} may not start replicas as uid {os.getuid()}")


def refuse(conn: socket.socket, why: str) -> None:
    say(f"refused a request: {why}")
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"error": why}).encode() + b"\n")
    conn.close()


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervise(job: Job, base_path: tuple[str, ...]) -> Command:
    """The supervisor's life; it never returns, except in the command it forks."""
    os.setsid()
    request = job.request
    try:
        job.conn.sendall(json.dumps({"supervisor_pid": os.getpid()}).encode() + b"\n")
        job.conn.settimeout(GO_TIMEOUT_S)
        go = read_line(job.conn)
    except OSError:
        go = ""
    job.conn.close()
    if go != "go":
        os._exit(EXIT_ABANDONED)
    tether = take_tether(os.environ)
    os.environ.clear()
    os.environ.update(request.env)
    label_environ(request.uid)
    redirect_stdio(request.log_file)
    supervisor = Supervisor(
        request.supervisor_file,
        request.pid_file,
        request.exit_file,
        request.working_dir,
        list(request.argv),
        warm_start=True,
        tether=tether,
    )
    refused = supervisor.prepare()
    if refused is not None:
        os._exit(refused)
    try:
        os.chdir(request.working_dir)
    except OSError as exc:
        os._exit(supervisor.cannot_start_with(exc))
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        pid = os.fork()
    except OSError as exc:
        os._exit(supervisor.cannot_start_with(exc))
    if pid == 0:
        if tether is not None:
            os.close(tether)
        default_signals()
        return Command(request, base_path)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    os._exit(supervisor.supervise(ForkedChild(pid)))


class ForkedChild:
    """The command process, as :class:`Supervisor` expects its child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def environ_tag_offset() -> tuple[int, int]:
    """Address and length of this process's ``UID_VAR=placeholder`` in the environment
    block that ``/proc/PID/environ`` shows (the one it was started with)."""
    fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end: proc(5) fields 50, 51
    block = ctypes.string_at(start, end - start)
    if block.startswith(UID_TAG):
        at = 0
    elif (before := block.find(b"\0" + UID_TAG)) >= 0:
        at = before + 1
    else:
        raise ValueError(f"{UID_TAG.decode()!r} is not in this process's environment block")
    return start + at + len(UID_VAR) + 1, len(UID_PLACEHOLDER)


def label_environ(uid: str) -> None:
    """Write ``uid`` over the placeholder, so ``/proc/PID/environ`` of this process and
    its forks names the replica, as the engine's ``stop`` expects of every process."""
    address, size = environ_tag_offset()
    value = uid.encode()
    if len(value) != size:
        raise ValueError(f"{UID_VAR} must be {size} characters, got {uid!r}")
    ctypes.memmove(address, value, size)


def redirect_stdio(log_file: str) -> None:
    """stdin from /dev/null, stdout and stderr to the log, as the cold path sets them."""
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        stream = text_stream(fd, f"<{name}>", getattr(sys, name))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def text_stream(fd: int, name: str, like: TextIO) -> TextIO:
    """A fresh ``sys.std*`` on ``fd``, configured as the interpreter configured ``like``
    (with the same start-up variables, for a file or pipe, as the replica's are)."""
    writing = fd != 0
    raw = io.FileIO(fd, "wb" if writing else "rb", closefd=False)
    raw.name = name
    unbuffered = isinstance(like, io.TextIOWrapper) and like.write_through
    stream: io.TextIOWrapper
    if writing and unbuffered:
        stream = io.TextIOWrapper(raw, like.encoding, like.errors, "\n", write_through=True)
    else:
        buffer = io.BufferedWriter(raw) if writing else io.BufferedReader(raw)
        line_buffering = bool(like.line_buffering)
        stream = io.TextIOWrapper(
            buffer, like.encoding, like.errors, "\n", line_buffering, write_through=unbuffered
        )
    stream.mode = "w" if writing else "r"  # type: ignore[misc]  # as the interpreter sets it
    return stream


def default_signals() -> None:
    """The command's signals as a fresh interpreter has them (they were blocked over
    the fork, so one sent in between is delivered now, not lost), but the stack signal.

    That one is ignored until :meth:`Command.run` has registered the stack dump: from
    the fork on, the supervisor's pid file names this process while it still shows the
    supervisor's handler, so ``tidemill debug stacks`` may signal it before the dump is
    registered, and by default that signal kills. Ignoring it drops one already pending
    and hides the handler; the caller sees no dump yet and asks again.
    """
    for signum in FORWARDED:
        if signum == STACK_SIGNAL:
            signal.signal(signum, signal.SIG_IGN)
        elif signum == signal.SIGINT:
            signal.signal(signum, signal.default_int_handler)
        else:
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


@dataclass
class Command:
    """The replica's program, run in the forked command process."""

    request: ForkRequest
    base_path: tuple[str, ...]

    def run(self) -> None:
        entry = self.request.entry
        sys.argv = entry.sys_argv()
        sys.orig_argv = list(self.request.argv)
        fresh_process_state()
        if not install_from_env():
            signal.signal(STACK_SIGNAL, signal.SIG_DFL)  # as a fresh interpreter has it
        sys.path[:] = self.base_path
        if entry.kind == "module":
            if not sys.flags.safe_path:
                sys.path.insert(0, os.getcwd())
            run_module(entry.target)
        else:
            run_script(entry.target)


def fresh_process_state() -> None:
    """Undo what a forked process would otherwise share with its siblings."""
    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()
    time.tzset()
    tempfile.tempdir = None
    importlib.invalidate_caches()


def run_script(path: str) -> None:
    """``python SCRIPT``: a fresh ``__main__`` that stays for the interpreter's shutdown,
    ``argv[0]`` as given, ``__file__`` absolute, the script's real folder first on
    ``sys.path``. (``runpy.run_path`` would put the absolute path in ``argv[0]`` and
    restore the server's ``__main__`` before threads and ``atexit`` handlers finish.)"""
    if pkgutil.get_importer(path) is not None:  # a folder or zip with __main__.py
        runpy.run_path(path, run_name="__main__")
        return
    file = os.path.abspath(path)
    try:
        with io.open_code(file) as source:
            code = pkgutil.read_code(source)
            loader: type[SourceFileLoader | SourcelessFileLoader] = SourcelessFileLoader
            if code is None:
                source.seek(0)
                code = compile(source.read(), file, "exec", dont_inherit=True)
                loader = SourceFileLoader
    except OSError as exc:
        print(
            f"{sys.executable}: can't open file {file!r}: [Errno {exc.errno}] {exc.strerror}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    if not sys.flags.safe_path:
        sys.path.insert(0, os.path.dirname(os.path.realpath(file)))
    main = types.ModuleType("__main__")
    vars(main).update(
        __file__=file,
        __cached__=None,
        __loader__=loader("__main__", file),
        __builtins__=builtins,
        __annotations__={},
    )
    sys.modules["__main__"] = main
    exec(code, vars(main))


def run_module(name: str) -> None:
    """``python -m MODULE``, through ``runpy.run_module`` as the interpreter does."""
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except ImportError as exc:
        if user_frames(exc.__traceback__) is not None:
            raise
        sys.exit(f"{sys.executable}: {exc}")


def user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without the frames of this file and of runpy, as ``python SCRIPT`` shows it."""
    while tb is not None and is_own_frame(tb.tb_frame):
        tb = tb.tb_next
    return tb


def is_own_frame(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename == __file__ or frame.f_globals.get("__name__") == "runpy"


if __name__ == "__main__":
    command = serve(sys.argv[1:])
    try:
        command.run()
    except SystemExit:
        raise
    except BaseException as exc:
        exc.__traceback__ = user_frames(exc.__traceback__)
        raise
