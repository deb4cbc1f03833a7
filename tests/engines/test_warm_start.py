"""Warm start with real processes: forked replicas behave as cold ones, and fall back.

Most tests share one fork server (numpy, and torch when installed, preloaded) and
compare what a forked replica sees and does with what a cold one does.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import re
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tidemill.engines.base import LaunchSpec, Observation, ReplicaHandle
from tidemill.engines.local import UID_VAR, LocalEngine
from tidemill.engines.warm_start import WarmStartUnavailable

from .processes import DEADLINE_S, gone, wait_for

PRELOAD = tuple(name for name in ("numpy", "torch") if importlib.util.find_spec(name))


class Launcher:
    """Writes scripts into a work folder and launches them; stops all of it at teardown."""

    def __init__(self, engine: LocalEngine, work_dir: Path) -> None:
        self.engine = engine
        self.work_dir = work_dir
        self.job = f"warm/{uuid.uuid4().hex[:8]}"
        self.launched: list[tuple[LocalEngine, ReplicaHandle]] = []
        self.strays: list[int] = []

    def write(self, name: str, code: str) -> str:
        path = self.work_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
        return name

    def launch(self, *argv: str, engine: LocalEngine | None = None, **kw: Any) -> ReplicaHandle:
        engine = engine or self.engine
        spec = LaunchSpec(
            job=self.job,
            job_uid="u1",
            launch_id=uuid.uuid4().hex,
            role="worker",
            index=len(self.launched),
            argv=argv,
            env=kw.pop("env", {}),
            working_dir=kw.pop("working_dir", str(self.work_dir)),
            node="local",
            **kw,
        )
        handle = engine.launch(spec)
        self.launched.append((engine, handle))
        return handle

    def wait_exit(self, handle: ReplicaHandle, engine: LocalEngine | None = None) -> Observation:
        seen: list[Observation] = []

        def ended() -> bool:
            seen.append((engine or self.engine).observe(handle))
            return not seen[-1].running

        wait_for(ended, "the replica to exit")
        return seen[-1]

    def log(self, handle: ReplicaHandle) -> str:
        return Path(str(handle.data["log_file"])).read_text()

    def command_pid(self, handle: ReplicaHandle) -> int:
        pid_file = Path(str(handle.data["pid_file"]))
        wait_for(pid_file.exists, "the supervisor to start the command")
        pid = int(pid_file.read_text())
        self.strays.append(pid)
        return pid

    def wait_file(self, name: str) -> str:
        path = self.work_dir / name
        wait_for(path.exists, f"{path} to appear")
        return path.read_text()

    def stop_all(self) -> None:
        for engine, handle in self.launched:
            engine.stop(handle, grace_s=0)
        for pid in self.strays:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def warmed_up(engine: LocalEngine, folder: Path, env: dict[str, str] | None = None) -> LocalEngine:
    """``engine`` once its fork server, started by a first (cold) replica, serves."""
    first = Launcher(engine, folder)
    handle = first.launch("python", first.write("up.py", "pass"), env=env or {})
    assert first.wait_exit(handle).exit_code == 0
    assert handle.data["warm_start"] is False
    assert "[cold start: the fork server is still importing its modules" in first.log(handle)
    assert engine.fork_server is not None
    engine.fork_server.wait_ready(DEADLINE_S * 2)
    return engine


@pytest.fixture(scope="module")
def warm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    """Started by a first replica with this process's environment, as every test expects."""
    engine = LocalEngine(tmp_path_factory.mktemp("warm-state"), preload=PRELOAD)
    yield warmed_up(engine, tmp_path_factory.mktemp("warm-up"))
    engine.close()


@pytest.fixture(scope="module")
def cold_engine(tmp_path_factory: pytest.TempPathFactory) -> LocalEngine:
    return LocalEngine(tmp_path_factory.mktemp("cold-state"), warm_start=False)


@pytest.fixture
def replicas(warm_engine: LocalEngine, tmp_path: Path) -> Iterator[Launcher]:
    work = tmp_path / "work"
    work.mkdir()
    launcher = Launcher(warm_engine, work)
    yield launcher
    launcher.stop_all()


