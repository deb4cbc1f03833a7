"""Tenants on a real server with auth on: who may read, change and forge what.

One in-process control plane (port 0, auth on) serves every test here. Two tenants,
``ads`` and ``search``, each run one sleeping job; tokens are made through the API
with the admin token the server wrote on its first start.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.routing import APIRoute

from tests.e2e.harness import SLEEP_FOREVER, delete_every_job, running_pids, script_job, wait_for
from tidemill.api.token import Role
from tidemill.client import Client
from tidemill.server.auth import Caller, is_loopback
from tidemill.server.runner import InsecureServer, ServerRunner
from tidemill.server.tokens import bootstrap_admin, revoke_token
from tidemill.store.store import Store

CLUSTER = "nodes:\n  - {name: n1, cpu: 4, memory: 8Gi}\n"


@dataclass
class Tenancy:
    url: str
    runner: ServerRunner
    state_dir: Path
    admin: str
    tokens: dict[str, str]
    """name -> secret: ads-viewer, ads-editor, search-editor, all-viewer."""

    def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def as_(self, name: str) -> Client:
        return Client(self.url, token=self.admin if name == "admin" else self.tokens[name])

    def job_token(self, namespace: str, name: str) -> str:
        """The credential the job's replica really got, read from its environment."""
        with self.as_("admin") as client:
            pid = next(r.pid for r in client.get(name, namespace).replicas if r.pid)
        return str(psutil.Process(pid).environ()["TIDEMILL_TOKEN"])


def sleeper(name: str, namespace: str, elastic: bool = False) -> dict[str, Any]:
    job = script_job(name, SLEEP_FOREVER, namespace=namespace, cpu=0.1)
    if elastic:
        job["spec"]["roles"]["worker"].update(replicas=1, minReplicas=1, maxReplicas=2)
    return job


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    state_dir = tmp_path_factory.mktemp("auth")
    cluster = state_dir / "cluster.yaml"
    cluster.write_text(CLUSTER)
    runner = ServerRunner(state_dir, cluster, port=0, auth=True)
    url = runner.start()
    assert runner.admin_token_file == state_dir / "admin-token"
    admin = runner.admin_token_file.read_text().strip()
    tokens: dict[str, str] = {}
    with Client(url, token=admin) as client:
        for namespace, role in [("ads", "viewer"), ("ads", "editor"), ("search", "editor")]:
            name = f"{namespace}-{role}"
            tokens[name] = client.create_token(namespace, role, name).token
        tokens["all-viewer"] = client.create_token("*", "viewer", "all-viewer").token
        client.submit(sleeper("ctr", "ads"))
        client.submit(sleeper("rank", "search"))
        for key in ("ads/ctr", "search/rank"):
            wait_for(lambda key=key: running_pids(client, key), 30, f"{key} running")
    try:
        yield Tenancy(url, runner, state_dir, admin, tokens)
    finally:
        with Client(url, token=admin) as client:
            delete_every_job(client)
        runner.stop()


