"""The SDK client against a real HTTP server: shapes parsed, errors typed, nothing swallowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.fake_api import FakeServer
from tidemill.api.errors import FieldError
from tidemill.api.status import JobPhase
from tidemill.client import (
    ApiError,
    Client,
    Conflict,
    InvalidSpec,
    NotFound,
    ServerUnavailable,
    TidemillError,
    TimedOut,
)


def test_an_unreachable_server_names_the_url_and_how_to_start_one(closed_url: str) -> None:
    with Client(closed_url) as client, pytest.raises(ServerUnavailable) as caught:
        client.jobs()
    message = str(caught.value)
    assert closed_url in message
    assert "tidemill server" in message and "TIDEMILL_SERVER" in message


def test_health_is_false_rather_than_an_error_when_nobody_listens(
    closed_url: str, fake_server: FakeServer
) -> None:
    with Client(closed_url) as down, Client(fake_server.url) as up:
        assert down.health() is False
        assert up.health() is True


def test_the_server_url_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake_server: FakeServer
) -> None:
    monkeypatch.setenv("TIDEMILL_SERVER", fake_server.url.removeprefix("http://") + "/")
    with Client() as client:
        assert client.server == fake_server.url
        assert [job.name for job in client.jobs(phase="Failed")] == ["broken"]


def test_a_missing_job_raises_not_found_with_the_servers_message(fake_server: FakeServer) -> None:
    with Client(fake_server.url) as client, pytest.raises(NotFound) as caught:
        client.get("nope")
    assert caught.value.status == 404
    assert caught.value.code == "NotFound"
    assert caught.value.message == "job 'nope' not found; list jobs with `tidemill jobs`"


def test_an_ambiguous_name_is_a_conflict_and_a_namespace_resolves_it(
    fake_server: FakeServer,
) -> None:
    with Client(fake_server.url) as client:
        with pytest.raises(Conflict, match="several namespaces"):
            client.get("twin")
        assert client.get("twin", namespace="b").namespace == "b"
        assert client.get("b/twin").namespace == "b"


def test_a_namespace_given_twice_must_agree(fake_server: FakeServer) -> None:
    with Client(fake_server.url) as client, pytest.raises(TidemillError, match="use one of"):
        client.get("a/twin", namespace="b")


def test_a_file_path_is_validated_here_and_posted_as_json(
    fake_server: FakeServer, job_file: Path
) -> None:
    with Client(fake_server.url) as client:
        view = client.submit(job_file)
    assert (view.namespace, view.name, view.phase) == ("ads", "demo", JobPhase.PENDING)
    content_type, body = fake_server.posted[-1]
    assert content_type == "application/json"
    document = json.loads(body)
    assert document["spec"]["roles"]["worker"]["workingDir"] == str(job_file.parent / "src")


def test_job_text_is_sent_as_yaml_for_the_server_to_check(
    fake_server: FakeServer, job_file: Path
) -> None:
    with Client(fake_server.url) as client:
        client.submit(job_file.read_text())
    content_type, body = fake_server.posted[-1]
    assert content_type == "application/yaml"
    assert body == job_file.read_text()


def test_an_invalid_local_file_is_refused_without_calling_the_server(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: Bad}\nspec: {}\n")
    posted = len(fake_server.posted)
    with Client(fake_server.url) as client, pytest.raises(InvalidSpec) as caught:
        client.submit(bad)
    assert len(fake_server.posted) == posted
    paths = [error.path for error in caught.value.errors]
    assert "metadata.name" in paths and "spec.roles" in paths


def test_a_422_carries_every_field_error(fake_server: FakeServer, job_file: Path) -> None:
    document = {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "big"},
        "spec": {"roles": {"worker": {"replicas": 20, "command": ["x"]}}},
    }
    with Client(fake_server.url) as client, pytest.raises(InvalidSpec) as caught:
        client.submit(document)
    assert caught.value.status == 422
    message = "20 exceeds what queue 'default' allows (8); ask for at most 8"
    assert caught.value.errors == [FieldError("spec.roles.worker.replicas", message)]
    assert "spec.roles.worker.replicas: 20 exceeds" in str(caught.value)


def test_a_name_clash_is_a_conflict(fake_server: FakeServer) -> None:
    document = {"apiVersion": "tidemill/v1", "kind": "TrainingJob", "metadata": {"name": "taken"},
                "spec": {"roles": {"worker": {"command": ["x"]}}}}
    with Client(fake_server.url) as client, pytest.raises(Conflict, match="already exists"):
        client.submit(document)


def test_a_dry_run_returns_the_view_without_creating(fake_server: FakeServer,
                                                     job_file: Path) -> None:
    with Client(fake_server.url) as client:
        view = client.submit(job_file, dry_run=True)
    assert view.name == "demo"


def test_an_error_body_that_is_not_json_still_becomes_an_api_error(
    fake_server: FakeServer,
) -> None:
    with Client(fake_server.url) as client, pytest.raises(ApiError) as caught:
        client.delete("crash")
    assert type(caught.value) is ApiError
    assert caught.value.status == 500
    assert "500" in caught.value.message and "Internal Server Error" in caught.value.message


def test_logs_are_lines_without_endings_and_a_missing_job_fails_at_the_call(
    fake_server: FakeServer,
) -> None:
    with Client(fake_server.url) as client:
        assert list(client.logs("demo")) == [
            "[worker-0] step 1 loss=0.70",
            "[worker-1] [rank 1] ready",
        ]
        assert list(client.logs("demo", role="worker", index=1)) == ["worker-1 only"]
        with pytest.raises(NotFound):
            client.logs("nope")


def test_events_since_an_id_return_only_newer_ones(fake_server: FakeServer) -> None:
    with Client(fake_server.url) as client:
        assert [e.id for e in client.events(job="default/demo", since=1)] == [2, 3]
        assert [e.reason for e in client.job_events("demo")][-1] == "ReplicaFailed"


def test_wait_returns_the_terminal_view_or_times_out(fake_server: FakeServer) -> None:
    with Client(fake_server.url) as client:
        assert client.wait("done").phase is JobPhase.SUCCEEDED
        with pytest.raises(TimedOut, match=r"still Running after 0\.2s"):
            client.wait("demo", timeout_s=0.2, poll_s=0.05)


def test_queues_nodes_and_scale_parse_into_views(fake_server: FakeServer) -> None:
    with Client(fake_server.url) as client:
        assert client.queues()[0].max["memory"] is None
        assert client.nodes()[0].gpu_used == [1.0, 0.5]
        assert client.scale("demo", "worker", 2).name == "demo"
        with pytest.raises(InvalidSpec, match="above maxReplicas=8"):
            client.scale("demo", "worker", 9)
