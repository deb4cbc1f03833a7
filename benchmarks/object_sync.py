"""What finished jobs cost a tidemill server on the Kubernetes engine while nothing
happens, against the emulated API server (tests/kube), not a real cluster.

The engine keeps each job's TrainingJob object in step with the store once a second.
A finished job's row no longer changes, yet each sync read every job's row with its
replicas. Here a store is filled with ``--jobs`` finished jobs (two replicas each, as
the controller leaves them) and the emulator with their objects; a ``tidemill server
--engine kubernetes`` process starts on them, writes their statuses and settles; then its
CPU is sampled for ``--seconds``. ``--baseline SRC`` runs the same first with the
server from another checkout's ``src`` (the code before a change) and prints the ratio.
Prints a table and writes ``benchmarks/results/object_sync.json``.

    python benchmarks/object_sync.py [--jobs 10000] [--seconds 30] [--baseline PATH/src]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from repo_path import ROOT  # first: the repository's src, not this folder, on sys.path

# isort: split

import httpx
import psutil
import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from tests.e2e.kubernetes import CRD
from tests.kube import KubeEmulator
from tidemill.api.crd import to_custom_object
from tidemill.api.job import TrainingJob
from tidemill.engines.kubernetes import names
from tidemill.engines.local import free_port
from tidemill.store.store import Store
from tidemill.store.tables import JobRow, ReplicaRow

RESULTS = Path(__file__).parent / "results" / "object_sync.json"
WHERE = "emulated API server (tests/kube), not a real cluster"
NAMESPACE = "default"


def finished_job(name: str) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "tidemill/v1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "roles": {
                    "worker": {
                        "replicas": 2,
                        "image": "bench/worker:1",
                        "resources": {"cpu": 1, "memory": "1Gi"},
                        "command": ["python", "train.py"],
                    }
                }
            },
        }
    )


def fill(state: Path, kube: KubeEmulator, kubeconfig: str, count: int) -> None:
    """``count`` Succeeded jobs in a new store, and an object for each, annotated with its
    job's uid as the engine leaves it."""
    store = Store.in_folder(state)
    now = time.time()
    with (
        store.transaction() as tx,
        kube_config.new_client_from_config(config_file=kubeconfig) as api,
    ):
        kube_client.ApiextensionsV1Api(api).create_custom_resource_definition(
            yaml.safe_load(CRD.read_text())
        )
        objects = kube_client.CustomObjectsApi(api)
        for i in range(count):
            job = finished_job(f"done-{i:05d}")
            uid = str(uuid.uuid4())
            row = JobRow(
                uid=uid, namespace=NAMESPACE, name=job.metadata.name, spec=job.to_document(),
                queue=NAMESPACE, priority=0, phase="Succeeded", message="every worker succeeded",
                conditions=[
                    {"type": kind, "status": kind == "Succeeded", "reason": reason,
                     "message": reason, "last_transition_time": now}
                    for kind, reason in (("Pending", "Submitted"), ("Running", "Started"),
                                         ("Succeeded", "Succeeded"))
                ],
                created_at=now - 600, started_at=now - 590, finished_at=now - 10,
                desired={"worker": 2},
            )  # fmt: skip
            for index in range(2):
                row.replicas.append(
                    ReplicaRow(
                        role="worker", index=index, phase="Succeeded", node=f"node-{index}",
                        cpu_millis=1000, memory_bytes=1 << 30, exit_code=0,
                        handle={"pod": f"{job.metadata.name}-worker-{index}-abc123",
                                "namespace": NAMESPACE},
                        launch_id=uuid.uuid4().hex[:12], started_at=now - 590,
                        finished_at=now - 10,
                    )
                )  # fmt: skip
            tx.session.add(row)
            body = to_custom_object(job)
            body["metadata"]["annotations"] = {
                names.UID_ANNOTATION: uid,
                names.SUSPEND_ANNOTATION: names.flag(False),
            }
            objects.create_namespaced_custom_object(
                names.GROUP, names.VERSION, NAMESPACE, names.PLURAL, body
            )
    store.close()


def idle_cpu(kube: KubeEmulator, state: Path, src: str, seconds: float) -> dict[str, Any]:
    """A server process on the filled store: settled, then its CPU over ``seconds``."""
    kubeconfig = kube.write_kubeconfig(str(state.parent / "server.kubeconfig"))
    port = free_port()
    argv = [sys.executable, "-m", "tidemill", "server", "--state-dir", str(state)]
    argv += ["--port", str(port), "--engine", "kubernetes", "--kubeconfig", kubeconfig]
    env = {**os.environ, "PYTHONPATH": src}
    with open(state.parent / "server.log", "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up; see {state.parent}/server.log")
            time.sleep(0.2)
        calls = len(kube.api.calls)
        while True:  # until a quiet 10 s: every status written
            time.sleep(10)
            if len(kube.api.calls) - calls < 5:
                break
            calls = len(kube.api.calls)
        server = psutil.Process(process.pid)
        before, began = server.cpu_times(), time.perf_counter()
        time.sleep(seconds)
        after = server.cpu_times()
        used = after.user + after.system - before.user - before.system
        return {"cores": used / (time.perf_counter() - began), "api_calls": len(kube.api.calls)}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline", help="also run the server from this src folder, first")
    args = parser.parse_args()
    sides = [("baseline", args.baseline)] if args.baseline else []
    sides.append(("tidemill", str(ROOT / "src")))
    figures: dict[str, Any] = {}
    kube = KubeEmulator().start()
    try:
        with tempfile.TemporaryDirectory(prefix="tidemill-objsync-") as folder:
            state = Path(folder) / "state"
            setup = kube.write_kubeconfig(str(Path(folder) / "setup.kubeconfig"))
            print(f"filling {args.jobs:,} finished jobs and their objects...", flush=True)
            fill(state, kube, setup, args.jobs)
            for side, src in sides:
                figures[side] = idle_cpu(kube, state, src, args.seconds)
                print(
                    f"{side:>8}: an idle server holding {args.jobs:,} finished jobs uses "
                    f"{figures[side]['cores'] * 100:.1f}% of a core",
                    flush=True,
                )
    finally:
        kube.close()
    if args.baseline:
        figures["ratio"] = figures["tidemill"]["cores"] / figures["baseline"]["cores"]
        print(f"{'':>8}  {figures['ratio']:.3f}x the baseline's CPU", flush=True)
    result = {
        "benchmark": "object_sync",
        "where": WHERE,
        "jobs": args.jobs,
        "seconds": args.seconds,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "baseline": args.baseline,
        "figures": figures,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