PROBE = """
    import json, os, sys
    print(json.dumps({
        "argv": sys.argv,
        "orig_argv": sys.orig_argv,
        "cwd": os.getcwd(),
        "name": __name__,
        "file": __file__,
        "main_is_this_module": vars(sys.modules["__main__"]) is globals(),
        "path": sys.path,
        "flags": list(sys.flags),
        "env": {k: v for k, v in os.environ.items() if k != "TIDEMILL_REPLICA_UID"},
        "stdin": sys.stdin.read(),
        "fds": sorted(os.listdir("/proc/self/fd")),
        "streams": [[s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through]
                    for s in (sys.stdin, sys.stdout, sys.stderr)],
        "own_session_leader_is_parent": os.getsid(0) == os.getppid(),
    }))
"""


def probe_output(replicas: Launcher, handle: ReplicaHandle, engine: LocalEngine) -> Any:
    assert replicas.wait_exit(handle, engine).exit_code == 0, replicas.log(handle)
    lines = [line for line in replicas.log(handle).splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


@pytest.mark.parametrize(
    "command",
    [("python", "sub/probe.py", "--lr", "0.1"), ("python", "-m", "probe_mod", "x")],
    ids=["python SCRIPT", "python -m MODULE"],
)
def test_a_forked_replica_sees_exactly_what_a_cold_one_sees(
    replicas: Launcher, cold_engine: LocalEngine, command: tuple[str, ...]
) -> None:
    replicas.write("sub/probe.py", PROBE)
    replicas.write("probe_mod.py", PROBE)
    env = {"PROBE": "on", "TIDEMILL_JOB": replicas.job}

    warm = replicas.launch(*command, env=env)
    cold = replicas.launch(*command, env=env, engine=cold_engine)
    seen_warm = probe_output(replicas, warm, replicas.engine)
    seen_cold = probe_output(replicas, cold, cold_engine)

    assert (warm.data["warm_start"], cold.data["warm_start"]) == (True, False)
    assert "[warm start]" in replicas.log(warm).splitlines()[0]
    assert seen_warm == seen_cold
    assert seen_warm["name"] == "__main__"
    assert seen_warm["cwd"] == str(replicas.work_dir)
    assert seen_warm["env"]["PROBE"] == "on"
    assert seen_warm["stdin"] == ""
    if command[1] == "-m":
        assert seen_warm["argv"] == [str(replicas.work_dir / "probe_mod.py"), "x"]
        assert seen_warm["path"][0] == str(replicas.work_dir)
    else:
        assert seen_warm["argv"] == ["sub/probe.py", "--lr", "0.1"]
        assert seen_warm["file"] == str(replicas.work_dir / "sub" / "probe.py")
        assert seen_warm["path"][0] == str(replicas.work_dir / "sub")


@pytest.mark.parametrize(
    ("code", "exit_code", "message", "in_log"),
    [
        ("raise SystemExit(0)", 0, "exited with code 0", ""),
        ("import sys; sys.exit(3)", 3, "exited with code 3", ""),
        ("import sys; sys.exit('bad config')", 1, "exited with code 1", "bad config"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGINT)", 130, "killed by SIGINT",
         "KeyboardInterrupt"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137, "killed by SIGKILL", ""),
    ],
    ids=["exit 0", "exit 3", "exit with a message", "uncaught KeyboardInterrupt", "kill -9"],
)  # fmt: skip
def test_exit_codes_match_a_cold_interpreter(
    replicas: Launcher,
    cold_engine: LocalEngine,
    code: str,
    exit_code: int,
    message: str,
    in_log: str,
) -> None:
    script = replicas.write("ends.py", code)
    warm = replicas.launch("python", script)
    cold = replicas.launch("python", script, engine=cold_engine)
    for engine, handle in ((replicas.engine, warm), (cold_engine, cold)):
        seen = replicas.wait_exit(handle, engine)
        assert (seen.exit_code, seen.message) == (exit_code, message)
        assert in_log in replicas.log(handle)
    assert warm.data["warm_start"] is True


