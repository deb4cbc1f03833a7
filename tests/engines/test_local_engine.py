"""The local engine with real processes: exit codes, logs, process trees, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from tidemill.engines import local
from tidemill.engines.base import LaunchSpec, ReplicaHandle
from tidemill.engines.local import UID_VAR, LocalEngine
from tidemill.engines.local_processes import carries_uid

from .processes import gone, wait_exit, wait_for

JOB_UID = "6f1c0e5a9b2d4c8e"


class Replicas:
    """Launches through one engine and stops everything it launched at teardown."""

    def __init__(self, state_dir: Path, work_dir: Path) -> None:
        self.engine = LocalEngine(state_dir)
        self.work_dir = work_dir
        self.handles: list[ReplicaHandle] = []
        self.strays: list[int] = []
        """pids started by replicas, killed at teardown should ``stop`` have missed them"""

    def spec(self, *argv: str, role: str = "worker", index: int = 0, **kw: Any) -> LaunchSpec:
        base = LaunchSpec(
            job="team/job",
            job_uid=JOB_UID,
            launch_id=uuid.uuid4().hex,
            role=role,
            index=index,
            argv=argv,
            env={},
            working_dir=str(self.work_dir),
            node="local",
        )
        return replace(base, **kw)

    def launch(self, spec: LaunchSpec) -> ReplicaHandle:
        handle = self.engine.launch(spec)
        self.track(handle)
        return handle

    def python(self, code: str, **kw: Any) -> ReplicaHandle:
        return self.launch(self.spec("python", "-c", textwrap.dedent(code), **kw))

    def track(self, handle: ReplicaHandle) -> None:
        self.handles.append(handle)

    def stop_all(self) -> None:
        for handle in self.handles:
            self.engine.stop(handle, grace_s=0)
        for pid in self.strays:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    work = tmp_path / "work"
    work.mkdir()
    launched = Replicas(tmp_path / "state", work)
    yield launched
    launched.stop_all()


def read_pids(replicas: Replicas, name: str) -> list[int]:
    path = replicas.work_dir / name
    wait_for(path.exists, f"pids in {path}")
    pids = [int(p) for p in path.read_text().split()]
    replicas.strays.extend(pids)
    return pids


def child_pid(engine: LocalEngine, handle: ReplicaHandle) -> int:
    pid_file = Path(str(handle.data["pid_file"]))
    wait_for(pid_file.exists, "the supervisor to start the command")
    obs = engine.observe(handle)
    assert obs.pid == int(pid_file.read_text())
    return obs.pid


@pytest.mark.parametrize("code", [0, 3])
def test_a_replica_runs_then_reports_its_exit_code(replicas: Replicas, code: int) -> None:
    handle = replicas.python(f"import time; time.sleep(0.3); raise SystemExit({code})")
    assert replicas.engine.observe(handle).running
    obs = wait_exit(replicas.engine, handle)
    assert (obs.running, obs.exit_code) == (False, code)
    assert obs.message == f"exited with code {code}"


def test_stdout_and_stderr_go_to_one_log_appended_across_attempts(replicas: Replicas) -> None:
    code = "import sys; print('out', sys.argv[1]); print('err', sys.argv[1], file=sys.stderr)"
    first = replicas.launch(replicas.spec("python", "-c", code, "a0", attempt=0))
    wait_exit(replicas.engine, first)
    second = replicas.launch(replicas.spec("python", "-c", code, "a1", attempt=1))
    wait_exit(replicas.engine, second)

    log = Path(str(replicas.engine.log_path(second)))
    assert log == replicas.engine.state_dir / "logs" / "team" / "job" / JOB_UID / "worker-0.log"
    assert replicas.engine.log_path(first) == str(log)
    lines = log.read_text().splitlines()
    headers = [line for line in lines if line.startswith("===== tidemill:")]
    assert len(headers) == 2
    assert "team/job worker-0 attempt 0" in headers[0]
    assert "team/job worker-0 attempt 1" in headers[1]
    assert {"out a0", "err a0", "out a1", "err a1"} <= set(lines)
    assert lines.index("out a0") < lines.index(headers[1]) < lines.index("out a1")


def test_kill_9_of_the_command_is_observed_as_exit_137(replicas: Replicas) -> None:
    handle = replicas.python("import time; time.sleep(30)")
    os.kill(child_pid(replicas.engine, handle), signal.SIGKILL)
    obs = wait_exit(replicas.engine, handle)
    assert (obs.exit_code, obs.message) == (137, "killed by SIGKILL")


def test_the_handle_is_json_and_a_restarted_control_plane_sees_exit_codes(
    replicas: Replicas, tmp_path: Path
) -> None:
    """Launch from another process that then exits, so we are never the parent."""
    script = f"""
        import json, sys
        from pathlib import Path
        from tidemill.engines.base import LaunchSpec
        from tidemill.engines.local import LocalEngine
        engine = LocalEngine(Path({str(replicas.engine.state_dir)!r}))
        handles = []
        for index, code in enumerate(["import time; time.sleep(1.5); raise SystemExit(4)",
                                      "raise SystemExit(5)"]):
            spec = LaunchSpec(job="team/job", job_uid="u1", launch_id=f"l{{index}}",
                              role="worker", index=index, env={{}},
                              argv=("python", "-c", code), working_dir={str(tmp_path)!r},
                              node="local")
            handles.append(engine.launch(spec).data)
        print(json.dumps(handles))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    slow, quick = (ReplicaHandle("local", data) for data in json.loads(done.stdout))
    replicas.track(slow)
    replicas.track(quick)

    restarted = LocalEngine(replicas.engine.state_dir)
    assert restarted.observe(slow).running
    wait_for(lambda: not restarted.observe(quick).running, "the quick replica to exit")
    assert restarted.observe(quick).exit_code == 5
    obs = wait_exit(restarted, slow)
    assert (obs.exit_code, obs.message) == (4, "exited with code 4")


