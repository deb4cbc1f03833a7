"""The SDK client against a real server: shapes parsed, errors typed, nothing swallowed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import SLEEP, Live
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
    api_error,
)


def document(name: str, **role: object) -> dict[str, object]:
    worker = {"resources": {"cpu": 0.1, "memory": "64Mi"}, "command": ["sleep", "600"], **role}
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {"roles": {"worker": worker}},
    }


@pytest.fixture(scope="module")
def scene(live: Live) -> Live:
    """``sleeper`` runs, ``grow`` (elastic, a whole node a worker) waits, ``broken`` failed
    (exit 3), ``chatty`` printed a line per worker, ``twin`` is in namespaces a and b."""
    live.submit("sleeper", SLEEP)
    live.client.submit(
        document("grow", replicas=1, minReplicas=1, maxReplicas=4, resources={"cpu": 2})
    )
    live.submit("broken", "import sys; sys.exit(3)", restart_policy="Never")
    live.submit(
        "chatty",
        "import os; print(['step 1 loss=0.70', '[rank 1] ready'][int(os.environ['RANK'])])",
        workers=2,
    )
    for namespace in ("a", "b"):
        live.submit("twin", "pass", namespace=namespace)
    live.running("sleeper")
    live.finished("broken")
    live.finished("chatty")
    return live


def test_an_unreachable_server_names_the_url_and_how_to_start_one(closed_url: str) -> None:
    with Client(closed_url) as client, pytest.raises(ServerUnavailable) as caught:
        client.jobs()
    message = str(caught.value)
    assert closed_url in message
    assert "tidemill server" in message and "TIDEMILL_SERVER" in message


def test_health_is_false_rather_than_an_error_when_nobody_listens(
    closed_url: str, live: Live
) -> None:
    with Client(closed_url) as down, Client(live.url) as up:
        assert down.health() is False
        assert up.health() is True


def test_the_server_url_defaults_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, scene: Live
) -> None:
    monkeypatch.setenv("TIDEMILL_SERVER", scene.url.removeprefix("http://") + "/")
    with Client() as client:
        assert client.server == scene.url
        assert "broken" in [job.name for job in client.jobs(phase="Failed")]
        assert {job.phase for job in client.jobs(phase="Failed")} == {JobPhase.FAILED}


def test_a_missing_job_raises_not_found_with_the_servers_message(live: Live) -> None:
    with pytest.raises(NotFound) as caught:
        live.client.get("nope")
    assert caught.value.status == 404
    assert caught.value.code == "NotFound"
    assert caught.value.message == "job 'nope' not found; list jobs with `tidemill jobs`"


def test_an_ambiguous_name_is_a_conflict_and_a_namespace_resolves_it(scene: Live) -> None:
    client = scene.client
    with pytest.raises(Conflict, match="several namespaces"):
        client.get("twin")
    assert client.get("twin", namespace="b").namespace == "b"
    assert client.get("b/twin").namespace == "b"


def test_a_namespace_given_twice_must_agree(scene: Live) -> None:
    with pytest.raises(TidemillError, match="use one of"):
        scene.client.get("a/twin", namespace="b")


def test_a_file_path_is_validated_here_so_working_dir_resolves_against_it(
    live: Live, job_file: Path
) -> None:
    view = live.client.submit(job_file)
    assert (view.namespace, view.name) == ("ads", "demo")
    assert view.spec["spec"]["roles"]["worker"]["workingDir"] == str(job_file.parent / "src")
    final = live.finished("ads/demo")
    assert final.phase is JobPhase.SUCCEEDED
    assert "hello from rank 1" in list(live.client.logs("ads/demo"))[-1]


def test_job_text_is_sent_as_yaml_for_the_server_to_check(live: Live, job_file: Path) -> None:
    text = job_file.read_text().replace("name: demo, namespace: ads", "name: text")
    view = live.client.submit(text, dry_run=True)
    assert view.spec["spec"]["roles"]["worker"]["workingDir"] == "src"
    with pytest.raises(InvalidSpec) as caught:
        live.client.submit(text.replace("replicas: 2", "replica: 2"), dry_run=True)
    assert caught.value.status == 422
    assert [error.path for error in caught.value.errors] == ["spec.roles.worker.replica"]


def test_an_invalid_local_file_is_refused_without_calling_the_server(
    live: Live, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: Bad}\nspec: {}\n")
    with Client(live.url) as client:
        before = len(client.jobs())
        with pytest.raises(InvalidSpec) as caught:
            client.submit(bad)
        assert len(client.jobs()) == before
    paths = [error.path for error in caught.value.errors]
    assert "metadata.name" in paths and "spec.roles" in paths


def test_a_422_carries_every_field_error(live: Live) -> None:
    big = document("big", resources={"cpu": 64})
    with pytest.raises(InvalidSpec) as caught:
        live.client.submit(big)
    assert caught.value.status == 422
    message = "asks 64 cpu per replica; the largest node has 2 (n1)"
    assert caught.value.errors == [FieldError("spec.roles.worker.resources.cpu", message)]
    assert f"spec.roles.worker.resources.cpu: {message}" in str(caught.value)


def test_a_name_clash_is_a_conflict(live: Live) -> None:
    live.client.submit(document("taken", command=["true"]))
    with pytest.raises(Conflict, match="already exists"):
        live.client.submit(document("taken", command=["true"]))


def test_a_dry_run_returns_the_view_without_creating(live: Live, job_file: Path) -> None:
    view = live.client.submit(job_file.read_text().replace("name: demo", "name: dry"), dry_run=True)
    assert view.name == "dry"
    with pytest.raises(NotFound):
        live.client.get("dry", "ads")


def test_a_wrong_url_and_an_error_body_that_is_not_tidemills_become_api_errors(
    live: Live,
) -> None:
    with Client(f"{live.url}/nowhere") as elsewhere, pytest.raises(NotFound) as caught:
        elsewhere.jobs()
    assert caught.value.message.startswith("no such path '/nowhere/api/v1/jobs'")
    request = httpx.Request("DELETE", f"{live.url}/api/v1/jobs/x")
    proxy_error = api_error(httpx.Response(500, text="Internal Server Error", request=request))
    assert type(proxy_error) is ApiError
    assert proxy_error.status == 500
    assert proxy_error.message == "the server answered 500 Internal Server Error: " + (
        "Internal Server Error"
    )


def test_logs_are_lines_without_endings_and_a_missing_job_fails_at_the_call(
    scene: Live,
) -> None:
    client = scene.client
    lines = [line for line in client.logs("chatty") if "===== tidemill:" not in line]
    assert lines == ["[worker-0] step 1 loss=0.70", "[worker-1] [rank 1] ready"]
    assert list(client.logs("chatty", role="worker", index=1))[-1] == "[rank 1] ready"
    with pytest.raises(NotFound):
        client.logs("nope")


def test_events_since_an_id_return_only_newer_ones(scene: Live) -> None:
    client = scene.client
    events = client.events(job="default/broken")
    assert len(events) >= 3
    later = client.events(job="default/broken", since=events[0].id)
    assert [e.id for e in later] == [e.id for e in events[1:]]
    assert "ReplicaFailed" in [e.reason for e in client.job_events("broken")]


def test_wait_returns_the_terminal_view_or_times_out(scene: Live) -> None:
    client = scene.client
    assert client.wait("broken").phase is JobPhase.FAILED
    with pytest.raises(TimedOut, match=r"still Running after 0\.2s"):
        client.wait("sleeper", timeout_s=0.2, poll_s=0.05)


def test_queues_nodes_and_scale_parse_into_views(scene: Live) -> None:
    client = scene.client
    assert client.queues()[0].max["memory"] is None
    assert [(node.name, node.capacity.cpu) for node in client.nodes()] == [("n1", 2)]
    assert client.scale("grow", "worker", 2).name == "grow"
    with pytest.raises(InvalidSpec, match=r"outside worker's bounds \[1, 4\]"):
        client.scale("grow", "worker", 9)
