"""A job gone from the store takes its files with it: its log and launch files under the
server's state folder are removed once it is deleted or its TTL has run out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import wait_for
from tidemill.client import Client
from tidemill.server.runner import ServerRunner


def echo_job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            **spec,
            "roles": {
                "worker": {
                    "resources": {"cpu": 0.1, "memory": "16Mi"},
                    "command": ["sh", "-c", f"echo {name} says hello"],
                    "restartPolicy": "Never",
                }
            },
        },
    }


def files_of(state: Path, name: str) -> list[Path]:
    return [p for kind in ("logs", "replicas") for p in (state / kind).glob(f"default/{name}/**/*")]


def test_a_deleted_job_leaves_no_file_and_another_jobs_stay(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        for name in ("gone", "kept"):
            client.submit(echo_job(name))
            assert client.wait(name, timeout_s=60).phase == "Succeeded"
        assert any(p.name == "worker-0.log" for p in files_of(runner.state_dir, "gone"))
        kept = files_of(runner.state_dir, "kept")
        suffixes = sorted(p.suffix for p in kept if p.is_file())
        assert suffixes == [".env", ".exit", ".log", ".pid", ".sup"], kept

        client.delete("gone")
        wait_for(lambda: "gone" not in {j.name for j in client.jobs()}, 30, "gone deleted")
        assert files_of(runner.state_dir, "gone") == []
        assert not (runner.state_dir / "logs" / "default" / "gone").exists()
        assert files_of(runner.state_dir, "kept") == kept
        assert "kept says hello" in "\n".join(client.logs("kept"))


def test_a_job_past_its_ttl_leaves_no_file(start_runner: Callable[..., ServerRunner]) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(echo_job("brief", ttlSecondsAfterFinished=1))
        assert client.wait("brief", timeout_s=60).phase == "Succeeded"
        wait_for(lambda: "brief" not in {j.name for j in client.jobs()}, 30, "brief removed")
        wait_for(lambda: files_of(runner.state_dir, "brief") == [], 10, "its files removed")
        assert not (runner.state_dir / "replicas" / "default" / "brief").exists()


def test_deletes_of_one_running_job_at_once_all_answer_and_log_no_error(
    start_runner: Callable[..., ServerRunner], caplog: pytest.LogCaptureFixture
) -> None:
    """The first delete to finish removes the job's folders while the others still kill
    its replica: they must not fail writing into a folder that is gone."""
    runner = start_runner()
    with Client(runner.url) as client:
        sleeper = echo_job("busy")
        sleeper["spec"]["roles"]["worker"]["command"] = ["sleep", "60"]
        client.submit(sleeper)
        wait_for(lambda: client.get("busy").phase == "Running", 30, "busy running")
        with ThreadPoolExecutor(8) as pool:
            url = f"{runner.url}/api/v1/jobs/busy"
            statuses = set(pool.map(lambda _: httpx.delete(url, timeout=60).status_code, range(16)))
        assert statuses <= {200, 404} and 200 in statuses, statuses
        assert files_of(runner.state_dir, "busy") == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
