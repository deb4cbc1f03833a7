"""Training metrics end to end: a `tidemill server --auth` process runs an elastic job
whose training function calls ``tidemill.runtime.report``; the reports reach the REST
API (bounded, steps in order), ``/metrics`` and TensorBoard event files, bad ones are
refused with a reason, a flood is cut, and another tenant may not read them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from tests.e2e.conftest import ServerProcess, _processes_under, write_cluster
from tests.e2e.harness import wait_for
from tidemill.client import Client

pytestmark = pytest.mark.e2e
CLUSTER = "nodes:\n  - {name: n, cpu: 4, memory: 8Gi}\n"
HISTORY = 120
STEPS = 200
TRAIN = f"""
import time
import torch
import tidemill.runtime as rt
from tidemill.runtime import ElasticState, elastic

model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
state = ElasticState(model, optimizer)

@elastic(state)
def train(ctx):
    for _ in ctx.steps(until={STEPS}, samples_per_step=8):
        loss = (ctx.model(torch.ones(8, 1)) - 1).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step += 1
        rt.report(state.step, loss=1.0 / state.step, accuracy=state.step / {STEPS})
        if state.step == 5:
            rt.report(state.step, **{{"val loss": 1.0}})
            rt.report(state.step, bad=float("nan"))
        if state.step == 6 and ctx.rank == 0:
            for i in range(3000):
                rt.report(state.step, flood=float(i))
        if state.step % 10 == 0:
            state.commit()
        time.sleep(0.03)

train()
"""


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    state = tmp_path / "state"
    state.mkdir()
    cluster = write_cluster(tmp_path / "cluster.yaml", CLUSTER)
    server = ServerProcess(state, cluster, args=("--auth", "--metrics-history", str(HISTORY)))
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


def tidemill(server: ServerProcess, token: str, *argv: str) -> str:
    env = {**os.environ, "TIDEMILL_TOKEN": token, "TIDEMILL_SERVER": server.url}
    env["TIDEMILL_CONFIG"] = str(server.state_dir / "no-config.yaml")
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [sys.executable, "-m", "tidemill", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_token(server: ServerProcess, admin: str, namespace: str, role: str, name: str) -> str:
    argv = ["token", "create", "-n", namespace, "--role", role, "--name", name]
    return tidemill(server, admin, *argv).strip()


def job_file(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "reporting", "namespace": "ml"},
        "spec": {
            "tensorboard": {"dir": str(tmp_path / "tb")},
            "roles": {
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, str(script)],
                }
            },
        },
    }


def get(server: ServerProcess, token: str, path: str, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{server.url}{path}", params=params, headers=headers, timeout=30)


def test_reports_reach_the_api_metrics_and_tensorboard_and_bad_ones_are_refused(
    auth_server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    server, admin = auth_server
    editor = make_token(server, admin, "ml", "editor", "trainer")
    stranger = make_token(server, admin, "other", "editor", "stranger")
    with Client(server.url, token=editor) as client:
        client.submit(yaml.safe_dump(job_file(tmp_path)))

        def live_loss_of_worker_0() -> list[str]:
            text = get(server, admin, "/metrics").text
            return [
                line
                for line in text.splitlines()
                if line.startswith("tidemill_training_metric{")
                and 'name="loss"' in line
                and 'job_name="reporting"' in line
                and 'replica="worker-0"' in line
            ]

        # Either replica may report first: wait for worker-0's loss, not just any.
        wait_for(live_loss_of_worker_0, 120, "worker-0's loss on /metrics while the job runs")
        wait_for(
            lambda: client.get("reporting", namespace="ml").phase == "Succeeded",
            180,
            "the job to succeed",
        )
        events = {e.reason: e.message for e in client.job_events("reporting", "ml")}

    answer = get(server, editor, "/api/v1/jobs/reporting/metrics", namespace="ml")
    assert answer.status_code == 200, answer.text
    view = answer.json()
    items = view["items"]
    assert view["kept"] == HISTORY and len(items) == HISTORY  # bounded: the oldest dropped
    for replica in ("worker-0", "worker-1"):
        steps = [p["step"] for p in items if p["replica"] == replica and "loss" in p["values"]]
        assert steps == sorted(steps) and steps[-1] == STEPS, (replica, steps[-5:])
    latest = {(m["replica"], m["name"]): m for m in view["latest"]}
    assert latest[("worker-0", "loss")]["step"] == STEPS
    assert latest[("worker-1", "loss")]["value"] == pytest.approx(1.0 / STEPS)
    for replica in ("worker-0", "worker-1"):  # the runtime's own, per rank
        assert 0 < latest[(replica, "step_time_s")]["value"] < 5
        assert latest[(replica, "samples_per_s")]["value"] > 0
    assert not any("val loss" in name or name == "bad" for _, name in latest)

    refused = events["MetricsRefused"]
    assert "'val loss' is not an identifier" in refused, refused
    assert "bad=nan is not finite" in refused, refused
    limited = events["MetricsRateLimited"]
    assert limited.startswith("worker-") and "reports metrics faster than 100/s" in limited
    assert sum(1 for _, name in latest if name == "flood") == 1

    described = tidemill(server, editor, "describe", "reporting", "-n", "ml")
    section = described.split("Training metrics", 1)[1].split("Events", 1)[0]
    assert "STEP_TIME_S" in section and "SAMPLES_PER_S" in section, described
    rows = {line.split()[0]: line.split() for line in section.splitlines() if "worker-" in line}
    assert rows["worker-0"][1] == rows["worker-1"][1] == str(STEPS), section

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flooder = limited.split()[0]
    first_steps = []
    for replica in ("worker-0", "worker-1"):  # one run per replica
        board = EventAccumulator(str(tmp_path / "tb" / replica))
        board.Reload()
        losses = board.Scalars("loss")
        steps = [e.step for e in losses]
        if replica == flooder:  # its flood used up its rate: reports were cut for a while
            assert steps == sorted(steps) and steps[-1] == STEPS, steps
        else:  # joined late, it starts at the step the group had reached
            assert steps == list(range(steps[0], STEPS + 1)), (replica, steps[:5])
        assert losses[-1].value == pytest.approx(1.0 / STEPS)
        assert "step_time_s" in board.Tags()["scalars"]
        first_steps.append(steps[0])
    assert min(first_steps) == 1

    denied = get(server, stranger, "/api/v1/jobs/reporting/metrics", namespace="ml")
    assert denied.status_code == 403, denied.text
    assert "stranger" in denied.json()["error"]["message"]
    forged = httpx.post(
        f"{server.url}/api/v1/jobs/reporting/metrics",
        params={"namespace": "ml"},
        headers={"Authorization": f"Bearer {editor}"},
        json={"points": [{"replica": "worker-0", "step": 1, "time": 1.0, "values": {"loss": 9}}]},
        timeout=30,
    )
    assert forged.status_code == 403, forged.text
