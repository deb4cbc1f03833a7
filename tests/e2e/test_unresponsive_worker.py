"""A worker that stops answering (native code holding the GIL: no heartbeats) is given
up by the job master, killed by the controller and replaced; the job still finishes,
and the hung worker's log ends its first attempt with where it hung."""

from __future__ import annotations

import sys
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
CLUSTER = "nodes:\n  - {name: n, cpu: 8, memory: 16Gi}\n"

HANGS_ONCE = """
import ctypes, os, time
import torch
from tidemill.runtime import ElasticState, elastic

model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
state = ElasticState(model, optimizer)
stuck = os.environ["TIDEMILL_INDEX"] == "1" and os.environ["TIDEMILL_ATTEMPT"] == "0"
trained_here = 0  # steps this process trained: it may join after the job's step 20

@elastic(state)
def train(ctx):
    global trained_here
    for step in ctx.steps(until=300):
        ctx.model(torch.ones(1, 1)).sum().backward()
        optimizer.step()
        state.step += 1
        trained_here += 1
        if state.step % 10 == 0:
            state.commit()
        if stuck and trained_here == 10:
            ctypes.PyDLL(None).sleep(600)  # holds the GIL: no thread of this process runs
        time.sleep(0.05)

train()
"""


def job() -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "stuck"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, "-c", HANGS_ONCE],
                    "restartPolicy": "OnFailure",
                }
            },
            "restartBackoffSeconds": 0.5,
        },
    }


def test_a_worker_that_stops_answering_is_killed_and_replaced(start_server: Any) -> None:
    _, client = start_server(CLUSTER)
    client.submit(job())

    final = client.wait("stuck", timeout_s=180)

    assert final.phase == "Succeeded", final.message
    events = client.job_events("stuck")
    reasons = [e.reason for e in events]
    assert "ReplicaUnresponsive" in reasons, reasons
    unresponsive = next(e for e in events if e.reason == "ReplicaUnresponsive")
    assert unresponsive.replica == "worker-1"
    lost = [e.message for e in events if e.reason == "WorkerLost"]
    assert any("no heartbeat" in message for message in lost), lost
    assert "its stacks from before the kill are in the server's log" in unresponsive.message
    worker = next(r for r in final.replicas if r.role == "worker" and r.index == 1)
    assert worker.restarts >= 1

    log = list(client.logs("stuck", role="worker", index=1))
    heading = next(i for i, line in enumerate(log) if "hung; its stacks before the kill" in line)
    restarted = next(i for i, line in enumerate(log) if "attempt 1 started" in line)
    stacks = "\n".join(log[heading:restarted])
    assert "line 23 in train" in stacks, stacks  # HANGS_ONCE's line 23: the PyDLL sleep
