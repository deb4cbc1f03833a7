"""What replicas use, as people and operators read it: a real server runs a job whose
worker-0 spins a core with 200 MB resident and whose worker-1 sleeps; the job view and
/metrics tell them apart."""

from __future__ import annotations

import sys
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import wait_for
from tidemill.api.status import JobView, UsageView
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

HELD_BYTES = 200 * 2**20

WORK = f"""
import os, time
if os.environ["TIDEMILL_INDEX"] == "0":
    held = bytearray({HELD_BYTES})
    for i in range(0, len(held), 4096):
        held[i] = 1
    while True:
        pass
time.sleep(600)
"""


def two_workers() -> dict[str, object]:
    return {
        "metadata": {"name": "usage"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 2,
                    "resources": {"cpu": 1, "memory": "512Mi"},
                    "command": [sys.executable, "-c", WORK],
                }
            }
        },
    }


def usage_of(view: JobView) -> dict[str, UsageView | None]:
    return {f"{r.role}-{r.index}": r.usage for r in view.replicas}


def test_the_job_view_and_metrics_show_what_each_replica_uses(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(two_workers())
        wait_for(lambda: client.get("usage").phase == "Running", 30, "usage running")

        def spinning() -> dict[str, UsageView | None] | None:
            seen = usage_of(client.get("usage"))
            busy = seen["worker-0"]
            ready = busy is not None and busy.memory_bytes > HELD_BYTES
            return seen if ready and (busy.cpu_cores or 0) > 0.3 else None

        seen = wait_for(spinning, 30, "worker-0 measured spinning with 200 MB")
        assert isinstance(seen, dict)
        busy, idle = seen["worker-0"], seen["worker-1"]
        assert busy is not None and idle is not None
        assert idle.cpu_cores is not None and idle.cpu_cores < 0.2, idle
        assert idle.memory_bytes < HELD_BYTES
        assert busy.gpus == []

        def scraped() -> dict[tuple[str, str], float] | None:
            text = httpx.get(f"{runner.url}/metrics").text
            found = {
                (s.name, s.labels["replica"]): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name.startswith("tidemill_replica_")
            }
            return found if found.get(("tidemill_replica_cpu_cores", "worker-0"), 0) > 0.3 else None

        samples = wait_for(scraped, 30, "worker-0 spinning on /metrics")
        assert isinstance(samples, dict)
    assert samples[("tidemill_replica_cpu_requested_cores", "worker-0")] == 1.0
    assert samples[("tidemill_replica_memory_requested_bytes", "worker-1")] == 512 * 2**20
    assert samples[("tidemill_replica_memory_bytes", "worker-0")] > HELD_BYTES
    assert samples[("tidemill_replica_cpu_cores", "worker-1")] < 0.2
