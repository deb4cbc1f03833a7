"""A real control plane in this process, for tests of what it shows about jobs.

One node with one core: ``busy`` (no ``spec.data``) runs and fills it, ``ctr`` (a
backfill stage, then a stream) waits behind it. Neither has a job master running, so
the state a test saves through the REST API stays as saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import delete_every_job, wait_for
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

CLUSTER = "nodes:\n  - {name: n1, cpu: 1, memory: 4Gi}\n"

DATA = {
    "stages": [
        {
            "name": "backfill",
            "epochs": 1,
            "sources": [{"iceberg": {"table": "ads.clicks", "filter": "day >= 20261101"}}],
        },
        {
            "name": "online",
            "sources": [{"kafka": {"bootstrap": "127.0.0.1:9", "topic": "clicks"}}],
        },
    ]
}

INSIGHT: dict[str, Any] = {
    "stage": "online",
    "updated_at": 1764640000.0,
    "stages": [
        {
            "name": "backfill",
            "index": 0,
            "state": "done",
            "epochs": 1,
            "pass_index": 0,
            "started_at": 1764639000.0,
            "finished_at": 1764639500.0,
            "sources": [
                {
                    "name": "ads.clicks",
                    "kind": "iceberg",
                    "priority": 0,
                    "weight": 1.0,
                    "records": 20000,
                    "bytes": 640000,
                    "records_per_s": 51234.5,
                    "lag_records": None,
                    "lag_s": None,
                    "shards_done": 8,
                    "shards_in_flight": 0,
                    "shards_pending": 0,
                    "workers": {"worker-0": 10240, "worker-1": 9760},
                }
            ],
        },
        {
            "name": "online",
            "index": 1,
            "state": "running",
            "epochs": 1,
            "pass_index": 0,
            "started_at": 1764639500.0,
            "finished_at": None,
            "sources": [
                {
                    "name": "clicks",
                    "kind": "kafka",
                    "priority": 0,
                    "weight": 1.0,
                    "records": 4100,
                    "bytes": 300000,
                    "records_per_s": 812.0,
                    "lag_records": 37,
                    "lag_s": 0.4,
                    "shards_done": 0,
                    "shards_in_flight": 2,
                    "shards_pending": 0,
                    "workers": {"worker-0": 2100, "worker-1": 2000},
                }
            ],
        },
    ],
}
"""What a job master saves under ``data_insight`` midway through the online stage."""


def job(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job whose one worker takes the whole node and sleeps."""
    spec: dict[str, Any] = {
        "roles": {
            "worker": {
                "replicas": 1,
                "resources": {"cpu": 1, "memory": "64Mi"},
                "command": ["sleep", "600"],
            }
        }
    }
    if data is not None:
        spec["data"] = data
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def save_master_state(url: str, name: str, state: dict[str, Any]) -> None:
    """What the job master does: PUT its whole state."""
    response = httpx.put(f"{url}/api/v1/jobs/{name}/master-state", json={"state": state})
    response.raise_for_status()


@contextmanager
def data_server(state_dir: Path) -> Iterator[str]:
    """The server's URL, with ``busy`` running and ``ctr`` pending; all gone after."""
    cluster = state_dir / "cluster.yaml"
    cluster.write_text(CLUSTER)
    runner = ServerRunner(state_dir, cluster, port=0)
    url = runner.start()
    client = Client(url)
    try:
        client.submit(job("busy"))
        wait_for(lambda: client.get("busy").phase == "Running", 30, "busy running")
        client.submit(job("ctr", DATA))
        wait_for(lambda: client.get("ctr").pending_reason, 30, "ctr waiting with a reason")
        yield url
    finally:
        delete_every_job(client)
        client.close()
        runner.stop()


def get_job(url: str, name: str) -> dict[str, Any]:
    """The REST view of job ``name`` (200 asserted)."""
    response = httpx.get(f"{url}/api/v1/jobs/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def metric_samples(url: str, prefix: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every ``/metrics`` sample whose family starts with ``prefix``: (name, sorted
    labels) -> value."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith(prefix)
        for sample in family.samples
    }
