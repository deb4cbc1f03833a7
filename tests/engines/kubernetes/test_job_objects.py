"""The TrainingJob object sync keeps what it derived from a finished job instead of
reading its row each second, and reads it again after a while all the same (emulated API
server)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.kubernetes import Cluster, emulated, server
from tidemill.client import Client
from tidemill.engines.kubernetes import job_objects
from tidemill.server.runner import ServerRunner

CHANGED = "changed after it finished"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from emulated(tmp_path, metrics_server=False)


def object_message(cluster: Cluster, name: str) -> str:
    return str((cluster.job_object(name) or {}).get("status", {}).get("message", ""))


def finish_then_change(cluster: Cluster, runner: ServerRunner, api: Client) -> str:
    """Run a job to its end and wait for its object's final status; then change its row
    behind the sync's back. Returns the message the object showed."""
    api.submit(cluster.finishing("short"))
    assert api.wait("short", timeout_s=120).phase == "Succeeded"
    wait_for(lambda: (cluster.job_object("short") or {}).get("status", {}).get("phase")
             == "Succeeded", timeout_s=15, what="the object's final status")
    shown = object_message(cluster, "short")
    with runner.store.transaction() as tx:
        row = tx.job(cluster.namespace, "short")
        assert row is not None
        row.message = CHANGED
    return shown


def test_a_finished_jobs_row_is_read_again_after_a_while(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_objects, "SETTLED_REREAD_S", 1.0)
    with server(cluster, tmp_path / "state") as (runner, api):
        finish_then_change(cluster, runner, api)
        wait_for(lambda: object_message(cluster, "short") == CHANGED, timeout_s=15,
                 what="the row read again and shown")


def test_without_a_reread_a_finished_jobs_row_is_not_read_each_sync(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same change stays unseen while the kept row is fresh: the sync did not read it."""
    monkeypatch.setattr(job_objects, "SETTLED_REREAD_S", 3600.0)
    with server(cluster, tmp_path / "state") as (runner, api):
        shown = finish_then_change(cluster, runner, api)
        time.sleep(4)  # two syncs at least (one a second, then as long again when idle)
        assert object_message(cluster, "short") == shown