def test_a_replica_whose_processes_vanished_is_reported_lost(replicas: Replicas) -> None:
    handle = replicas.python("import time; time.sleep(30)")
    command = child_pid(replicas.engine, handle)
    os.killpg(int(str(handle.data["pgid"])), signal.SIGKILL)
    obs = wait_exit(replicas.engine, handle)
    assert gone(command)
    assert obs.exit_code is None
    assert obs.message.startswith("replica process vanished")


SPAWNER = """
    import os, signal, subprocess, sys, time
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    kids = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
        subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True),
    ]
    time.sleep(0.2)  # let the stubborn one install its handler before anyone is told
    with open("pids.tmp", "w") as out:
        out.write(" ".join(str(k.pid) for k in kids) + "\\n")
    os.rename("pids.tmp", "pids")
    {then}
"""


def test_stop_kills_the_whole_tree_even_a_setsid_child_that_ignores_sigterm(
    replicas: Replicas,
) -> None:
    handle = replicas.python(SPAWNER.format(then="time.sleep(60)"))
    kids = read_pids(replicas, "pids")
    command = child_pid(replicas.engine, handle)
    supervisor = int(str(handle.data["supervisor_pid"]))
    assert os.getsid(kids[1]) != os.getsid(command)

    started = time.monotonic()
    replicas.engine.stop(handle, grace_s=0.3)
    assert time.monotonic() - started >= 0.3
    assert [pid for pid in [supervisor, command, *kids] if not gone(pid)] == []
    obs = replicas.engine.observe(handle)
    assert (obs.running, obs.exit_code) == (False, 128 + signal.SIGTERM)


def test_kill_returns_at_once_and_the_whole_tree_is_gone_even_what_ignores_sigterm(
    replicas: Replicas,
) -> None:
    ignore_term = "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    handle = replicas.python(SPAWNER.format(then=ignore_term))
    kids = read_pids(replicas, "pids")
    command = child_pid(replicas.engine, handle)
    supervisor = int(str(handle.data["supervisor_pid"]))

    started = time.monotonic()
    replicas.engine.kill(handle)
    assert time.monotonic() - started < 1.0
    tree = [supervisor, command, *kids]
    wait_for(lambda: all(gone(pid) for pid in tree), "every process of the replica to die", 2.0)
    obs = replicas.engine.observe(handle)
    assert (obs.running, obs.exit_code) == (False, 137)


def test_kill_after_the_replica_ended_keeps_its_exit_code(replicas: Replicas) -> None:
    handle = replicas.python("raise SystemExit(3)")
    assert wait_exit(replicas.engine, handle).exit_code == 3
    replicas.engine.kill(handle)
    assert replicas.engine.observe(handle).exit_code == 3


def test_stop_finds_a_daemon_that_outlived_its_parent(replicas: Replicas) -> None:
    handle = replicas.python(SPAWNER.format(then="raise SystemExit(0)"))
    kids = read_pids(replicas, "pids")
    assert wait_exit(replicas.engine, handle).exit_code == 0
    assert not gone(kids[1])

    replicas.engine.stop(handle, grace_s=0.2)
    assert [pid for pid in kids if not gone(pid)] == []
    assert replicas.engine.observe(handle).exit_code == 0


def test_stop_lets_the_command_shut_down_on_one_sigterm(replicas: Replicas) -> None:
    handle = replicas.python(
        """
        import os, signal, time
        def on_term(signum, frame):
            with open("terms", "a") as out:
                out.write("TERM\\n")
        signal.signal(signal.SIGTERM, on_term)
        open("ready", "w").close()
        while not os.path.exists("terms"):
            time.sleep(0.01)
        time.sleep(0.3)  # room for a second SIGTERM, which must not come
        raise SystemExit(0)
        """
    )
    wait_for((replicas.work_dir / "ready").exists, "the handler to be installed")
    replicas.engine.stop(handle, grace_s=5)
    assert (replicas.work_dir / "terms").read_text() == "TERM\n"
    assert replicas.engine.observe(handle).exit_code == 0


