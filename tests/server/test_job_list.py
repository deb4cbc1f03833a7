"""The jobs list in pages: a client that asks for a page gets at most that many, and
the page after it by its `continue`, however many jobs the server holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

import tidemill.client as client_module
from tidemill.client import Client
from tidemill.server.runner import ServerRunner


def held_job(name: str, namespace: str) -> dict[str, Any]:
    """A suspended job: listed, never run."""
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "suspend": True,
            "roles": {"worker": {"resources": {"cpu": 0.1, "memory": "16Mi"}, "command": ["true"]}},
        },
    }


@pytest.fixture
def seven_jobs(start_runner: Callable[..., ServerRunner]) -> ServerRunner:
    """j0..j6, alternating namespaces a and b; j3 resumed (then Pending or Running)."""
    runner = start_runner()
    with Client(runner.url) as client:
        for i in range(7):
            client.submit(held_job(f"j{i}", "ab"[i % 2]))
        client.resume("j3", "b")
    return runner


def pages(url: str, **params: Any) -> list[dict[str, Any]]:
    """Every page of the list, following `continue` until it is null."""
    found = []
    with httpx.Client(base_url=url) as http:
        while True:
            page = http.get("/api/v1/jobs", params=params).raise_for_status().json()
            found.append(page)
            if page["continue"] is None:
                return found
            params["continue"] = page["continue"]


def names(found: list[dict[str, Any]]) -> list[list[str]]:
    return [[job["name"] for job in page["items"]] for page in found]


def test_pages_follow_each_other_oldest_or_newest_first(seven_jobs: ServerRunner) -> None:
    assert names(pages(seven_jobs.url, limit=3)) == [
        ["j0", "j1", "j2"], ["j3", "j4", "j5"], ["j6"],
    ]  # fmt: skip
    assert names(pages(seven_jobs.url, limit=3, newest="true")) == [
        ["j6", "j5", "j4"], ["j3", "j2", "j1"], ["j0"],
    ]  # fmt: skip
    assert names(pages(seven_jobs.url, limit=7)) == [[f"j{i}" for i in range(7)]]
    everything = pages(seven_jobs.url)
    assert names(everything) == [[f"j{i}" for i in range(7)]]
    assert everything[0]["continue"] is None


def test_filters_hold_across_pages_and_the_counts_cover_every_page(
    seven_jobs: ServerRunner,
) -> None:
    found = pages(seven_jobs.url, limit=2, namespace="a", phase="Suspended")
    assert names(found) == [["j0", "j2"], ["j4", "j6"]]
    assert found[0]["phases"] == {"Suspended": 4} and found[1]["phases"] == {}
    whole = pages(seven_jobs.url, limit=1)
    counts = whole[0]["phases"]
    assert counts.pop("Suspended") == 6 and sum(counts.values()) == 1  # j3, resumed


def test_a_job_deleted_between_pages_skips_nothing_else(seven_jobs: ServerRunner) -> None:
    with httpx.Client(base_url=seven_jobs.url) as http:
        first = http.get("/api/v1/jobs", params={"limit": 3}).json()
        http.delete("/api/v1/jobs/j3", params={"namespace": "b"}).raise_for_status()
        http.delete("/api/v1/jobs/j2", params={"namespace": "a"}).raise_for_status()
        rest = http.get("/api/v1/jobs", params={"limit": 3, "continue": first["continue"]})
    assert [job["name"] for job in rest.json()["items"]] == ["j4", "j5", "j6"]


def test_the_client_reads_every_page(
    seven_jobs: ServerRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "JOBS_PER_PAGE", 2)
    with Client(seven_jobs.url) as client:
        assert [job.name for job in client.jobs()] == [f"j{i}" for i in range(7)]
        assert [job.name for job in client.jobs(namespace="b")] == ["j1", "j3", "j5"]
        newest = client.job_page(limit=2, newest=True)
    assert [job.name for job in newest.items] == ["j6", "j5"] and newest.continue_ is not None


@pytest.mark.parametrize(
    ("params", "field", "problem"),
    [
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"limit": 10_001}, "limit", "less than or equal to 10000"),
        ({"limit": "many"}, "limit", "valid integer"),
        ({"continue": "j3"}, "continue", "should match pattern"),
        ({"continue": "-1"}, "continue", "should match pattern"),
        ({"continue": "9" * 19}, "continue", "should match pattern"),
        ({"continue": "1\x00"}, "continue", "should match pattern"),
    ],
)
def test_a_bad_page_request_is_refused_naming_the_field(
    start_runner: Callable[..., ServerRunner], params: dict[str, Any], field: str, problem: str
) -> None:
    runner = start_runner()
    response = httpx.get(f"{runner.url}/api/v1/jobs", params=params)
    assert response.status_code == 422, response.text
    (error,) = response.json()["error"]["errors"]
    assert error["path"] == field and problem in error["message"], error
    assert httpx.get(f"{runner.url}/healthz").status_code == 200
