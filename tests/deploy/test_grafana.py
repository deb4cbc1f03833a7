"""deploy/grafana: the dashboard is one Grafana can import (unique panel ids, panels on
the 24-column grid without overlap, every query with a refId), and every metric it
queries is one a real tidemill server exports: a board on a misspelt or renamed metric
shows "No data" with no error, so only a test catches it."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import wait_for
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "deploy" / "grafana" / "tidemill.json"
METRIC = re.compile(r"\btidemill_[a-z_]+")
HISTOGRAM_SERIES = ("_bucket", "_count", "_sum")
CONDITIONAL_SOURCES = ("data_metrics", "ps_metrics", "training_metrics")
"""Families a server exports only while a job reads data, runs parameter servers or
reports training metrics."""


def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(BOARD.read_text())
    return loaded


def queried_metrics() -> set[str]:
    names = set()
    for panel in board()["panels"]:
        for target in panel.get("targets", []):
            for name in METRIC.findall(target["expr"]):
                for suffix in HISTOGRAM_SERIES:
                    name = name.removesuffix(suffix)
                names.add(name)
    return names


def conditional_families() -> set[str]:
    """Names the data and PS insight functions declare, read from their source."""
    source = (ROOT / "src" / "tidemill" / "server" / "metrics.py").read_text()
    found = set()
    for function in CONDITIONAL_SOURCES:
        body = source.split(f"def {function}(", 1)[1].split("\ndef ", 1)[0]
        found |= set(re.findall(r'"(tidemill_[a-z_]+)"', body))
    return found


def test_the_board_is_well_formed() -> None:
    panels = board()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(place["x"], place["x"] + place["w"])
            for y in range(place["y"], place["y"] + place["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(refs), panel["title"]
        if panel["type"] != "row":
            assert refs, f"{panel['title']} queries nothing"
    variables = {v["name"] for v in board()["templating"]["list"]}
    used = set(re.findall(r"\$(\w+)", json.dumps(panels)))
    assert used <= variables


def test_every_metric_it_queries_is_exported_by_a_real_server(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes:\n  - {name: n1, cpu: 4, memory: 8Gi}\n")
    runner = ServerRunner(tmp_path / "state", cluster, port=0)
    runner.start()
    try:
        with Client(runner.url) as client:
            client.submit(one_sleeper())
            wait_for(lambda: client.get("sleeper").phase == "Running", 30, "sleeper running")
            exported = wait_for(scraped(runner), 30, "replica figures on /metrics")
            client.delete("sleeper")
    finally:
        runner.stop()
    assert isinstance(exported, set)
    missing = queried_metrics() - exported - conditional_families()
    assert not missing, f"the board queries metrics no server exports: {sorted(missing)}"


def scraped(runner: ServerRunner) -> Callable[[], set[str] | None]:
    def names() -> set[str] | None:
        text = httpx.get(f"{runner.url}/metrics").text
        found = {family.name for family in text_string_to_metric_families(text)}
        return found if "tidemill_replica_memory_bytes" in found else None

    return names


def one_sleeper() -> dict[str, Any]:
    return {
        "metadata": {"name": "sleeper"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 0.5, "memory": "64Mi"},
                    "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                }
            }
        },
    }
