"""`tidemill run`: where its server is, and Ctrl-C or SIGTERM deletes the job, kills what
ignores SIGTERM, and returns within 3 s leaving nothing behind; killed outright, it
leaves no replica running either."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from tidemill.cli import progress
from tidemill.cli.main import app
from tidemill.engines._supervise import TETHER_GRACE_S

EXAMPLES = Path(__file__).parents[2] / "examples"

LOOP = (
    "import os, pathlib, time\n"
    "pathlib.Path(f'pid-{os.environ[\"RANK\"]}').write_text(str(os.getpid()))\n"
    "for i in range(600):\n"
    "    print('tick', i, flush=True)\n"
    "    time.sleep(0.2)\n"
)
STUBBORN = (
    "import os, pathlib, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(f'pid-{os.environ[\"RANK\"]}').write_text(str(os.getpid()))\n"
    "print('tick 2 (ignoring SIGTERM)', flush=True)\n"
    "time.sleep(600)\n"
)


def test_run_says_where_its_server_is_and_streams_the_job(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("import os\nprint('hello from', os.environ['RANK'])\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: hello}\n"
        "spec: {roles: {worker: {replicas: 2, resources: {cpu: 0.1}, "
        "command: [python, hello.py]}}}\n"
    )
    result = CliRunner().invoke(app, ["run", str(job)], env={"TIDEMILL_WARM_START": "0"})
    assert result.exit_code == 0, result.output
    url = re.match(r"tidemill server on (http://127\.0\.0\.1:\d+): ", result.stderr)
    assert url is not None, result.stderr
    assert f"dashboard {url[1]}/, API docs {url[1]}/docs; state in " in result.stderr
    state = re.search(r"; state in (\S+)", result.stderr)
    assert state is not None and Path(state[1]).name.startswith("tidemill-run-")
    assert not Path(state[1]).exists(), "the temporary state folder outlived the run"
    lines = result.stdout.splitlines()
    assert {"[worker-0] hello from 0", "[worker-1] hello from 1"} <= set(lines)
    assert any(line.startswith("job default/hello Succeeded in ") for line in lines)


def test_run_makes_its_state_folder_private_and_warns_of_one_others_can_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "hello.py").write_text("print('hello')\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: hello}\n"
        "spec: {roles: {worker: {replicas: 1, resources: {cpu: 0.1}, "
        "command: [python, hello.py]}}}\n"
    )
    fresh, shared = tmp_path / "runs" / "fresh", tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    env = {"TIDEMILL_WARM_START": "0"}
    made = CliRunner().invoke(app, ["run", str(job), "--state-dir", str(fresh)], env=env)
    found = CliRunner().invoke(app, ["run", str(job), "--state-dir", str(shared)], env=env)

    assert made.exit_code == 0 and found.exit_code == 0, made.output + found.output
    assert fresh.stat().st_mode & 0o777 == 0o700
    assert "warning" not in made.stderr
    assert (
        f"warning: the state folder {shared} is open to other users of this machine "
        f"(mode 0755): they can read every job's spec, environment and logs there; "
        f"`chmod 700 {shared}` closes it"
    ) in found.stderr
    assert shared.stat().st_mode & 0o777 == 0o755, "a folder someone made keeps its mode"


def test_run_shows_each_event_of_a_job_master_once(tmp_path: Path) -> None:
    """The master also writes each event it posts to its log; the watch prints the event
    alone (with its time), not the echo as well."""
    shutil.copy(EXAMPLES / "elastic" / "train.py", tmp_path / "train.py")
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: echo}\n"
        "spec:\n"
        f"  checkpoint: {{dir: {tmp_path / 'ckpt'}, everySteps: 10}}\n"
        "  roles:\n"
        "    worker: {replicas: 2, minReplicas: 1, maxReplicas: 2, resources: {cpu: 0.1},\n"
        "             command: [python, train.py], args: [--steps, '20', --step-time, '0.01']}\n"
    )
    result = CliRunner().invoke(app, ["run", str(job)], env={"TIDEMILL_WARM_START": "0"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    shown = [line for line in lines if "EpochStarted" in line or "CheckpointSaved" in line]
    assert any("EpochStarted" in line for line in shown), result.stdout
    assert any("CheckpointSaved" in line for line in shown), result.stdout
    assert all(line.startswith("-- ") for line in shown), "an event echoed by the master"
    assert not [line for line in lines if progress.EVENT_ECHO.match(line)]


def test_run_warns_about_a_missing_script_before_it_fails(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: typo}\n"
        "spec: {roles: {worker: {resources: {cpu: 0.1}, command: [python, trian.py], "
        "restartPolicy: Never}}}\n"
    )
    result = CliRunner().invoke(app, ["run", str(job)], env={"TIDEMILL_WARM_START": "0"})
    assert result.exit_code == 1, result.output
    assert (
        f"warning: {job}: spec.roles.worker.command: runs trian.py, which does not exist in "
        f"{tmp_path} " in result.stderr
    )
    assert "job default/typo Failed" in result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("script", "signum"),
    [
        (LOOP, signal.SIGINT),
        (LOOP, signal.SIGTERM),
        (STUBBORN, signal.SIGINT),
    ],
    ids=["ctrl-c", "sigterm", "ctrl-c-replicas-ignore-sigterm"],
)
def test_an_interrupted_run_exits_130_within_3s_and_leaves_nothing_behind(
    tmp_path: Path, script: str, signum: signal.Signals
) -> None:
    with forever_running(tmp_path, script) as (process, replicas, temp):
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        took_s = time.monotonic() - sent
        assert process.returncode == 130, stderr
        assert took_s < 3.0, f"run took {took_s:.1f}s to exit:\n{stderr}"
        assert "interrupted: deleting job default/forever" in stderr
        assert "Traceback" not in stderr
        assert [pid for pid in replicas if alive(pid)] == []
        assert list(temp.iterdir()) == []


@pytest.mark.e2e
def test_a_run_interrupted_with_keep_keeps_the_log_of_the_job_it_deleted(tmp_path: Path) -> None:
    """A server forgets a deleted job's files; `run` deletes its job on Ctrl-C, and a
    state folder it keeps is the user's: the job's log stays there."""
    (tmp_path / "loop.py").write_text(LOOP)
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: kept}\n"
        "spec: {roles: {worker: {replicas: 1, resources: {cpu: 0.1}, "
        "command: [python, loop.py]}}}\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    with started_run(job, temp, "--keep") as process:
        assert process.stdout is not None
        assert any("[worker-0] tick 2" in line for line in process.stdout), "no replica output"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    (log,) = temp.glob("tidemill-run-*/logs/default/kept/*/worker-0.log")
    assert "tick 2" in log.read_text()


CTRL_C_WHILE_IMPORTING = """
import os, signal, sys