def test_an_uncaught_exception_exits_1_with_the_traceback_a_cold_run_prints(
    replicas: Launcher, cold_engine: LocalEngine
) -> None:
    script = replicas.write(
        "boom.py",
        """
        def fail():
            raise ValueError("boom")
        fail()
        """,
    )
    warm = replicas.launch("python", script)
    cold = replicas.launch("python", script, engine=cold_engine)
    assert replicas.wait_exit(warm).exit_code == 1
    assert replicas.wait_exit(cold, cold_engine).exit_code == 1
    traceback = replicas.log(warm).splitlines()[1:]
    assert traceback == replicas.log(cold).splitlines()[1:]
    assert traceback[:2] == [
        "Traceback (most recent call last):",
        f'  File "{replicas.work_dir / "boom.py"}", line 4, in <module>',
    ]
    assert traceback[-1] == "ValueError: boom"


def test_the_command_ends_like_an_interpreter_joining_threads_and_running_atexit(
    replicas: Launcher,
) -> None:
    script = replicas.write(
        "ending.py",
        """
        import atexit, threading, time
        atexit.register(print, "atexit ran", flush=True)
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
        """,
    )
    handle = replicas.launch("python", script)
    assert replicas.wait_exit(handle).exit_code == 0
    assert replicas.log(handle).splitlines()[1:] == ["thread done", "atexit ran"]


def test_a_missing_script_or_module_fails_as_the_interpreter_would(replicas: Launcher) -> None:
    script = replicas.launch("python", "missing.py")
    module = replicas.launch("python", "-m", "no_such_module_4f2a")
    assert replicas.wait_exit(script).exit_code == 2
    assert replicas.wait_exit(module).exit_code == 1
    path = replicas.work_dir / "missing.py"
    assert f"can't open file '{path}': [Errno 2] No such file or directory" in replicas.log(script)
    assert f"{sys.executable}: No module named no_such_module_4f2a" in replicas.log(module)


def test_a_missing_working_directory_exits_127_with_the_reason(replicas: Launcher) -> None:
    handle = replicas.launch("python", "x.py", working_dir="/no/such/dir")
    seen = replicas.wait_exit(handle)
    expected = f"cannot start {sys.executable!r}: working directory '/no/such/dir' does not exist"
    assert (seen.exit_code, seen.message) == (127, expected)
    assert handle.data["warm_start"] is True


def test_forked_replicas_draw_different_random_numbers(replicas: Launcher) -> None:
    script = replicas.write(
        "draw.py",
        """
        import random, sys
        draws = [random.random()]
        if "numpy" in sys.modules:
            draws.append(float(sys.modules["numpy"].random.rand()))
        if "torch" in sys.modules:
            draws.append(float(sys.modules["torch"].rand(1)))
        print(draws)
        """,
    )
    handles = [replicas.launch("python", script) for _ in range(2)]
    draws = []
    for handle in handles:
        assert replicas.wait_exit(handle).exit_code == 0
        draws.append(replicas.log(handle).splitlines()[-1])
    assert len(json.loads(draws[0])) == 1 + len(PRELOAD)
    first, second = (json.loads(d) for d in draws)
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_terminate_reaches_the_commands_sigterm_handler(replicas: Launcher) -> None:
    script = replicas.write(
        "graceful.py",
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("leaving", flush=True), sys.exit(0)))
        open("ready", "w").close()
        time.sleep(60)
        """,
    )
    handle = replicas.launch("python", script)
    replicas.wait_file("ready")
    started = time.monotonic()
    replicas.engine.terminate(handle)
    assert time.monotonic() - started < 0.5
    assert replicas.wait_exit(handle).exit_code == 0
    assert "leaving" in replicas.log(handle)


SPAWNER = """
    import os, subprocess, sys, time
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    kids = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
        subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True),
    ]
    time.sleep(0.3)  # let the stubborn one install its handler before anyone is told
    with open("pids.tmp", "w") as out:
        out.write(" ".join(str(k.pid) for k in kids))
    os.rename("pids.tmp", "pids")
    time.sleep(60)
