"""Fuzzing the REST API from its own OpenAPI document (schemathesis), on a budget.

A real `tidemill server` with a running job (so `/jobs/{name}` paths reach real code) takes
generated and mutated requests for every operation; the run must find no 5xx, the server
must still answer, its memory must stay bounded and a bystander job (a name the fuzzer is
not pointed at) must keep its process. The budget (``TIDEMILL_FUZZ_SECONDS``) keeps CI
short; raise it locally to search longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import SLEEP_FOREVER, running_pids, script_job, wait_for

pytestmark = pytest.mark.e2e

FUZZ_SECONDS = int(os.environ.get("TIDEMILL_FUZZ_SECONDS", "60"))
RSS_LIMIT_BYTES = 600 * 2**20
"""The server's resident memory after the run: a bounded request never grows it past this."""

CLUSTER = """
nodes:
  - {name: n, count: 2, cpu: 8, memory: 32Gi}
"""


def _config(tmp_path: Path) -> Path:
    """Path parameters point at the bystander, so operations on a job reach real code."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        textwrap.dedent(
            """
            [parameters]
            "path.name" = "fuzz"
            """
        )
    )
    return config


def test_fuzzing_the_openapi_finds_no_server_error_and_the_server_stays_well(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    # The target has finished, so following its logs ends (a running job's would not).
    client.submit(script_job("fuzz", "print('fuzz target')"))
    wait_for(lambda: client.get("fuzz").phase == "Succeeded", what="the fuzz target done")
    client.submit(script_job("bystander", SLEEP_FOREVER))
    [pid] = wait_for(lambda: running_pids(client, "bystander"), what="the bystander running")
    st = Path(sys.executable).with_name("st")

    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(_config(tmp_path)),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--phases",
            "coverage,fuzzing",
            "--max-time",
            str(FUZZ_SECONDS),
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 240,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    assert client.health()
    assert server.process is not None
    rss = psutil.Process(server.process.pid).memory_info().rss
    assert rss < RSS_LIMIT_BYTES, f"server RSS {rss / 2**20:.0f} MiB after fuzzing"
    survivor = client.get("bystander", namespace="default")
    assert survivor.phase == "Running"
    assert pid in [r.pid for r in survivor.replicas]
