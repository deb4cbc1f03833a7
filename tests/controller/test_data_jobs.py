"""A job with ``spec.data`` gets a job master even with fixed sizes, and its plan as
``TIDEMILL_DATA``; the master outlives a gang restart and comes back after a SIGTERM.

A real controller on a SQLite store starts real processes through the local engine:
the master is ``python -m tidemill.master``, the workers are Python one-liners.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidemill.api.cluster import ClusterSpec, NodeSpec
from tidemill.api.data import DataSpec
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.controller.rows import job_snapshot
from tidemill.engines.local import LocalEngine
from tidemill.store.store import Store
from tidemill.store.tables import JobRow, ReplicaRow

REPORT = """\
import json, os, socket, sys, time
host, port = os.environ["TIDEMILL_MASTER_ADDR"].split(":")
deadline = time.monotonic() + 20
while True:  # the master may still be importing
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
names = ("TIDEMILL_DATA", "TIDEMILL_MASTER_ADDR", "TIDEMILL_ELASTIC", "TIDEMILL_ATTEMPT")
seen = {k: os.environ.get(k) for k in names}
print("SEEN " + json.dumps(seen), flush=True)
if os.environ["TIDEMILL_INDEX"] == "1" and os.environ["TIDEMILL_ATTEMPT"] == FAIL_ON:
    sys.exit(1)
while True:
    time.sleep(0.2)
"""


def data_job(folder: Path, fail_on_attempt: str = "never") -> TrainingJob:
    """Two fixed workers in allreduce mode reading one Parquet folder."""
    pq.write_table(pa.table({"x": [1, 2, 3]}), folder / "part-0.parquet")
    script = REPORT.replace("FAIL_ON", repr(fail_on_attempt))
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "fixed-data", "namespace": "ads"},
            "spec": {
                "restartBackoffSeconds": 0.1,
                "roles": {
                    "worker": {
                        "replicas": 2,
                        "resources": {"cpu": 0.5, "memory": "64Mi"},
                        "command": [sys.executable, "-c", script],
                        "workingDir": str(folder),
                    }
                },
                "data": {
                    "stages": [{"name": "all", "sources": [{"parquet": {"path": str(folder)}}]}]
                },
            },
        }
    )


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    engine = LocalEngine(tmp_path / "engine", warm_start=False)
    cluster = ClusterSpec(nodes=[NodeSpec(name="n", cpu=4, memory="8Gi")])
    running = Controller(
        Store.in_folder(tmp_path / "state"), engine, cluster, ControllerConfig(stop_grace_s=1)
    )
    yield running
    with running.store.read() as tx:
        jobs = [(job.namespace, job.name) for job in tx.jobs()]
    for namespace, name in jobs:
        running.delete(namespace, name)
    engine.close()


def until(controller: Controller, check: Callable[[JobRow], object], what: str) -> JobRow:
    """Reconcile until ``check`` holds for the job's row; returns the row.

    The master starts cold (``python -m tidemill.master`` imports torch), and workers
    wait for it to listen: under a doubled load a gang restart once took over 30 s."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        controller.reconcile_once()
        with controller.store.read() as tx:
            row = tx.job("ads", "fixed-data")
            assert row is not None
            if check(row):
                return row
        time.sleep(0.05)
    with controller.store.read() as tx:
        events = [f"{e.reason}: {e.message}" for e in tx.events("ads/fixed-data")]
    replicas = [(r.replica_name, r.phase, r.starts, r.pid) for r in row.replicas]
    pytest.fail(f"timed out waiting for {what}; replicas {replicas}; events {events}")


def seen_by(log_path: str | None) -> list[dict[str, str | None]]:
    """What a worker printed about its environment, one entry per start."""
    lines = Path(log_path or "").read_text().splitlines() if log_path else []
    return [json.loads(line.removeprefix("SEEN ")) for line in lines if line.startswith("SEEN ")]


def replica(row: JobRow, name: str) -> ReplicaRow:
    return next(r for r in row.replicas if r.replica_name == name)


