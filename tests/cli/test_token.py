"""``tidemill token`` and how the CLI finds its token, against a real server with auth on.

The server runs in this process (port 0, auth on); every command runs through the
real CLI (Typer's runner), reading TIDEMILL_TOKEN or the config file as a user's would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tidemill.cli.main import app
from tidemill.server.runner import ServerRunner

runner = CliRunner()


@dataclass
class AuthServer:
    url: str
    state_dir: Path
    admin: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    state_dir = tmp_path_factory.mktemp("token-cli")
    control_plane = ServerRunner(state_dir, port=0, auth=True)
    url = control_plane.start()
    try:
        yield AuthServer(url, state_dir, (state_dir / "admin-token").read_text().strip())
    finally:
        control_plane.stop()


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own token or config file must not leak into these tests."""
    monkeypatch.delenv("TIDEMILL_TOKEN", raising=False)
    monkeypatch.delenv("TIDEMILL_SERVER", raising=False)
    monkeypatch.setenv("TIDEMILL_CONFIG", str(tmp_path / "no-config.yaml"))


def tidemill(server: AuthServer, *args: str, token: str | None = None) -> Result:
    env = {"TIDEMILL_TOKEN": token} if token else {}
    return runner.invoke(app, [*args, "--server", server.url], env=env)


def create(server: AuthServer, *args: str) -> str:
    made = tidemill(server, "token", "create", *args, token=server.admin)
    assert made.exit_code == 0, made.output
    return made.stdout.strip()


def test_create_prints_the_token_alone_once_and_tidemill_jobs_uses_it(
    server: AuthServer,
) -> None:
    made = tidemill(
        server,
        "token",
        "create",
        "--namespace",
        "ads",
        "--role",
        "editor",
        "--name",
        "ci",
        token=server.admin,
    )

    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("tm_") and "\n" not in secret
    assert "token 'ci' (editor, ads) created; it is shown only now" in made.stderr
    jobs = tidemill(server, "jobs", "-o", "json", token=secret)
    assert jobs.exit_code == 0, jobs.output
    assert json.loads(jobs.stdout) == []


def test_without_a_token_a_command_says_how_to_get_one(server: AuthServer) -> None:
    result = tidemill(server, "jobs")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: this server needs a token")
    assert "TIDEMILL_TOKEN" in result.stderr and "tidemill token create" in result.stderr
    assert "Traceback" not in result.output


def test_list_shows_names_roles_and_status_but_no_secret(server: AuthServer) -> None:
    secret = create(server, "--namespace", "search", "--name", "reader")

    table = tidemill(server, "token", "list", token=server.admin)
    as_json = tidemill(server, "token", "list", "-o", "json", token=server.admin)

    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "NAMESPACE", "ROLE", "AGE", "STATUS"]
    assert any(row.split()[:3] == ["reader", "search", "viewer"] for row in rows)
    assert any(row.split()[:3] == ["admin", "*", "admin"] for row in rows)
    assert secret not in table.stdout and secret not in as_json.stdout
    listed = {t["name"]: t for t in json.loads(as_json.stdout)}
    assert set(listed["reader"]) == {"name", "namespace", "role", "created_at", "revoked"}


def test_a_revoked_token_is_refused_on_its_next_call(server: AuthServer) -> None:
    secret = create(server, "--namespace", "ads", "--name", "leaving")
    assert tidemill(server, "jobs", token=secret).exit_code == 0

    revoked = tidemill(server, "token", "revoke", "leaving", token=server.admin)

    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout.strip() == "token 'leaving' (viewer, ads) revoked"
    refused = tidemill(server, "jobs", token=secret)
    assert refused.exit_code == 1
    assert "token 'leaving' (viewer, ads) was revoked" in refused.stderr


def test_only_an_admin_may_make_tokens(server: AuthServer) -> None:
    editor = create(server, "--namespace", "ads", "--role", "editor")

    result = tidemill(server, "token", "create", "--namespace", "ads", token=editor)

    assert result.exit_code == 1
    assert "may not create tokens: that needs an admin token" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--role", "admin", "--namespace", "ads"], "namespace: an admin token covers every"),
        (["--role", "editor"], "namespace: editor tokens need a namespace"),
        (["--namespace", "Ads_1"], "namespace: 'Ads_1' is not a valid namespace"),
        (["--namespace", "ads", "--name", "No Spaces"], "name: 'No Spaces' is not a valid"),
    ],
)
def test_a_bad_token_request_exits_2_naming_the_field(
    server: AuthServer, args: list[str], expected: str
) -> None:
    result = tidemill(server, "token", "create", *args, token=server.admin)

    assert result.exit_code == 2, result.output
    assert expected in result.stderr


def test_revoking_an_unknown_token_names_the_active_ones(server: AuthServer) -> None:
    result = tidemill(server, "token", "revoke", "nobody", token=server.admin)

    assert result.exit_code == 1
    assert "no token named 'nobody' (active tokens: admin" in result.stderr


def test_revoking_a_name_no_token_can_have_exits_2_before_any_request(
    server: AuthServer,
) -> None:
    result = tidemill(server, "token", "revoke", "../jobs", token=server.admin)

    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "error: '../jobs' names no token\nname: '../jobs' is not a valid token name"
    )


def test_token_commands_work_on_the_state_folder_without_a_server_or_token(
    server: AuthServer,
) -> None:
    local = ["--state-dir", str(server.state_dir)]
    made = runner.invoke(app, ["token", "create", "--namespace", "ads", "--name", "local", *local])
    assert made.exit_code == 0, made.output

    assert tidemill(server, "jobs", token=made.stdout.strip()).exit_code == 0
    listed = runner.invoke(app, ["token", "list", "-o", "json", *local])
    assert "local" in {t["name"] for t in json.loads(listed.stdout)}
    events = tidemill(server, "events", "-o", "json", token=server.admin)
    created = json.loads(events.stdout)
    assert any(
        e["reason"] == "TokenCreated" and "(tidemill token --state-dir)" in e["message"]
        for e in created
    )


def test_a_state_folder_without_a_database_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["token", "list", "--state-dir", str(tmp_path)])

    assert result.exit_code == 2
    assert f"no tidemill state in {tmp_path}" in result.stderr


def test_the_config_file_maps_the_server_to_its_token(
    server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = create(server, "--namespace", "ads", "--name", "from-config")
    config = tmp_path / "config.yaml"
    address = server.url.removeprefix("http://")  # host:port matches http://host:port
    config.write_text(f"servers:\n  {address}/:\n    token: {secret}\n")
    monkeypatch.setenv("TIDEMILL_CONFIG", str(config))

    assert tidemill(server, "jobs").exit_code == 0
    monkeypatch.setenv("TIDEMILL_TOKEN", "tm_wins-over-the-file")
    assert "not known to this server" in tidemill(server, "jobs").stderr


def test_a_malformed_config_file_is_one_line_naming_it(
    server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"servers:\n  {server.url}: {{}}\n")
    monkeypatch.setenv("TIDEMILL_CONFIG", str(config))

    result = tidemill(server, "jobs")

    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {config}: servers.{server.url}.token: expected")