def test_stop_of_a_command_that_ignores_sigterm_ends_in_sigkill(replicas: Replicas) -> None:
    handle = replicas.python(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("ready", "w").close()
        time.sleep(60)
        """
    )
    wait_for((replicas.work_dir / "ready").exists, "the handler to be installed")
    replicas.engine.stop(handle, grace_s=0.2)
    obs = replicas.engine.observe(handle)
    assert (obs.running, obs.exit_code) == (False, 137)


@pytest.mark.parametrize(
    ("argv", "working_dir", "why"),
    [
        (("no-such-program-4f2a",), None, "No such file or directory"),
        (("sh", "-c", "exit 0"), "/no/such/dir", "working directory '/no/such/dir' does not exist"),
    ],
    ids=["missing executable", "missing working directory"],
)  # fmt: skip
def test_a_command_that_cannot_start_exits_127_with_the_reason(
    replicas: Replicas, argv: tuple[str, ...], working_dir: str | None, why: str
) -> None:
    spec = replicas.spec(*argv)
    if working_dir is not None:
        spec = replace(spec, working_dir=working_dir)
    handle = replicas.launch(spec)
    obs = wait_exit(replicas.engine, handle)
    expected = f"cannot start {argv[0]!r}: {why}"
    assert (obs.exit_code, obs.message) == (127, expected)
    log = Path(str(replicas.engine.log_path(handle))).read_text()
    assert f"tidemill: {expected}" in log


def test_dry_run_is_exactly_what_launch_starts(replicas: Replicas) -> None:
    spec = replicas.spec(
        "python3",
        "-c",
        "import time; time.sleep(30)",
        env={"CUDA_VISIBLE_DEVICES": "7", "MY_FLAG": "on", "HOME": "/elsewhere"},
        gpu_ids=(1, 3),
    )
    plan = replicas.engine.dry_run(spec)
    assert plan.argv == (sys.executable, "-c", "import time; time.sleep(30)")
    assert plan.env["MY_FLAG"] == "on"
    assert plan.env["HOME"] == "/elsewhere"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "7"
    assert plan.env["PATH"] == os.environ["PATH"]

    handle = replicas.launch(spec)
    command = psutil.Process(child_pid(replicas.engine, handle))
    assert tuple(command.cmdline()) == plan.argv
    assert command.cwd() == plan.working_dir
    assert command.environ() == {**plan.env, UID_VAR: handle.data["uid"]}


def test_without_gpus_a_replica_sees_no_device(replicas: Replicas) -> None:
    assert replicas.engine.dry_run(replicas.spec("true")).env["CUDA_VISIBLE_DEVICES"] == ""
    with_gpus = replicas.engine.dry_run(replicas.spec("true", gpu_ids=(0, 2)))
    assert with_gpus.env["CUDA_VISIBLE_DEVICES"] == "0,2"


def test_a_handle_from_another_engine_is_refused(replicas: Replicas) -> None:
    with pytest.raises(ValueError, match="belongs to engine 'kubernetes'"):
        replicas.engine.observe(ReplicaHandle("kubernetes", {"pod": "x"}))


def test_terminate_asks_the_command_to_finish_and_returns_at_once(replicas: Replicas) -> None:
    handle = replicas.python(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("leaving", flush=True), sys.exit(0)))
        open("ready", "w").close()
        time.sleep(60)
        """
    )
    wait_for((replicas.work_dir / "ready").exists, "the handler to be installed")

    started = time.monotonic()
    replicas.engine.terminate(handle)
    returned_after = time.monotonic() - started
    seen = wait_exit(replicas.engine, handle)

    assert returned_after < 0.5
    assert seen.exit_code == 0
    assert "leaving" in Path(str(replicas.engine.log_path(handle))).read_text()


def test_a_command_started_as_the_kill_lists_the_processes_dies_too(
    replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor may start its command after ``kill`` listed the replica's
    processes and before the supervisor's SIGKILL lands (a job deleted right after its
    launch once left its master running): here a process of the replica starts right
    after the first listing, as that command would."""
    handle = replicas.launch(replicas.spec("sleep", "30"))
    uid = str(handle.data["uid"])
    wait_for(lambda: Path(str(handle.data["pid_file"])).exists(), "the command to start")
    listed = local.replica_processes
    late: list[subprocess.Popen[bytes]] = []

    def listing_then_a_late_start(*args: Any) -> list[psutil.Process]:
        found = listed(*args)
        if not late:
            env = {**os.environ, UID_VAR: uid}
            late.append(subprocess.Popen(["sleep", "30"], env=env, start_new_session=True))
            process = psutil.Process(late[0].pid)
            wait_for(lambda: carries_uid(process, uid), "the late process to be listable")
        return found

    monkeypatch.setattr(local, "replica_processes", listing_then_a_late_start)
    replicas.engine.kill(handle)
    try:
        assert late[0].wait(timeout=5) == -signal.SIGKILL
    finally:
        if late[0].poll() is None:
            late[0].kill()
            late[0].wait()