class CtrlCOnImport:
    \"\"\"Ctrl-C arrives just as the commands' modules start loading.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "tidemill.cli.main":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None


sys.meta_path.insert(0, CtrlCOnImport())
sys.argv = ["tidemill", "run", sys.argv[1]]
from tidemill.cli.console import main

main()
"""


def test_ctrl_c_while_the_command_still_imports_says_interrupted_without_a_traceback(
    tmp_path: Path,
) -> None:
    """In the first half second of any command (more on a busy machine) its modules are
    still loading; Ctrl-C then must end it as Ctrl-C later does."""
    job = tmp_path / "job.yaml"
    job.write_text("never read")
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING, str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert (done.returncode, done.stderr, done.stdout) == (130, "interrupted\n", "")


def test_sigterm_as_run_sets_up_its_server_exits_130_and_leaves_no_state_folder(
    tmp_path: Path,
) -> None:
    """Between making its state folder and following the job, `run` starts its server
    and submits; a SIGTERM there used to end it by the signal's default, leaving the
    folder (its database, logs) behind."""
    (tmp_path / "loop.py").write_text(LOOP)
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: early}\n"
        "spec: {roles: {worker: {replicas: 1, resources: {cpu: 0.1}, "
        "command: [python, loop.py]}}}\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    with started_run(job, temp) as process:
        deadline = time.monotonic() + 60
        while not any(temp.glob("tidemill-run-*")) and process.poll() is None:
            assert time.monotonic() < deadline, "run made no state folder within 60 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert list(temp.iterdir()) == []
    assert [pid for pid in processes_under(temp) if alive(pid)] == []


@pytest.mark.parametrize("script", [LOOP, STUBBORN], ids=["replicas", "replicas-ignore-sigterm"])
def test_a_run_killed_with_sigkill_leaves_no_replica_running(tmp_path: Path, script: str) -> None:
    with forever_running(tmp_path, script) as (process, replicas, temp):
        hosted = processes_under(temp)
        assert hosted, "no supervisor or fork server found under the run's state folder"
        try:
            process.kill()
            process.wait()
            left = [pid for pid in replicas if alive(pid, grace_s=TETHER_GRACE_S + 5.0)]
            assert left == []
            # The supervisors end with their replicas; a fork server still importing its
            # modules sees its lifeline closed only once they are in (seconds, on a
            # loaded machine).
            assert [pid for pid in hosted if alive(pid, grace_s=30.0)] == []
        finally:
            for pid in hosted:
                if alive(pid, grace_s=0):
                    os.kill(pid, signal.SIGKILL)


@contextmanager
def forever_running(
    tmp_path: Path, script: str
) -> Iterator[tuple[subprocess.Popen[str], list[int], Path]]:
    """``tidemill run`` of two replicas running ``script`` (forever), once both print:
    the run, the replicas' pids and the run's TMPDIR; replicas left are killed after."""
    (tmp_path / "loop.py").write_text(script)
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: forever}\n"
        "spec: {roles: {worker: {replicas: 2, resources: {cpu: 0.1}, "
        "command: [python, loop.py]}}}\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    with started_run(job, temp) as process:
        assert process.stdout is not None
        assert any("[worker-1] tick 2" in line for line in process.stdout), "no replica output"
        replicas = [int((tmp_path / f"pid-{rank}").read_text()) for rank in (0, 1)]
        try:
            yield process, replicas, temp
        finally:
            for pid in replicas:
                if alive(pid, grace_s=0):
                    os.kill(pid, signal.SIGKILL)


def processes_under(folder: Path) -> list[int]:
    """Processes started with ``folder`` in their command line or working in it: the
    supervisors and the fork server of a run whose state is kept there."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if cwd.startswith(str(folder)) or any(str(folder) in part for part in cmdline):
            found.append(proc.pid)
    return found


@contextmanager
def started_run(job: Path, temp: Path, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``tidemill run JOB [OPTIONS]`` in a child process with its own TMPDIR; killed if
    still alive.

    The child takes Ctrl-C as a terminal's foreground process does, even when these tests
    run in the background (a shell starts a background job with SIGINT ignored, and the
    ignoring is inherited)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tidemill.cli", "run", str(job), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def alive(pid: int, grace_s: float = 5.0) -> bool:
    """Whether ``pid`` still runs after ``grace_s`` (a zombie counts as gone)."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)
