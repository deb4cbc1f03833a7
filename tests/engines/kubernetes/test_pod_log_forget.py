"""On Kubernetes a deleted job's pods go with its object; its pod-log mirrors under the
server's state folder go too (emulated API server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.kubernetes import Cluster, emulated, server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from emulated(tmp_path, metrics_server=False)


def test_a_deleted_jobs_pod_log_mirrors_are_removed(cluster: Cluster, tmp_path: Path) -> None:
    with server(cluster, tmp_path / "state") as (runner, api):
        api.submit(cluster.finishing("short"))
        view = api.wait("short", timeout_s=120)
        assert view.phase == "Succeeded"
        list(api.logs("short"))  # mirrors the pod's log under the state folder
        mirrors = runner.state_dir / "pod-logs" / view.uid
        assert any(mirrors.glob("*.log")), list(runner.state_dir.rglob("*"))
        api.delete("short")
        wait_for(lambda: not mirrors.exists(), timeout_s=30, what="the mirrors removed")
