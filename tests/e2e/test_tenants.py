"""Tenants end to end: a `tidemill server --auth` process, tokens made with the CLI, and
an elastic job whose master still saves its state and posts its events with the
credential the controller gave it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import psutil
import pytest
import yaml

from tests.e2e.conftest import ServerProcess, _processes_under, write_cluster
from tests.e2e.harness import master_address, wait_for
from tests.e2e.test_ps_training import expected_ledger, ps_job
from tidemill.client import Client
from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServerError, TableConfig
from tidemill.wire import decode, encode, split_address

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "elastic" / "train.py"
CLUSTER = "nodes:\n  - {name: n, cpu: 4, memory: 8Gi}\n"


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A server with auth on, and the admin token it wrote on its first start."""
    state = tmp_path / "state"
    state.mkdir()
    cluster = write_cluster(tmp_path / "cluster.yaml", CLUSTER)
    server = ServerProcess(state, cluster, args=("--auth",))
    server.start()
    admin = (state / "admin-token").read_text().strip()
    try:
        yield server, admin
    finally:
        if server.process is not None and server.process.poll() is None:
            with Client(server.url, token=admin) as client:
                for job in client.jobs():
                    client.delete(job.name, namespace=job.namespace)
        server.stop()
        for proc in _processes_under(state):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def tidemill(server: ServerProcess, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIDEMILL_TOKEN": token, "TIDEMILL_SERVER": server.url}
    env["TIDEMILL_CONFIG"] = str(server.state_dir / "no-config.yaml")
    return subprocess.run(
        [sys.executable, "-m", "tidemill", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def elastic_job(path: Path, result: Path) -> Path:
    """examples/elastic/train.py in namespace ml: two workers and tidemill's job master."""
    job = {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "counting", "namespace": "ml"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, str(TRAIN)],
                    "args": [
                        *("--steps", "60", "--batch", "20", "--step-time", "0.01"),
                        *("--result", str(result)),
                    ],
                }
            }
        },
    }
    path.write_text(yaml.safe_dump(job))
    return path


def test_an_elastic_job_under_auth_keeps_its_master_state(
    auth_server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, admin = auth_server
    assert "admin token written to" in server.server_log()
    made = tidemill(
        server, admin, "token", "create", "-n", "ml", "--role", "editor", "--name", "trainer"
    )
    assert made.returncode == 0, made.stderr
    editor = made.stdout.strip()
    job_file = elastic_job(tmp_path / "job.yaml", tmp_path / "result.json")

    submitted = tidemill(server, editor, "submit", str(job_file), "--wait")

    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert json.loads((tmp_path / "result.json").read_text())["committed_step"] == 60
    with Client(server.url, token=admin) as client:
        saved = httpx.get(
            f"{server.url}/api/v1/jobs/counting/master-state",
            params={"namespace": "ml"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["state"]
        events = client.job_events("counting", "ml")
        master_log = list(client.logs("counting", role="master", index=0, namespace="ml"))
    assert saved is not None and saved["epoch"] >= 1 and saved["finished"], saved
    reasons = {e.reason: e.message for e in events}
    assert "EpochStarted" in reasons  # posted by the master with its own credential
    assert reasons["Submitted"].endswith("by token 'trainer' (editor, ml)")
    assert not [line for line in master_log if "could not" in line], master_log
    listed = tidemill(server, editor, "jobs", "-o", "json")
    assert [(j["namespace"], j["name"]) for j in json.loads(listed.stdout)] == [("ml", "counting")]


def test_a_ps_job_under_auth_trains_exactly_while_its_master_and_replicas_refuse_strangers(
    auth_server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    """The job's master and PS replicas take only connections that prove the job's
    credential: its own workers and its master's STATS polls do; a process without it
    is refused by both, and the job trains on, every sample once."""
    server, admin = auth_server
    steps = 300
    job = ps_job("ledger", tmp_path / "ledger.json")
    job["metadata"]["namespace"] = "ml"
    job["spec"]["roles"]["worker"]["command"][2] = str(steps)
    table = TableConfig("ledger", 2, OptimizerConfig("sgd", lr=1.0), 0.0)
    with Client(server.url, token=admin) as client:
        client.submit(job)
        insight = wait_for(
            lambda: (view := client.get("ledger", "ml").ps) is not None
            and all(shard.reachable for shard in view.shards)
            and view.tables[0].rows > 0
            and view,
            timeout_s=120,
            what="the master's STATS polls answered by both replicas",
        )
        master = cast(
            tuple[str, int],
            wait_for(lambda: master_address(client, "ledger", "ml"), timeout_s=30, what="master"),
        )
        replicas = [split_address(shard.address) for shard in insight.shards]
        with pytest.raises(PSServerError, match="sent no proof of the job's credential"):
            PSClient(PSConfig((table,)), replicas, same_host_socket=False)
        with socket.create_connection(master, timeout=5) as sock:
            sock.sendall(encode({"op": "register", "replica": "worker-0", "pid": 1,
                                 "status": "new"}))
            answer = decode(sock.makefile("rb").readline())
        assert answer["op"] == "refused" and "sent no proof" in answer["message"], answer

        final = client.wait("ledger", namespace="ml", timeout_s=240)

    assert final.phase == "Succeeded", final.message
    assert json.loads((tmp_path / "ledger.json").read_text()) == expected_ledger(steps)


def test_a_server_beyond_loopback_without_auth_exits_2_saying_what_to_do(tmp_path: Path) -> None:
    server = [sys.executable, "-m", "tidemill", "server", "--host", "0.0.0.0", "--port", "0"]
    result = subprocess.run(
        [*server, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: refusing to serve on 0.0.0.0 without auth")
    assert "--auth" in result.stderr and "--insecure" in result.stderr
