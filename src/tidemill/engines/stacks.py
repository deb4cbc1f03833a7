"""Reading a live replica's Python stacks: py-spy from outside, else its own dump.

``py-spy dump`` needs nothing from the process (but ptrace rights, which a container
may lack). Without it, a Python replica that registered :mod:`tidemill.stack_signal`
dumps every thread to its log on SIGUSR2; this module sends the signal only to a
process that catches it (``SigCgt`` in ``/proc/PID/status``), since SIGUSR2 kills a
process that does not, and reads the dump back from the log. Either way the result is
a :class:`StackDump` of threads, each a list of frames, innermost first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.stack_signal import STACK_SIGNAL

PY_SPY = "py-spy"
PY_SPY_TIMEOUT_S = 10.0
DUMP_TIMEOUT_S = 3.0
"""How long a replica may take to write its faulthandler dump (it takes milliseconds)."""
SETTLE_S = 0.05
"""A dump counts as complete when the file has not grown for this long."""
DUMP_LIMIT_BYTES = 1 << 20
MODULE = "<module>"

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):$")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_locks_lock = threading.Lock()
_dump_locks: dict[str, threading.Lock] = {}
"""One signal-and-read at a time per log: two dumps into one file would interleave."""


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int


@dataclass(frozen=True)
class ThreadStack:
    name: str
    frames: tuple[Frame, ...]
    """innermost first"""
    main: bool = False


@dataclass(frozen=True)
class StackDump:
    """One replica's stacks, or why there are none (``problem``)."""

    source: str = ""
    """``py-spy`` or ``faulthandler``"""
    threads: tuple[ThreadStack, ...] = ()
    text: str = ""
    pid: int | None = None
    problem: str = ""


def engine_stacks(engine: Engine, handle: ReplicaHandle) -> StackDump:
    """The replica's stacks through ``engine`` (an optional engine method), or why
    there are none."""
    dump = getattr(engine, "stacks", None)
    if dump is None:
        return StackDump(problem=f"no stacks: the {engine.name} engine cannot read them")
    found: StackDump = dump(handle)
    return found


def dump_process(pid: int, log_file: str | None) -> StackDump:
    """The stacks of the Python process ``pid`` (or of the first Python process under it,
    when ``pid`` runs a wrapper such as a shell)."""
    target = _python_process(pid)
    if target is None:
        return StackDump(pid=pid, problem=f"no stacks: pid {pid} is not running")
    py_spy = shutil.which(PY_SPY)
    tried = ""
    if py_spy is not None:
        dump = dump_with_py_spy(py_spy, target)
        if not dump.problem:
            return dump
        tried = f"{dump.problem}, and "
    if log_file and _catches(target, STACK_SIGNAL):
        return dump_with_signal(target, log_file)
    missing = "" if py_spy is not None else "; py-spy is not installed (pip install py-spy)"
    return StackDump(
        pid=target,
        problem=(
            f"no stacks: {tried}`{_name(target)}` registered no stack dump (not a Python "
            f"process, or one started cold that does not import tidemill.runtime){missing}"
        ),
    )


def dump_with_py_spy(py_spy: str, pid: int) -> StackDump:
    try:
        done = subprocess.run(
            [py_spy, "dump", "--pid", str(pid), "--json"],
            capture_output=True,
            text=True,
            timeout=PY_SPY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return StackDump(pid=pid, problem=f"py-spy took over {PY_SPY_TIMEOUT_S:g} s")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0]
        return StackDump(pid=pid, problem=f"py-spy failed: {why}")
    threads = parse_py_spy(done.stdout)
    return StackDump("py-spy", threads, render(threads), pid)


def dump_with_signal(pid: int, log_file: str) -> StackDump:
    """Send the stack signal and read the dump the process appended to its log (lines
    it printed meanwhile are skipped by the parser)."""
    with _locks_lock:
        lock = _dump_locks.setdefault(log_file, threading.Lock())
    with lock:
        start = _size(log_file)
        try:
            os.kill(pid, STACK_SIGNAL)
        except OSError as exc:
            return StackDump(pid=pid, problem=f"no stacks: cannot signal pid {pid}: {exc}")
        size, changed = start, time.monotonic()
        deadline = changed + DUMP_TIMEOUT_S
        while time.monotonic() < deadline:
            now = _size(log_file)
            if now != size:
                size, changed = now, time.monotonic()
            elif size > start and time.monotonic() - changed >= SETTLE_S:
                break
            time.sleep(0.01)
    if size <= start:
        return StackDump(
            pid=pid,
            problem=f"no stacks: pid {pid} wrote no dump within {DUMP_TIMEOUT_S:g} s "
            f"(it may handle {STACK_SIGNAL.name} itself)",
        )
    with open(log_file, "rb") as dump:
        dump.seek(start)
        text = dump.read(min(size - start, DUMP_LIMIT_BYTES)).decode("utf-8", "replace")
    threads = parse_faulthandler(text)
    return StackDump("faulthandler", threads, render(threads), pid)


def parse_faulthandler(text: str) -> tuple[ThreadStack, ...]:
    """Threads of a ``faulthandler`` dump; the main thread is the one that ran
    ``<module>`` (else the last listed: the interpreter lists the oldest last)."""
    threads: list[tuple[str, list[Frame]]] = []
    for line in text.splitlines():
        head = _THREAD.match(line)
        if head:
            threads.append((head.group(1), []))
            continue
        frame = _FRAME.match(line)
        if frame and threads:
            threads[-1][1].append(Frame(frame.group(3), frame.group(1), int(frame.group(2))))
    return _mark_main([ThreadStack(name, tuple(frames)) for name, frames in threads])


def parse_py_spy(output: str) -> tuple[ThreadStack, ...]:
    """Threads of ``py-spy dump --json``."""
    threads = []
    for thread in json.loads(output or "[]"):
        frames = tuple(
            Frame(str(f["name"]), str(f["filename"]), int(f["line"])) for f in thread["frames"]
        )
        name = str(thread.get("thread_name") or thread.get("thread_id"))
        threads.append(ThreadStack(name, frames, main=name == "MainThread"))
    return tuple(threads) if any(t.main for t in threads) else _mark_main(threads)


def render(threads: tuple[ThreadStack, ...]) -> str:
    """The stacks as text, in faulthandler's layout."""
    lines = []
    for thread in threads:
        lines.append(f"Thread {thread.name}{' (main)' if thread.main else ''}:")
        lines += [f'  File "{f.file}", line {f.line} in {f.function}' for f in thread.frames]
        lines.append("")
    return "\n".join(lines)


def _mark_main(threads: list[ThreadStack]) -> tuple[ThreadStack, ...]:
    if not threads:
        return ()
    ran_module = [
        i for i, t in enumerate(threads) if t.frames and t.frames[-1].function == "<module>"
    ]
    main = ran_module[0] if ran_module else len(threads) - 1
    return tuple(ThreadStack(t.name, t.frames, main=i == main) for i, t in enumerate(threads))


def _python_process(pid: int) -> int | None:
    """``pid``, or the first process under it that runs Python; None if it is gone."""
    try:
        proc = psutil.Process(pid)
        candidates = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    for candidate in candidates:
        try:
            if "python" in candidate.name() or _catches(candidate.pid, STACK_SIGNAL):
                return candidate.pid
        except psutil.Error:
            continue
    return pid


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return f"pid {pid}"


def _catches(pid: int, signum: int) -> bool:
    """Whether ``pid`` has a handler for ``signum`` (SigCgt of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
