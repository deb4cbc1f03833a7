"""`tidemill describe` and `tidemill get -o json` on a job with PS insight, against a real
server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner, Result

from tests.server.live import INSIGHT, data_server, save_master_state
from tests.server.ps_sample import PS_INSIGHT
from tidemill.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with data_server(tmp_path_factory.mktemp("state")) as base:
        yield base


def tidemill(url: str, *args: str) -> Result:
    result = runner.invoke(app, [*args, "--server", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def row(output: str, first: str) -> list[str]:
    """The cells of the line that starts with ``first``, split on runs of 2+ spaces."""
    lines = [line for line in output.splitlines() if line.split()[:1] == [first]]
    assert len(lines) == 1, output
    return [cell.strip() for cell in lines[0].split("  ") if cell.strip()]


def test_describe_shows_each_table_and_the_shard_it_could_not_reach(url: str) -> None:
    save_master_state(url, "busy", {"ps_insight": PS_INSIGHT})

    out = tidemill(url, "describe", "busy").stdout

    assert "\nParameter servers\n" in out
    assert row(out, "Shards") == ["Shards", "2 reachable, 1 unreachable"]
    assert "ps-2 at 127.0.0.1:7002 unreachable: no STATS answer within 2 s" in out
    assert row(out, "item") == [
        "item",
        "3,000",
        "1.5MiB",
        "3,500",
        "500",
        "1,234",
        "812",
        "max 3, mean 0.42",
        "ps-0 2,000 · ps-1 1,000 · ps-2 -",
    ]
    assert row(out, "user") == [
        "user",
        "40",
        "10KiB",
        "40",
        "0",
        "12.0",
        "12.0",
        "0",
        "ps-0 20 · ps-1 20 · ps-2 -",
    ]


def test_describe_puts_parameter_servers_after_data_and_before_events(url: str) -> None:
    save_master_state(url, "busy", {"data_insight": INSIGHT, "ps_insight": PS_INSIGHT})

    out = tidemill(url, "describe", "busy").stdout

    assert out.index("\nData\n") < out.index("\nParameter servers\n") < out.index("\nEvents\n")


def test_describe_has_no_parameter_servers_section_without_ps_insight(url: str) -> None:
    save_master_state(url, "busy", {"epoch": 3})

    out = tidemill(url, "describe", "busy").stdout

    assert "Parameter servers" not in out and "\nEvents\n" in out


def test_get_prints_the_ps_insight_for_scripts(url: str) -> None:
    save_master_state(url, "busy", {"ps_insight": PS_INSIGHT})

    view = json.loads(tidemill(url, "get", "busy", "-o", "json").stdout)

    assert view["ps"] == PS_INSIGHT
