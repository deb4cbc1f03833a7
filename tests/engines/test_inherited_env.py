"""Replicas see only the listed server variables, started cold or forked warm: a secret
in the server's environment never reaches a job's code, not even in /proc/self/environ."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tidemill.engines._supervise import UID_VAR
from tidemill.engines.base import LaunchSpec
from tidemill.engines.inherited_env import is_inherited
from tidemill.engines.local import LocalEngine
from tidemill.stack_signal import STACK_DUMP_VAR

from .processes import DEADLINE_S, wait_exit

SECRETS = {"TIDEMILL_TOKEN": "server-token", "AWS_SECRET_ACCESS_KEY": "server-key"}
LISTED = {"NCCL_SOCKET_IFNAME": "lo", "LC_TIME": "C"}
PROBE = """
import json, os
with open("/proc/self/environ", "rb") as block:
    initial = dict(
        item.decode().split("=", 1) for item in block.read().split(b"\\0") if b"=" in item
    )
print("ENV " + json.dumps({"environ": dict(os.environ), "initial": initial}), flush=True)
"""


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's environment: secrets next to variables replicas may have."""
    for name, value in {**SECRETS, **LISTED}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["cold", "warm"])
def engine(
    request: pytest.FixtureRequest, server_env: None, tmp_path: Path
) -> Iterator[LocalEngine]:
    """Made after the server's environment is set, so its fork server starts with it."""
    engine = LocalEngine(tmp_path / "state", warm_start=request.param == "warm", preload=())
    yield engine
    engine.close()


def probe(engine: LocalEngine, tmp_path: Path, launch_id: str) -> dict[str, dict[str, str]]:
    (tmp_path / "probe.py").write_text(PROBE)
    spec = LaunchSpec(
        job="team/probe",
        job_uid="uid-1",
        launch_id=launch_id,
        role="worker",
        index=0,
        argv=("python", "probe.py"),
        env={"JOB_SETTING": "on", "AWS_REGION": "from-the-job"},
        working_dir=str(tmp_path),
        node="local",
    )
    handle = engine.launch(spec)
    assert wait_exit(engine, handle).exit_code == 0
    assert handle.data["warm_start"] is (engine.fork_server is not None and launch_id == "probe")
    log = Path(str(engine.log_path(handle))).read_text().splitlines()
    line = next(line for line in reversed(log) if line.startswith("ENV "))
    seen: dict[str, dict[str, str]] = json.loads(line.removeprefix("ENV "))
    return seen


def test_a_replica_gets_the_listed_server_variables_and_its_job_env_only(
    engine: LocalEngine, tmp_path: Path
) -> None:
    if engine.fork_server is not None:
        probe(engine, tmp_path, "warm-up")  # starts the fork server, cold
        engine.fork_server.wait_ready(DEADLINE_S)
    seen = probe(engine, tmp_path, "probe")

    for env in seen.values():
        assert not SECRETS.items() & env.items()
        assert env["PATH"] == os.environ["PATH"]
    environ = seen["environ"]
    assert LISTED.items() <= environ.items()
    assert (environ["JOB_SETTING"], environ["AWS_REGION"]) == ("on", "from-the-job")
    engine_set = {
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        UID_VAR,
        STACK_DUMP_VAR,
        "JOB_SETTING",
        "AWS_REGION",
    }
    assert {name for name in environ if not is_inherited(name)} == engine_set


def test_the_fork_server_itself_holds_no_secret(engine: LocalEngine, tmp_path: Path) -> None:
    if engine.fork_server is None:
        pytest.skip("a cold engine has no fork server")
    probe(engine, tmp_path, "warm-up")
    engine.fork_server.wait_ready(DEADLINE_S)
    assert engine.fork_server.pid is not None
    server_env = psutil.Process(engine.fork_server.pid).environ()
    assert not SECRETS.keys() & server_env.keys()
    assert server_env["NCCL_SOCKET_IFNAME"] == "lo"
