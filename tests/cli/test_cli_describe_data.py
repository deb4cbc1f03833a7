"""`tidemill describe` and `tidemill get -o json|yaml` on a job with data insight, against
a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from typer.testing import CliRunner, Result

from tests.server.live import INSIGHT, data_server, save_master_state
from tidemill.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with data_server(tmp_path_factory.mktemp("state")) as base:
        yield base


def tidemill(url: str, *args: str) -> Result:
    result = runner.invoke(app, [*args, "--server", url])
    assert result.exit_code == 0, result.output
    return result


def row(output: str, first: str) -> list[str]:
    """The table row that starts with ``first``, split on runs of spaces."""
    lines = [line for line in output.splitlines() if line.split()[:1] == [first]]
    assert len(lines) == 1, output
    return [cell for cell in lines[0].split("  ") if cell.strip()]


def test_describe_shows_the_stage_and_each_sources_progress(url: str) -> None:
    save_master_state(url, "ctr", {"epoch": 1, "data_insight": INSIGHT})

    out = tidemill(url, "describe", "ctr").stdout

    assert "\nData\n" in out
    assert row(out, "Stage") == ["Stage", "online"]
    assert "backfill (stage 1 of 2): done, pass 1 of 1, took 8m20s" in out
    assert "online (stage 2 of 2): running, pass 1 of 1, for 8m20s" in out
    assert [cell.strip() for cell in row(out, "ads.clicks")] == [
        "ads.clicks", "iceberg", "20,000", "51,234", "625KiB", "-", "8 done",
        "worker-0 10,240 · worker-1 9,760",
    ]
    assert [cell.strip() for cell in row(out, "clicks")] == [
        "clicks", "kafka", "4,100", "812", "293KiB", "37 records, 0.4s", "2 in flight",
        "worker-0 2,100 · worker-1 2,000",
    ]


def test_describe_puts_data_after_replicas_and_before_events(url: str) -> None:
    save_master_state(url, "busy", {"data_insight": INSIGHT})

    out = tidemill(url, "describe", "busy").stdout

    assert out.index("\nReplicas\n") < out.index("\nData\n") < out.index("\nEvents\n")


def test_describe_has_no_data_section_without_data_insight(url: str) -> None:
    save_master_state(url, "busy", {"epoch": 3})

    out = tidemill(url, "describe", "busy").stdout

    assert "\nData\n" not in out and "\nEvents\n" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_prints_the_data_insight_for_scripts(url: str, output: str) -> None:
    save_master_state(url, "ctr", {"data_insight": INSIGHT})

    printed = tidemill(url, "get", "ctr", "-o", output).stdout

    view = json.loads(printed) if output == "json" else yaml.safe_load(printed)
    assert view["data"] == INSIGHT