def test_a_fixed_job_with_data_gets_a_master_and_every_process_gets_the_plan(
    controller: Controller, tmp_path: Path
) -> None:
    job = data_job(tmp_path)
    assert job.spec.data is not None
    controller.submit(job)

    row = until(
        controller,
        lambda r: all(seen_by(x.log_path) for x in r.replicas if x.role == "worker"),
        "both workers to report their environment",
    )

    assert sorted(r.replica_name for r in row.replicas) == ["master-0", "worker-0", "worker-1"]
    address = f"127.0.0.1:{row.job_master_port}"
    for worker in (r for r in row.replicas if r.role == "worker"):
        [seen] = seen_by(worker.log_path)
        assert seen["TIDEMILL_MASTER_ADDR"] == address
        assert seen["TIDEMILL_ELASTIC"] is None  # fixed sizes: ranks still come from RANK
        assert DataSpec.model_validate_json(seen["TIDEMILL_DATA"] or "") == job.spec.data
    with controller.store.read() as tx:
        row = tx.job("ads", "fixed-data")
        assert row is not None
        snapshot = job_snapshot(row)
        plans = {
            r.name: controller.engine.dry_run(controller.launcher.launch_spec(snapshot, job, r))
            for r in snapshot.replicas
        }
    master = plans["master-0"]
    assert master.argv[1:] == ("-m", "tidemill.master")
    assert master.env["TIDEMILL_MASTER_PORT"] == str(row.job_master_port)
    assert (master.env["TIDEMILL_ELASTIC_MIN"], master.env["TIDEMILL_ELASTIC_MAX"]) == ("2", "2")
    for plan in plans.values():
        assert DataSpec.model_validate_json(plan.env["TIDEMILL_DATA"]) == job.spec.data


def test_a_job_without_data_or_elastic_roles_runs_without_a_master(
    controller: Controller, tmp_path: Path
) -> None:
    document = data_job(tmp_path).model_dump(by_alias=True, exclude_none=True)
    del document["spec"]["data"]
    # Without a master the report script would exit at once: these workers just sleep.
    document["spec"]["roles"]["worker"]["command"] = [
        sys.executable,
        "-c",
        "import time; time.sleep(600)",
    ]
    controller.submit(TrainingJob.model_validate(document))

    row = until(controller, lambda r: r.phase == "Running", "the job to run")

    assert sorted(r.replica_name for r in row.replicas) == ["worker-0", "worker-1"]
    assert row.job_master_port is None


def test_the_master_keeps_running_through_a_gang_restart(
    controller: Controller, tmp_path: Path
) -> None:
    controller.submit(data_job(tmp_path, fail_on_attempt="0"))
    first = until(controller, lambda r: replica(r, "master-0").pid, "the master's pid")
    master_pid = replica(first, "master-0").pid

    # worker-0's first launch may be stopped by the gang restart before it reports.
    row = until(
        controller,
        lambda r: "1" in {s["TIDEMILL_ATTEMPT"] for s in seen_by(replica(r, "worker-0").log_path)},
        "worker-0 to start again with the gang",
    )

    master = replica(row, "master-0")
    assert row.gang_restarts == 1
    assert (master.starts, master.pid, master.phase) == (1, master_pid, "Running")
    with socket.create_connection(("127.0.0.1", row.job_master_port or 0), timeout=5):
        pass


def test_a_master_stopped_by_sigterm_is_started_again_on_its_port(
    controller: Controller, tmp_path: Path
) -> None:
    controller.submit(data_job(tmp_path))
    row = until(controller, lambda r: replica(r, "master-0").pid, "the master's pid")
    port = row.job_master_port

    os.kill(replica(row, "master-0").pid, signal.SIGTERM)

    row = until(controller, lambda r: replica(r, "master-0").starts == 2, "a second master")
    assert row.job_master_port == port
    with controller.store.read() as tx:
        reasons = [event.reason for event in tx.events("ads/fixed-data")]
    assert "MasterRestarting" in reasons
    assert row.phase == "Running"