def refusal(response: httpx.Response, status: int) -> str:
    """The message of a refusal in the project's error shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "errors"}
    assert error["code"] == {401: "Unauthorized", 403: "Forbidden"}[status]
    return str(error["message"])


# ------------------------------------------------------------------ who are you


def test_a_call_without_a_token_is_401_saying_how_to_get_one(tenancy: Tenancy) -> None:
    response = tenancy.call("GET", "/api/v1/jobs", None)

    message = refusal(response, 401)
    assert "tidemill token create" in message and "TIDEMILL_TOKEN" in message
    assert response.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/api/v1/queues", "/api/v1/events", "/metrics", "/api/v1/tokens"):
        assert tenancy.call("GET", path, None).status_code == 401, path


def test_healthz_and_the_dashboard_page_are_open(tenancy: Tenancy) -> None:
    assert tenancy.call("GET", "/healthz", None).json() == {"status": "ok"}
    assert tenancy.call("GET", "/", None).status_code == 200


def test_an_unknown_token_is_401(tenancy: Tenancy) -> None:
    message = refusal(tenancy.call("GET", "/api/v1/jobs", "tm_not-a-real-token"), 401)
    assert "not known to this server" in message


def test_the_admin_token_file_is_private_and_only_written_once(tenancy: Tenancy) -> None:
    for name in ("admin-token", "job-secret"):
        mode = stat.S_IMODE(os.stat(tenancy.state_dir / name).st_mode)
        assert mode == 0o600, f"{name} has mode {mode:o}"
    # A restart finds an active admin token and writes nothing new.
    assert bootstrap_admin(tenancy.runner.store, tenancy.state_dir) is None


# ------------------------------------------------------------------ what may you do


def test_a_viewer_reads_its_namespace_but_may_not_delete_there(tenancy: Tenancy) -> None:
    with tenancy.as_("ads-viewer") as viewer:
        assert [(j.namespace, j.name) for j in viewer.jobs()] == [("ads", "ctr")]
        assert viewer.get("ctr").phase == "Running"
        assert {e.job for e in viewer.events()} == {"ads/ctr"}

    message = refusal(tenancy.call("DELETE", "/api/v1/jobs/ctr", tenancy.tokens["ads-viewer"]), 403)

    assert message.startswith("token 'ads-viewer' (viewer, ads) may not delete jobs in namespace")
    assert "needs an editor or admin token covering 'ads'" in message
    suspend = tenancy.call("POST", "/api/v1/jobs/ctr/suspend", tenancy.tokens["ads-viewer"])
    assert "(viewer, ads) may not suspend jobs" in refusal(suspend, 403)


def test_an_ads_editor_cannot_touch_a_search_job(tenancy: Tenancy) -> None:
    editor = tenancy.tokens["ads-editor"]
    calls = [
        ("DELETE", "/api/v1/jobs/rank", {}),
        ("GET", "/api/v1/jobs/rank/logs", {}),
        ("GET", "/api/v1/jobs/rank", {}),
        ("POST", "/api/v1/jobs/rank/scale", {"json": {"role": "worker", "replicas": 0}}),
        ("POST", "/api/v1/jobs/rank/suspend", {}),
        ("POST", "/api/v1/jobs/rank/resume", {}),
        ("POST", "/api/v1/jobs/rank/events", {"json": {"reason": "Forged", "message": "x"}}),
        ("PUT", "/api/v1/jobs/rank/master-state", {"json": {"state": {"unresponsive": {}}}}),
        ("GET", "/api/v1/jobs/rank/stacks", {}),
        (
            "POST",
            "/api/v1/jobs/rank/exec",
            {"json": {"role": "worker", "index": 0, "command": ["id"]}},
        ),
    ]
    for method, path, body in calls:
        response = tenancy.call(method, path, editor, params={"namespace": "search"}, **body)
        message = refusal(response, 403)
        assert "token 'ads-editor' (editor, ads)" in message, (method, path)

    response = tenancy.call("GET", "/api/v1/events", editor, params={"job": "search/rank"})
    assert "token 'ads-editor' (editor, ads) may not read events" in refusal(response, 403)

    with tenancy.as_("admin") as admin:
        rank = admin.get("rank", "search")
        assert rank.phase == "Running"
        assert "Forged" not in {e.reason for e in admin.job_events("rank", "search")}
    saved = tenancy.call(
        "GET", "/api/v1/jobs/rank/master-state", tenancy.admin, params={"namespace": "search"}
    )
    assert saved.json() == {"state": None}


def test_submitting_into_another_namespace_names_it_and_the_token_scope(tenancy: Tenancy) -> None:
    response = tenancy.call(
        "POST", "/api/v1/jobs", tenancy.tokens["ads-editor"], json=sleeper("sneaky", "search")
    )

    message = refusal(response, 403)
    assert "token 'ads-editor' (editor, ads) may not submit jobs in namespace 'search'" in message
    with tenancy.as_("admin") as admin:
        assert "sneaky" not in {j.name for j in admin.jobs()}


def test_bare_job_names_resolve_in_the_token_namespace(tenancy: Tenancy) -> None:
    with tenancy.as_("ads-editor") as editor, pytest.raises(Exception) as refused:
        editor.get("rank")  # exists, but in search: from ads it is simply not there
    assert getattr(refused.value, "status", None) == 404
    assert "not found in namespace 'ads'" in str(refused.value)


def test_a_token_for_all_namespaces_lists_everything_and_reads_metrics(tenancy: Tenancy) -> None:
    with tenancy.as_("all-viewer") as viewer:
        assert {(j.namespace, j.name) for j in viewer.jobs()} == {
            ("ads", "ctr"),
            ("search", "rank"),
        }
        assert {e.job for e in viewer.events() if e.job} >= {"ads/ctr", "search/rank"}
    metrics = tenancy.call("GET", "/metrics", tenancy.tokens["all-viewer"])
    assert metrics.status_code == 200 and "tidemill_jobs" in metrics.text

    message = refusal(tenancy.call("GET", "/metrics", tenancy.tokens["ads-editor"]), 403)
    assert "needs a token for all namespaces" in message


def test_any_user_token_reads_queues_and_nodes(tenancy: Tenancy) -> None:
    with tenancy.as_("ads-viewer") as viewer:
        assert [n.name for n in viewer.nodes()] == ["n1"]
        assert viewer.queues()


def test_mutations_name_who_asked_in_their_events(tenancy: Tenancy) -> None:
    with tenancy.as_("ads-editor") as editor:
        editor.submit(sleeper("flex", "ads", elastic=True))
        editor.scale("flex", "worker", 1)
    with tenancy.as_("admin") as admin:
        events = admin.events(job="ads/flex")
    with tenancy.as_("ads-editor") as editor:
        editor.delete("flex")
    with tenancy.as_("admin") as admin:
        deleted = [e for e in admin.events() if e.reason == "Deleted"]
    by_reason = {e.reason: e.message for e in events}
    who = "by token 'ads-editor' (editor, ads)"
    assert who in by_reason["Submitted"]
    assert who in by_reason["ScaleRequested"]
    # The job's own events go with it; the deletion is a cluster event naming the job.
    assert [e.job for e in deleted] == [None]
    assert f"job ads/flex deleted {who}" in deleted[0].message


# ------------------------------------------------------------------ tokens


def test_only_an_admin_manages_tokens_and_a_revoked_token_is_refused(tenancy: Tenancy) -> None:
    message = refusal(tenancy.call("GET", "/api/v1/tokens", tenancy.tokens["all-viewer"]), 403)
    assert "may not list tokens: that needs an admin token" in message

    with tenancy.as_("admin") as admin:
        made = admin.create_token("ads", Role.VIEWER, "short-lived")
        listed = tenancy.call("GET", "/api/v1/tokens", tenancy.admin).json()["items"]
        assert made.token not in str(listed)
        assert {
            "name": "short-lived",
            "namespace": "ads",
            "role": "viewer",
            "revoked": False,
        }.items() <= next(t for t in listed if t["name"] == "short-lived").items()
        assert tenancy.call("GET", "/api/v1/jobs", made.token).status_code == 200

        assert admin.revoke_token("short-lived").revoked

        message = refusal(tenancy.call("GET", "/api/v1/jobs", made.token), 401)
        assert "token 'short-lived' (viewer, ads) was revoked" in message
        reasons = {e.reason: e.message for e in admin.events() if e.job is None}
    assert (
        "token 'short-lived' (viewer, ads) created by token 'admin' (admin, *)"
        in reasons["TokenCreated"]
    )
    assert "revoked by token 'admin' (admin, *)" in reasons["TokenRevoked"]


def test_a_token_request_is_checked_field_by_field(tenancy: Tenancy) -> None:
    for body, path, text in [
        ({"role": "admin", "namespace": "ads"}, "namespace", "covers every namespace"),
        ({"role": "editor"}, "namespace", "tokens need a namespace"),
        ({"role": "owner", "namespace": "ads"}, "role", "viewer"),
        ({"namespace": "Ads!"}, "namespace", "not a valid namespace"),
        ({"namespace": "ads", "name": "ads-editor"}, None, "exists"),
    ]:
        response = tenancy.call("POST", "/api/v1/tokens", tenancy.admin, json=body)
        assert response.status_code in (409, 422), response.text
        error = response.json()["error"]
        found = error["errors"] if path else [{"path": None, "message": error["message"]}]
        assert any(e["path"] == path and text in e["message"] for e in found), error


# ------------------------------------------------------------------ the job's credential


def test_the_job_credential_writes_only_its_own_master_state(tenancy: Tenancy) -> None:
    own = tenancy.job_token("ads", "ctr")
    assert own.startswith("tmjob.")
    ads = {"namespace": "ads"}
    state = {"state": {"epoch": 1, "unresponsive": {}}}

    assert (
        tenancy.call(
            "PUT", "/api/v1/jobs/ctr/master-state", own, params=ads, json=state
        ).status_code
        == 200
    )
    assert tenancy.call("GET", "/api/v1/jobs/ctr/master-state", own, params=ads).json() == state
    event = {"reason": "EpochStarted", "message": "epoch 1"}
    assert (
        tenancy.call("POST", "/api/v1/jobs/ctr/events", own, params=ads, json=event).status_code
        == 201
    )
    assert tenancy.call("GET", "/api/v1/jobs/ctr", own, params=ads).status_code == 200

    search = {"namespace": "search"}
    other = tenancy.call("PUT", "/api/v1/jobs/rank/master-state", own, params=search, json=state)
    assert "not its job" in refusal(other, 403)
    assert refusal(tenancy.call("GET", "/api/v1/jobs", own), 403)
    assert refusal(tenancy.call("DELETE", "/api/v1/jobs/ctr", own, params=ads), 403)
    assert refusal(tenancy.call("GET", "/api/v1/jobs/rank", own, params=search), 403)


def test_stacks_need_a_viewer_and_exec_an_editor_of_the_jobs_namespace(
    tenancy: Tenancy,
) -> None:
    ads = {"namespace": "ads"}
    run = {"json": {"role": "worker", "index": 0, "command": ["sh", "-c", "echo $TIDEMILL_JOB"]}}
    viewer, editor = tenancy.tokens["ads-viewer"], tenancy.tokens["ads-editor"]

    stacks = tenancy.call("GET", "/api/v1/jobs/ctr/stacks", viewer, params=ads)
    assert stacks.status_code == 200 and stacks.json()["job"] == "ads/ctr"
    refused = tenancy.call("POST", "/api/v1/jobs/ctr/exec", viewer, params=ads, **run)
    assert "may not exec in replicas in namespace 'ads'" in refusal(refused, 403)
    ran = tenancy.call("POST", "/api/v1/jobs/ctr/exec", editor, params=ads, **run)
    assert ran.status_code == 200
    assert ran.text.splitlines()[-2:] == ['{"output": "ads/ctr\\n"}', '{"exit_code": 0}']

    own = tenancy.job_token("ads", "ctr")
    for method, path, body in [("GET", "stacks", {}), ("POST", "exec", run)]:
        response = tenancy.call(method, f"/api/v1/jobs/ctr/{path}", own, params=ads, **body)
        assert "may act only on its own job" in refusal(response, 403), path
    assert refusal(tenancy.call("GET", "/api/v1/jobs/ctr/stacks", None, params=ads), 401)


def test_user_tokens_even_admin_ones_may_not_write_master_state(tenancy: Tenancy) -> None:
    body = {"state": {"unresponsive": {"worker-0": 1}}}
    for who in (tenancy.admin, tenancy.tokens["ads-editor"]):
        response = tenancy.call(
            "PUT", "/api/v1/jobs/ctr/master-state", who, params={"namespace": "ads"}, json=body
        )
        assert "only the job's own credential may" in refusal(response, 403)
    readable = tenancy.call(
        "GET", "/api/v1/jobs/ctr/master-state", tenancy.admin, params={"namespace": "ads"}
    )
    assert readable.status_code == 200


def test_a_forged_or_other_servers_job_credential_is_refused(tenancy: Tenancy) -> None:
    own = tenancy.job_token("ads", "ctr")
    forged = own[:-4] + ("0000" if not own.endswith("0000") else "1111")
    assert "not known" in refusal(tenancy.call("GET", "/api/v1/jobs/ctr", forged), 401)


# ------------------------------------------------------------------ wiring


def test_every_api_route_takes_the_caller_dependency(tenancy: Tenancy) -> None:
    """A route added later without auth would be open to anyone: this catches it."""
    guarded = tenancy.runner.app
    caller_dependency = next(
        d.call
        for r in guarded.routes
        if isinstance(r, APIRoute) and r.path == "/api/v1/jobs"
        for d in r.dependant.dependencies
        if getattr(d.call, "__name__", "") == "caller"
    )
    open_paths = {"/healthz", "/", "/docs", "/docs/assets/{name}", "/openapi.json"}
    for route in guarded.routes:
        if not isinstance(route, APIRoute) or route.path in open_paths:
            continue
        calls = [d.call for d in route.dependant.dependencies]
        assert caller_dependency in calls, f"{route.methods} {route.path} takes no token"


def test_a_server_beyond_loopback_refuses_to_start_without_auth(tmp_path: Path) -> None:
    with pytest.raises(InsecureServer, match="--auth"):
        ServerRunner(tmp_path, host="0.0.0.0", port=0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_an_open_server_lets_everyone_in_and_says_so_in_events(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path, port=0)
    url = runner.start()
    try:
        with Client(url, token="ignored") as client:
            client.submit(script_job("open", "pass", namespace="ads", cpu=0.1))
            submitted = next(e for e in client.events(job="ads/open") if e.reason == "Submitted")
            assert submitted.message.endswith("by anonymous (auth off)")
            client.delete("open")
    finally:
        runner.stop()


@pytest.mark.parametrize(
    ("role", "scope", "needed", "namespace", "allowed"),
    [
        (Role.VIEWER, "ads", Role.VIEWER, "ads", True),
        (Role.VIEWER, "ads", Role.EDITOR, "ads", False),
        (Role.EDITOR, "ads", Role.VIEWER, "search", False),
        (Role.EDITOR, "*", Role.EDITOR, "search", True),
        (Role.EDITOR, "*", Role.ADMIN, "*", False),
        (Role.ADMIN, "*", Role.EDITOR, "ads", True),
        (Role.VIEWER, "ads", Role.VIEWER, "*", False),
    ],
)
def test_a_role_covers_lower_roles_in_its_scope_only(
    role: Role, scope: str, needed: Role, namespace: str, allowed: bool
) -> None:
    caller = Caller(actor="t", role=role, scope=scope)
    assert caller.may(needed, namespace) is allowed


def test_revoking_every_admin_token_gets_a_new_one_on_the_next_start(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    try:
        first = bootstrap_admin(store, tmp_path)
        assert first is not None
        with store.transaction() as tx:
            revoke_token(tx, "admin", "test")
        assert bootstrap_admin(store, tmp_path) == first  # rewritten with a new token
        with store.read() as tx:
            active = [(t.name, t.role) for t in tx.tokens() if not t.revoked]
        assert active == [("admin-2", "admin")]
    finally:
        store.close()