"""


def test_stop_kills_the_whole_tree_of_a_forked_replica(replicas: Launcher) -> None:
    handle = replicas.launch("python", replicas.write("spawner.py", SPAWNER))
    kids = [int(pid) for pid in replicas.wait_file("pids").split()]
    replicas.strays.extend(kids)
    command = replicas.command_pid(handle)
    supervisor = int(str(handle.data["supervisor_pid"]))

    replicas.engine.stop(handle, grace_s=0.3)
    assert [pid for pid in [supervisor, command, *kids] if not gone(pid)] == []
    seen = replicas.engine.observe(handle)
    assert (seen.running, seen.exit_code) == (False, 128 + signal.SIGTERM)


def test_a_forked_command_carries_its_uid_so_stop_finds_it_without_its_supervisor(
    replicas: Launcher,
) -> None:
    handle = replicas.launch("python", replicas.write("sleeper.py", "import time; time.sleep(60)"))
    command = replicas.command_pid(handle)
    assert psutil.Process(command).environ()[UID_VAR] == handle.data["uid"]

    os.kill(int(str(handle.data["supervisor_pid"])), signal.SIGKILL)
    wait_for(lambda: gone(int(str(handle.data["supervisor_pid"]))), "the supervisor to die")
    orphan = replicas.engine.observe(handle)
    assert (orphan.running, orphan.pid) == (True, command)
    replicas.engine.stop(handle, grace_s=0.2)
    assert gone(command)


def test_a_replica_outlives_its_engine_and_fork_server_and_is_observed_from_its_handle(
    tmp_path: Path,
) -> None:
    engine = warmed_up(LocalEngine(tmp_path / "state", preload=()), tmp_path)
    replicas = Launcher(engine, tmp_path)
    script = replicas.write(
        "slow.py",
        """
        import os, time
        while not os.path.exists("finish"):
            time.sleep(0.02)
        raise SystemExit(4)
        """,
    )
    data = json.loads(json.dumps(replicas.launch("python", script).data))
    assert engine.fork_server is not None
    server = engine.fork_server.pid
    assert server is not None and data["warm_start"] is True
    del engine, replicas
    gc.collect()
    wait_for(lambda: gone(server), "the fork server to exit with its engine")

    restarted = LocalEngine(tmp_path / "state", preload=())
    handle = ReplicaHandle("local", data)
    try:
        assert restarted.observe(handle).running
        (tmp_path / "finish").touch()
        seen = Launcher(restarted, tmp_path).wait_exit(handle)
        assert (seen.exit_code, seen.message) == (4, "exited with code 4")
    finally:
        restarted.stop(handle, grace_s=0)


@pytest.mark.parametrize(
    ("argv", "env", "note"),
    [
        (("python", "-c", "print('hi')"), {}, ""),
        (("sh", "-c", "echo hi"), {}, ""),
        (("python", "-u", "hi.py"), {}, ""),
        (("python", "hi.py"), {"OMP_NUM_THREADS": "97"},
         "[cold start: OMP_NUM_THREADS is '97' for this replica but "),
    ],
    ids=["python -c", "not python", "interpreter option", "different OMP_NUM_THREADS"],
)  # fmt: skip
def test_other_commands_start_cold(
    replicas: Launcher, argv: tuple[str, ...], env: dict[str, str], note: str
) -> None:
    replicas.write("hi.py", "print('hi')")
    handle = replicas.launch(*argv, env=env)
    assert replicas.wait_exit(handle).exit_code == 0
    header, *output = replicas.log(handle).splitlines()
    assert output == ["hi"]
    assert handle.data["warm_start"] is False
    assert "[warm start]" not in header
    assert note in header
    if not note:
        assert "cold start" not in header


def test_a_preload_that_starts_a_thread_turns_warm_start_off_and_says_why(
    tmp_path: Path,
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "starts_thread.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), name='poller', daemon=True).start()\n"
    )
    engine = LocalEngine(tmp_path / "state", preload=("starts_thread",))
    replicas = Launcher(engine, tmp_path)
    script = replicas.write("hi.py", "print('hi')")
    why = "started Python threads ['poller'], which fork() drops"
    env = {"PYTHONPATH": str(modules)}
    try:
        replicas.launch("python", script, env=env)
        assert engine.fork_server is not None
        with pytest.raises(WarmStartUnavailable, match=re.escape(why)):
            engine.fork_server.wait_ready(DEADLINE_S * 2)
        handle = replicas.launch("python", script, env=env)
        assert replicas.wait_exit(handle).exit_code == 0
        assert handle.data["warm_start"] is False
        header, output = replicas.log(handle).splitlines()
        assert why in header
        assert output == "hi"
    finally:
        replicas.stop_all()
        engine.close()


def test_a_fork_server_still_importing_exits_as_soon_as_its_engine_closes(
    tmp_path: Path,
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    importing, imported = tmp_path / "importing", tmp_path / "imported"
    (modules / "slow_to_import.py").write_text(
        f"import pathlib, time\n"
        f"pathlib.Path({str(importing)!r}).touch()\n"
        f"time.sleep(60)\n"
        f"pathlib.Path({str(imported)!r}).touch()\n"
    )
    engine = LocalEngine(tmp_path / "state", preload=("slow_to_import",))
    replicas = Launcher(engine, tmp_path)
    try:
        replicas.launch("python", replicas.write("hi.py", "pass"), env={"PYTHONPATH": str(modules)})
        assert engine.fork_server is not None
        server = engine.fork_server.pid
        assert server is not None
        wait_for(importing.exists, "the fork server to start importing")
        engine.close()
        assert gone(server)
        logs = "".join(path.read_text() for path in (tmp_path / "state").rglob("fork-server-*.log"))
        assert "the engine went while the modules were importing; exiting" in logs
        assert not imported.exists()
    finally:
        replicas.stop_all()
        engine.close()


def test_warm_start_can_be_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalEngine(tmp_path, warm_start=False).fork_server is None
    monkeypatch.setenv("TIDEMILL_WARM_START", "0")
    engine = LocalEngine(tmp_path)
    assert engine.fork_server is None
    replicas = Launcher(engine, tmp_path)
    handle = replicas.launch("python", replicas.write("hi.py", "print('hi')"))
    try:
        assert replicas.wait_exit(handle).exit_code == 0
        assert handle.data["warm_start"] is False
    finally:
        replicas.stop_all()


def test_with_pythonsafepath_neither_start_puts_the_script_folder_on_sys_path(
    tmp_path: Path, cold_engine: LocalEngine
) -> None:
    env = {"PYTHONSAFEPATH": "1"}
    engine = warmed_up(LocalEngine(tmp_path / "state", preload=()), tmp_path, env)
    replicas = Launcher(engine, tmp_path)
    replicas.write("probe.py", PROBE)
    try:
        warm = replicas.launch("python", "probe.py", env=env)
        cold = replicas.launch("python", "probe.py", env=env, engine=cold_engine)
        seen_warm = probe_output(replicas, warm, engine)
        assert warm.data["warm_start"] is True
        assert seen_warm == probe_output(replicas, cold, cold_engine)
        assert str(tmp_path) not in seen_warm["path"]
    finally:
        replicas.stop_all()
        engine.close()


def test_a_state_folder_too_deep_for_a_socket_address_still_warm_starts(tmp_path: Path) -> None:
    state = tmp_path / ("d" * 60) / ("e" * 60)
    engine = warmed_up(LocalEngine(state, preload=()), tmp_path)
    replicas = Launcher(engine, tmp_path)
    try:
        handle = replicas.launch("python", replicas.write("hi.py", "print('hi')"))
        assert replicas.wait_exit(handle).exit_code == 0
        assert handle.data["warm_start"] is True
        assert [p.parent for p in state.glob("warm/*.sock")] == [state / "warm"]
    finally:
        replicas.stop_all()
        engine.close()
    assert list(state.glob("warm/*.sock")) == []


def test_the_default_preload_hands_forked_replicas_the_runtime_kernel_loaded(
    tmp_path: Path, cold_engine: LocalEngine
) -> None:
    """Loading it takes a replica 0.4 s, before a scaled-out worker can register."""
    engine = warmed_up(LocalEngine(tmp_path / "state"), tmp_path / "up")
    replicas = Launcher(engine, tmp_path)
    script = replicas.write(
        "kernels.py",
        "from tidemill.runtime._stream_copy import copy_spans\n"
        "print(len(copy_spans.signatures))\n",
    )
    try:
        warm = replicas.launch("python", script)
        cold = replicas.launch("python", script, engine=cold_engine)
        for handle, engine_of, loaded in ((warm, engine, "1"), (cold, cold_engine, "0")):
            assert replicas.wait_exit(handle, engine_of).exit_code == 0, replicas.log(handle)
            assert replicas.log(handle).splitlines()[-1] == loaded
        assert warm.data["warm_start"] is True
    finally:
        replicas.stop_all()
        engine.close()
