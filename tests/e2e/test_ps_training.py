"""tidemill's own parameter servers in a real job: two PS replicas (``python -m
tidemill.ps``) and elastic workers on the local engine, sync mode, exact.

The workers keep a ledger on the servers (see ``ps_train.py``): every row ends equal to
the number of times its id occurs in the batches, so a sample trained twice or lost
shows as a wrong row. kill -9 of a worker mid-training rolls the servers back with the
survivors to their last commit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.ps_train import global_batch

pytestmark = pytest.mark.e2e
TRAIN = Path(__file__).with_name("ps_train.py")
STEPS = 60


def ps_job(name: str, result: Path, checkpoints: Path | None = None) -> dict[str, Any]:
    small = {"cpu": 0.1, "memory": "64Mi"}
    job: dict[str, Any] = {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "mode": "ps",
            "restartBackoffSeconds": 0.2,
            "roles": {
                "ps": {
                    "replicas": 2,
                    "resources": small,
                    "tables": [
                        {
                            "name": "ledger",
                            "dim": 2,
                            "initScale": 0.0,
                            "optimizer": {"name": "sgd", "lr": 1.0},
                        }
                    ],
                },
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "resources": small,
                    "command": [sys.executable, str(TRAIN), str(STEPS), str(result)],
                },
            },
        },
    }
    if checkpoints is not None:
        job["spec"]["checkpoint"] = {"dir": str(checkpoints), "everySteps": 5}
    return job


def expected_ledger(steps: int = STEPS) -> dict[str, float]:
    counts = Counter(i for step in range(steps) for i in global_batch(step))
    return {str(i): float(n) for i, n in sorted(counts.items())}


def reached(client: Any, name: str, step: int) -> bool:
    """Worker 0 logged ``step N`` (its logs exist once it was launched)."""
    if not any(r.role == "worker" and r.pid for r in client.get(name).replicas):
        return False
    return any(line.startswith(f"step {step} ") for line in client.logs(name, "worker", 0))


def test_a_ps_job_trains_every_sample_once_through_a_worker_killed_mid_training(
    start_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    _, client = start_server()
    result = tmp_path / "ledger.json"
    client.submit(ps_job("ledger", result))
    wait_for(lambda: reached(client, "ledger", 12), timeout_s=120, what="training past step 12")
    view = client.get("ledger")
    servers = sorted(r.node for r in view.replicas if r.role == "ps")
    assert len(servers) == 2
    victim = next(r for r in view.replicas if r.role == "worker" and r.index == 1)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    final = client.wait("ledger", timeout_s=240)

    logs = "\n".join(client.logs("ledger"))
    assert final.phase == "Succeeded", f"{final.message}\n{logs[-6000:]}"
    print(f"finished {time.monotonic() - killed_at:.1f}s after kill -9 of worker-1")
    assert json.loads(result.read_text()) == expected_ledger()


def test_a_ps_replica_killed_mid_training_rolls_every_shard_and_worker_back_to_the_checkpoint(
    start_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    _, client = start_server()
    result = tmp_path / "ledger.json"
    client.submit(ps_job("ledger", result, checkpoints=tmp_path / "ckpt"))
    wait_for(lambda: reached(client, "ledger", 17), timeout_s=120, what="training past step 17")
    victim = next(r for r in client.get("ledger").replicas if r.role == "ps" and r.index == 1)
    os.kill(victim.pid, signal.SIGKILL)

    final = client.wait("ledger", timeout_s=240)

    logs = "\n".join(client.logs("ledger"))
    assert final.phase == "Succeeded", f"{final.message}\n{logs[-6000:]}"
    assert json.loads(result.read_text()) == expected_ledger()
    # The shards went back to the last cut a checkpoint holds: the restarted one from
    # its snapshots (every shard, when the model had to come back from the checkpoint too).
    assert "[ps-1] tidemill-ps: replica 1 listening" in logs.split("ps-1 attempt 1 started")[-1]
    snapshots = sorted(p.name for p in (tmp_path / "ckpt").rglob("cut-*"))
    kept = sorted(p.name for p in (tmp_path / "ckpt").rglob("step-*"))
    assert len(kept) == 3, kept
    # 12 checkpoints were saved; only the snapshots the 3 kept ones name are left: a
    # full one and the deltas after it (4 at most per chain).
    assert 1 <= len(snapshots) <= 7, snapshots
