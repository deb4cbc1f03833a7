"""PS insight of a real PS job while it trains: the job master polls the two PS replicas'
STATS, and `tidemill describe`, GET /api/v1/jobs/{name} and /metrics show the table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.e2e.harness import wait_for
from tests.e2e.test_ps_training import ps_job
from tidemill.api.status import PSTableInsightView
from tidemill.cli.main import app

pytestmark = pytest.mark.e2e
STEPS = 400
"""Long enough (about 30 s here) to still be training while every view is read."""


def training_ledger(client: Any) -> PSTableInsightView | None:
    """The ledger table once the master saw rows in it and pushes between two polls."""
    view = client.get("insight").ps
    tables = {} if view is None else {t.name: t for t in view.tables}
    table = tables.get("ledger")
    return table if table is not None and table.rows > 0 and table.push_rows_per_s > 0 else None


def described_ledger(url: str) -> list[str] | None:
    """The ledger row of `tidemill describe`'s Parameter servers table, while it trains."""
    result = CliRunner().invoke(
        app, ["describe", "insight", "--server", url], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "\nParameter servers\n" in out, out
    [line] = [line for line in out.splitlines() if line.split()[:1] == ["ledger"]]
    cells = [cell.strip() for cell in line.split("  ") if cell.strip()]
    rows, push_rate = (float(cells[i].replace(",", "")) for i in (1, 6))
    return cells if rows > 0 and push_rate > 0 else None


def ledger_samples(url: str) -> dict[str, float] | None:
    """tidemill_ps_* of the ledger table, once it holds rows and takes pushes."""
    text = httpx.get(f"{url}/metrics").text
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("tidemill_ps_")
        for sample in family.samples
        if sample.labels.get("job_name") == "insight" and sample.labels.get("table") == "ledger"
    }
    rows, pushes = (
        found.get("tidemill_ps_rows", 0),
        found.get("tidemill_ps_push_rows_per_second", 0),
    )
    return found if rows > 0 and pushes > 0 else None


def test_describe_rest_and_metrics_show_the_ps_table_filling_while_the_job_trains(
    start_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    server, client = start_server()
    job = ps_job("insight", tmp_path / "ledger.json")
    job["spec"]["roles"]["worker"]["command"][2] = str(STEPS)
    client.submit(job)
    submitted = time.monotonic()

    found = wait_for(lambda: training_ledger(client), timeout_s=120, what="PS insight of ledger")
    table = cast(PSTableInsightView, found)
    print(f"PS insight with pushes {time.monotonic() - submitted:.1f}s after submit")
    view = client.get("insight")
    cells = wait_for(lambda: described_ledger(server.url), timeout_s=30, what="describe")
    samples = wait_for(lambda: ledger_samples(server.url), timeout_s=30, what="ps metrics")

    assert view.phase == "Running", view.message
    assert view.ps is not None and [s.reachable for s in view.ps.shards] == [True, True]
    assert table.pushed_rows > 0 and len(table.shard_rows) == 2
    assert cells is not None and cells[0] == "ledger"
    assert samples is not None and samples["tidemill_ps_memory_bytes"] > 0
