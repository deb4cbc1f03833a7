"""Finding a launch again by its id: after the control plane died between launching a
replica and recording it, ``adopt`` returns that replica, or None when none started,
so the launch is never made twice. Files are kept per job uid and launch id."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tidemill.engines.base import LaunchSpec, ReplicaHandle
from tidemill.engines.local import LocalEngine
from tidemill.engines.warm_start import ForkRequest, python_entry

from .processes import DEADLINE_S, carrying, gone, wait_exit, wait_for

SLEEPER = "import time; time.sleep(60)"


class Engines:
    """Engines on one state folder (as a restarted control plane has); at teardown every
    replica launched in it is killed, whoever launched it."""

    def __init__(self, state_dir: Path, work_dir: Path) -> None:
        self.state_dir = state_dir
        self.work_dir = work_dir
        self.engines: list[LocalEngine] = []
        self.uids: list[str] = []

    def engine(self, warm: bool = False) -> LocalEngine:
        engine = LocalEngine(self.state_dir, warm_start=warm, preload=())
        self.engines.append(engine)
        return engine

    def warm_engine(self) -> LocalEngine:
        """A warm engine whose fork server serves (a first replica starts it, cold)."""
        engine = self.engine(warm=True)
        first = engine.launch(self.spec("pass"))
        assert wait_exit(engine, first).exit_code == 0
        assert engine.fork_server is not None
        engine.fork_server.wait_ready(DEADLINE_S)
        return engine

    def spec(self, code: str, **kw: object) -> LaunchSpec:
        script = f"{uuid.uuid4().hex[:8]}.py"
        (self.work_dir / script).write_text(textwrap.dedent(code))
        spec = LaunchSpec(
            job="team/job",
            job_uid="uid-1",
            launch_id=uuid.uuid4().hex,
            role="worker",
            index=0,
            argv=("python", script),
            env={},
            working_dir=str(self.work_dir),
            node="local",
        )
        spec = replace(spec, **kw)
        self.uids.append(LocalEngine(self.state_dir, warm_start=False).files(spec).uid)
        return spec

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
        for uid in self.uids:
            for pid in carrying(uid):
                os.kill(pid, 9)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Engines]:
    work = tmp_path / "work"
    work.mkdir()
    made = Engines(tmp_path / "state", work)
    yield made
    made.close()


def launch_and_die(engines: Engines, spec: LaunchSpec, warm: bool) -> ReplicaHandle:
    """Launch from a control plane that dies (``os._exit``) right after; the handle it
    got, which it never recorded anywhere."""
    script = f"""
        import json, os, sys
        from pathlib import Path
        from tidemill.engines.base import LaunchSpec
        from tidemill.engines.local import LocalEngine
        engine = LocalEngine(Path({str(engines.state_dir)!r}), warm_start={warm}, preload=())
        if {warm}:
            warm_up = LaunchSpec(**{{**json.loads(sys.argv[1]), "launch_id": "warm-up",
                                     "argv": ("python", "noop.py")}})
            engine.launch(warm_up)
            engine.fork_server.wait_ready({DEADLINE_S})
        handle = engine.launch(LaunchSpec(**json.loads(sys.argv[1])))
        print(json.dumps(handle.data), flush=True)
        os._exit(0)
    """
    (engines.work_dir / "noop.py").write_text("pass\n")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        check=True,
    )
    return ReplicaHandle("local", json.loads(done.stdout))


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_restarted_control_plane_adopts_the_replica_a_crashed_one_launched(
    engines: Engines, warm: bool
) -> None:
    spec = engines.spec(SLEEPER)
    launched = launch_and_die(engines, spec, warm)
    assert launched.data["warm_start"] is warm

    restarted = engines.engine()
    adopted = restarted.adopt(spec)
    assert adopted == launched
    seen = restarted.observe(adopted)
    assert seen.running
    wait_for(lambda: Path(str(adopted.data["pid_file"])).exists(), "the command to start")
    assert restarted.observe(adopted).pid == int(Path(str(adopted.data["pid_file"])).read_text())
    assert restarted.adopt(spec) == adopted

    restarted.kill(adopted)
    wait_for(lambda: not carrying(restarted.files(spec).uid), "the adopted replica to die")


def test_adopting_a_launch_id_that_never_launched_finds_nothing(engines: Engines) -> None:
    engine = engines.engine()
    running = engine.launch(engines.spec(SLEEPER))
    assert engine.observe(running).running
    assert engine.adopt(engines.spec(SLEEPER)) is None


def test_a_replica_that_ended_before_the_restart_is_adopted_with_its_exit_code(
    engines: Engines,
) -> None:
    spec = engines.spec("raise SystemExit(4)")
    launched = launch_and_die(engines, spec, warm=False)
    wait_for(lambda: Path(str(launched.data["exit_file"])).exists(), "the replica to end")

    adopted = engines.engine().adopt(spec)
    assert adopted is not None
    seen = engines.engine().observe(adopted)
    assert (seen.running, seen.exit_code) == (False, 4)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_supervisor_that_had_not_recorded_itself_yet_is_found_by_its_processes(
    engines: Engines, warm: bool
) -> None:
    """The moment between the supervisor's start and its first write, made to last by
    taking the record away from a running launch."""
    engine = engines.warm_engine() if warm else engines.engine()
    spec = engines.spec(SLEEPER)
    launched = engine.launch(spec)
    record = Path(engine.files(spec).supervisor_file)
    wait_for(record.exists, "the supervisor to record itself")
    record.unlink()

    assert engines.engine().adopt(spec) == launched


def test_a_warm_launch_interrupted_before_the_go_ahead_leaves_nothing_to_adopt(
    engines: Engines,
) -> None:
    """The fork server forked a supervisor, then the control plane died before saying
    ``go``: the supervisor leaves having run nothing, and a new launch makes one copy."""
    engine = engines.warm_engine()
    assert engine.fork_server is not None
    spec = engines.spec(SLEEPER)
    files = engine.files(spec)
    plan = engine.dry_run(spec)
    entry = python_entry(plan.argv)
    assert entry is not None
    request = ForkRequest(
        plan.argv,
        entry,
        plan.working_dir,
        {**plan.env, "TIDEMILL_REPLICA_UID": files.uid},
        files.uid,
        files.supervisor_file,
        files.pid_file,
        files.exit_file,
        str(files.log_file),
    )
    with engine.fork_server.fork(request) as forked:
        abandoned = forked.pid
    wait_for(lambda: gone(abandoned), "the abandoned supervisor to leave")

    assert engine.adopt(spec) is None
    assert not Path(files.supervisor_file).exists()
    handle = engine.launch(spec)
    wait_for(lambda: Path(files.pid_file).exists(), "the command to start")
    time.sleep(0.2)
    assert len(carrying(files.uid)) == 2  # one supervisor, one command
    assert engine.adopt(spec) == handle


def test_launching_a_launch_id_again_is_refused(engines: Engines) -> None:
    engine = engines.engine()
    spec = engines.spec("pass")
    handle = engine.launch(spec)
    wait_exit(engine, handle)
    with pytest.raises(ValueError, match="already started a replica; adopt it"):
        engine.launch(spec)


@pytest.mark.parametrize(
    ("field", "value"),
    [("launch_id", "../x"), ("launch_id", ""), ("job_uid", "a/b"), ("job_uid", "..")],
)
def test_ids_that_cannot_name_a_file_are_refused_with_the_field(
    engines: Engines, field: str, value: str
) -> None:
    spec = replace(engines.spec("pass"), **{field: value})
    engine = engines.engine()
    with pytest.raises(ValueError, match=f"^{field}: .* cannot name a file"):
        engine.launch(spec)
    with pytest.raises(ValueError, match=f"^{field}: "):
        engine.adopt(spec)


def test_a_new_job_under_an_old_name_gets_a_log_of_its_own(engines: Engines) -> None:
    engine = engines.engine()
    old = engine.launch(engines.spec("print('from the old job')", job_uid="uid-old"))
    wait_exit(engine, old)
    new = engine.launch(engines.spec("print('from the new job')", job_uid="uid-new"))
    wait_exit(engine, new)

    old_log, new_log = engine.log_path(old), engine.log_path(new)
    assert old_log != new_log
    assert Path(str(old_log)).parent.name == "uid-old"
    assert "from the old job" not in Path(str(new_log)).read_text()
    assert "from the new job" in Path(str(new_log)).read_text()
    assert Path(str(old.data["exit_file"])).parent != Path(str(new.data["exit_file"])).parent


def test_every_node_is_this_machine(engines: Engines) -> None:
    engine = engines.engine()
    assert engine.replica_host("ads/ctr", "worker", 0, "node-7") == "127.0.0.1"
    port = engine.free_port("node-7")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
