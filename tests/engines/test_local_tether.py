"""Tethered replicas of the local engine (``tidemill run``'s): they stop when the process
that hosts the engine ends, ``kill -9`` included; untethered ones (a server's) live on.

The engine runs in a real host process, killed with SIGKILL as a user's ``kill -9`` would."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tidemill.engines._supervise import CONTROL_PLANE_ENDED, TETHER_GRACE_S, TETHER_VAR
from tidemill.engines.base import LaunchSpec
from tidemill.engines.local import LocalEngine

from .processes import DEADLINE_S, carrying, gone, wait_exit, wait_for

HOST = """
    import json, sys, uuid
    from pathlib import Path
    from tidemill.engines.base import LaunchSpec
    from tidemill.engines.local import LocalEngine

    state, work, tethered = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "tethered"
    engine = LocalEngine(state, preload=("numpy",), tethered=tethered)

    def launch(*argv):
        spec = LaunchSpec(job="team/tether", job_uid="u1", launch_id=uuid.uuid4().hex,
                          role="worker", index=0, argv=argv, env={}, working_dir=work,
                          node="local")
        return engine.launch(spec).data

    launched = {
        "stubborn": launch("python", "stubborn.py"),
        "polite": launch("python", "polite.py"),  # the first Python launch: cold
    }
    engine.fork_server.wait_ready(60)
    launched["warm"] = launch("python", "polite.py")
    print(json.dumps(launched), flush=True)
    sys.stdin.read()
"""
STUBBORN = """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    escaped = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        start_new_session=True,
    )
    with open("escaped.partial", "w") as out:  # renamed whole: never read half written
        out.write(str(escaped.pid))
    os.replace("escaped.partial", "escaped.pid")
    time.sleep(600)
"""
POLITE = """
    import json, os, time
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the folder listdir had open
            continue
    seen = {"fds": fds, "tether_var": os.environ.get("TIDEMILL_TETHER_FD")}
    with open(f"seen-{os.getpid()}.partial", "w") as out:  # renamed whole: never read half written
        json.dump(seen, out)
    os.replace(f"seen-{os.getpid()}.partial", f"seen-{os.getpid()}.json")
    time.sleep(600)
"""


class Host:
    """The process hosting a local engine, and what it launched."""

    def __init__(self, tmp_path: Path, tethered: bool) -> None:
        self.work = tmp_path / "work"
        self.work.mkdir()
        for name, code in (("host.py", HOST), ("stubborn.py", STUBBORN), ("polite.py", POLITE)):
            (self.work / name).write_text(textwrap.dedent(code))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "host.py",
                str(tmp_path / "state"),
                str(self.work),
                "tethered" if tethered else "free",
            ],
            cwd=self.work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the host exited with {self.process.wait()} before launching"
        self.launched: dict[str, dict[str, Any]] = json.loads(line)

    def command(self, name: str) -> int:
        pid_file = Path(self.launched[name]["pid_file"])
        wait_for(pid_file.exists, f"the {name} command to start")
        return int(pid_file.read_text())

    def escaped(self) -> int:
        path = self.work / "escaped.pid"
        wait_for(path.exists, "the stubborn replica to start its escaped child")
        return int(path.read_text())

    def exit_file(self, name: str) -> list[str]:
        return Path(self.launched[name]["exit_file"]).read_text().splitlines()

    def every_process(self) -> list[int]:
        uids = {launch["uid"] for launch in self.launched.values()}
        return sorted({pid for uid in uids for pid in carrying(uid)})

    def kill_all(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pid in self.every_process():
            with contextlib.suppress(ProcessLookupError):  # a tethered one may be ending
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def host_of(tmp_path: Path) -> Iterator[Any]:
    hosts: list[Host] = []

    def start(tethered: bool) -> Host:
        hosts.append(Host(tmp_path, tethered))
        return hosts[-1]

    yield start
    for host in hosts:
        host.kill_all()


def test_kill_9_of_a_tethered_engines_process_stops_every_replica(host_of: Any) -> None:
    host = host_of(tethered=True)
    commands = {name: host.command(name) for name in host.launched}
    escaped = host.escaped()
    assert host.launched["warm"]["warm_start"] is True
    assert host.launched["polite"]["warm_start"] is False

    host.process.kill()
    host.process.wait()

    for name in ("polite", "warm"):
        wait_for(lambda name=name: gone(commands[name]), f"the {name} replica to stop")
    wait_for(
        lambda: gone(commands["stubborn"]) and gone(escaped),
        "the replica that ignores SIGTERM and its escaped child to be killed",
        timeout_s=TETHER_GRACE_S + DEADLINE_S,
    )
    wait_for(lambda: not host.every_process(), "every process of every replica to end")
    for name in ("polite", "warm"):
        wait_for(lambda name=name: Path(host.launched[name]["exit_file"]).exists(), "exit file")
        assert host.exit_file(name) == ["143", f"killed by SIGTERM; {CONTROL_PLANE_ENDED}"]
    assert host.exit_file("stubborn") == ["137", f"killed by SIGKILL; {CONTROL_PLANE_ENDED}"]
    log = Path(host.launched["stubborn"]["log_file"]).read_text()
    assert "the control plane that ran this replica ended; stopping it" in log


def test_replicas_of_an_untethered_engine_outlive_its_process(host_of: Any) -> None:
    host = host_of(tethered=False)
    commands = [host.command(name) for name in host.launched]
    host.process.kill()
    host.process.wait()
    time.sleep(1.0)  # a tethered replica has its SIGTERM within milliseconds
    assert not any(gone(pid) for pid in commands)
    for name in host.launched:
        assert not Path(host.launched[name]["exit_file"]).exists()


def test_a_tethered_command_holds_neither_the_tether_nor_its_variable(host_of: Any) -> None:
    host = host_of(tethered=True)
    for name in ("polite", "warm"):
        command = host.command(name)
        supervisor = psutil.Process(command).parent()
        tether_fd = supervisor.environ()[TETHER_VAR]  # its environment as it started
        tether = os.readlink(f"/proc/{supervisor.pid}/fd/{tether_fd}")
        assert tether.startswith("pipe:")
        seen_file = host.work / f"seen-{command}.json"
        wait_for(seen_file.exists, f"the {name} command to say what it holds")
        seen = json.loads(seen_file.read_text())
        assert tether not in seen["fds"].values(), name
        assert seen["tether_var"] is None, name


def test_closing_a_tethered_engine_stops_its_replicas(tmp_path: Path) -> None:
    engine = LocalEngine(tmp_path / "state", warm_start=False, tethered=True)
    spec = LaunchSpec(
        job="team/tether",
        job_uid="u2",
        launch_id="l1",
        role="worker",
        index=0,
        argv=("sleep", "600"),
        env={},
        working_dir=str(tmp_path),
        node="local",
    )
    handle = engine.launch(spec)
    try:
        wait_for(lambda: engine.observe(handle).pid is not None, "the command to start")
        engine.close()
        ended = wait_exit(engine, handle)
        assert ended.exit_code == 143
        assert ended.message == f"killed by SIGTERM; {CONTROL_PLANE_ENDED}"
        assert ended.control_plane_ended
    finally:
        engine.kill(handle)
