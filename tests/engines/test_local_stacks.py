"""The local engine reads live replicas' Python stacks and runs commands beside them.

Real processes throughout. Stacks come from py-spy when it is on the PATH, else from
the replica's own faulthandler dump; the tests that need one way hide or need py-spy.
A process that did not register the dump is never sent SIGUSR2 (it would die of it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.engines.processes import wait_for
from tests.engines.test_warm_start import Launcher, warmed_up
from tidemill.engines._supervise import UID_VAR
from tidemill.engines.local import LocalEngine
from tidemill.engines.stacks import StackDump, parse_faulthandler
from tidemill.stack_signal import STACK_DUMP_VAR

STUCK = """\
import time

def stuck_here():
    while True:
        time.sleep(0.05)

stuck_here()
"""


@pytest.fixture
def no_py_spy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's PATH without py-spy, so stacks come from the replica's own dump."""
    folders = os.environ["PATH"].split(os.pathsep)
    kept = [f for f in folders if not os.path.exists(os.path.join(f, "py-spy"))]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    engine = warmed_up(
        LocalEngine(tmp_path_factory.mktemp("state"), preload=()), tmp_path_factory.mktemp("up")
    )
    launcher = Launcher(engine, tmp_path_factory.mktemp("work"))
    yield launcher
    for _, handle in launcher.launched:
        engine.stop(handle, grace_s=1)
    engine.close()


@pytest.fixture
def cold(tmp_path: Path) -> Iterator[Launcher]:
    engine = LocalEngine(tmp_path / "state", warm_start=False)
    launcher = Launcher(engine, tmp_path)
    yield launcher
    for _, handle in launcher.launched:
        engine.stop(handle, grace_s=1)


def stacks_in(launcher: Launcher, function: str, *argv: str) -> tuple[StackDump, int]:
    """Launch ``argv`` and read its stacks once ``function`` is on them; and its pid."""
    handle = launcher.launch(*argv)
    dumps: list[StackDump] = []

    def there() -> bool:
        dumps.append(launcher.engine.stacks(handle))
        return any(f.function == function for t in dumps[-1].threads for f in t.frames)

    try:
        wait_for(there, f"{function} on the stacks")
    except AssertionError as exc:  # say what the last read found, not what the first did
        raise AssertionError(f"{exc}; the last read: {dumps[-1] if dumps else 'none'}") from None
    pid = launcher.engine.observe(handle).pid
    assert pid is not None
    return dumps[-1], pid


def test_a_warm_started_script_dumps_its_own_stacks(warm: Launcher, no_py_spy: None) -> None:
    dump, pid = stacks_in(warm, "stuck_here", "python", warm.write("stuck.py", STUCK))

    assert dump.source == "faulthandler" and dump.pid == pid
    (main,) = [t for t in dump.threads if t.main]
    assert [f.function for f in main.frames[:2]] == ["stuck_here", "<module>"]
    assert main.frames[0].file.endswith("stuck.py") and main.frames[0].line == 5
    assert 'stuck.py", line 5 in stuck_here' in dump.text


def test_a_process_without_the_dump_is_never_signalled(cold: Launcher, no_py_spy: None) -> None:
    plain = cold.launch("python", cold.write("plain.py", STUCK))
    shell = cold.launch("sleep", "600")
    wait_for(lambda: all(cold.engine.observe(h).pid for h in (plain, shell)), "both started")

    for handle in (plain, shell):
        dump = cold.engine.stacks(handle)
        assert dump.problem.startswith("no stacks:") and "py-spy is not installed" in dump.problem
        assert not dump.threads
    assert all(cold.engine.observe(h).running for h in (plain, shell))


@pytest.mark.skipif(shutil.which("py-spy") is None, reason="py-spy is not installed")
def test_py_spy_reads_a_script_that_registered_nothing(cold: Launcher) -> None:
    dump, pid = stacks_in(cold, "stuck_here", "python", cold.write("plain.py", STUCK))

    assert dump.source == "py-spy" and dump.pid == pid
    assert psutil.Process(pid).is_running()


def test_exec_gets_the_replicas_environment_and_folder(cold: Launcher, tmp_path: Path) -> None:
    folder = tmp_path / "run-here"
    folder.mkdir()
    handle = cold.launch("sleep", "600", env={"FROM_JOB": "yes"}, working_dir=str(folder))

    script = "import os, json; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
    command = cold.engine.exec_command(handle, [sys.executable, "-c", script])
    output = b"".join(command.output())
    assert command.wait() == 0
    seen = json.loads(output)
    assert seen["cwd"] == str(folder)
    assert seen["env"]["FROM_JOB"] == "yes"
    assert UID_VAR not in seen["env"] and STACK_DUMP_VAR not in seen["env"]
    assert cold.engine.observe(handle).running


def test_faulthandler_dumps_are_parsed_thread_by_thread() -> None:
    text = (
        "Thread 0x00007f0000000002 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 320 in wait\n'
        '  File "/app/beat.py", line 7 in heartbeat\n'
        "\n"
        "Current thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/app/train.py", line 12 in all_reduce\n'
        '  File "/app/train.py", line 30 in <module>\n'
    )
    beat, main = parse_faulthandler(text)

    assert not beat.main and [f.function for f in beat.frames] == ["wait", "heartbeat"]
    assert main.main and main.frames[0].line == 12


EARLY_REQUEST = """\
import os, signal
from tidemill.engines import _fork_server, stacks
from tidemill.engines._supervise import FORWARDED

signal.signal(signal.SIGUSR2, lambda *_: None)  # the supervisor's forwarding handler
signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # blocked over the fork
os.kill(os.getpid(), signal.SIGUSR2)  # `tidemill debug stacks` in the command's first moments
_fork_server.default_signals()
print("alive; handler shown:", stacks._catches(os.getpid(), signal.SIGUSR2), flush=True)
"""


def test_a_stack_request_before_the_dump_is_registered_does_not_kill_a_forked_command() -> None:
    """From the fork on, the supervisor's pid file names the command while it still shows
    the supervisor's handler: a stack request then must neither kill it (the default
    action) nor be answered by a handler that is gone; it finds no dump and asks again."""
    done = subprocess.run(
        [sys.executable, "-c", EARLY_REQUEST], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    assert done.stdout.strip() == "alive; handler shown: False"
