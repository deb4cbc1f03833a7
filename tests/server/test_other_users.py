"""An open server on loopback serves its own user only: another user of the machine (a
real process running as ``nobody``) is refused before anything is read, while with
``--auth`` the token rules decide as everywhere else."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import script_job
from tidemill.server.peers import can_tell_users
from tidemill.server.runner import ServerRunner

SYSTEM_PYTHON = Path("/usr/bin/python3")
JOB = json.dumps(script_job("intruder", "print('ran as the server owner')", cpu=0.1))
CALLS = """
import json, sys, urllib.request, urllib.error
url, job = sys.argv[1], sys.argv[2]
answers = []
for method, path, body in [("POST", "/api/v1/jobs", job), ("GET", "/api/v1/jobs", None),
                           ("GET", "/healthz", None)]:
    request = urllib.request.Request(url + path, data=body and body.encode(), method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as error:
        answers.append([error.code, error.read().decode()])
print(json.dumps(answers))
"""


def nobody_can_run_here() -> bool:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return os.geteuid() == 0 and SYSTEM_PYTHON.exists() and can_tell_users()


pytestmark = pytest.mark.skipif(
    not nobody_can_run_here(),
    reason="needs root (to run a process as nobody), /usr/bin/python3 and Linux sock_diag",
)


def calls_as_nobody(url: str) -> list[tuple[int, str]]:
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-I", "-c", CALLS, url, JOB],
        user="nobody",
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [(status, body) for status, body in json.loads(done.stdout)]


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ServerRunner]:
    runner = ServerRunner(tmp_path, port=0)
    runner.start()
    yield runner
    runner.stop()


def test_another_user_is_refused_by_an_open_server_and_its_owner_is_served(
    open_server: ServerRunner,
) -> None:
    answers = calls_as_nobody(open_server.url)

    nobody = pwd.getpwnam("nobody").pw_uid
    assert open_server.own_user == os.geteuid()
    for status, body in answers:
        assert status == 403, body
        error = json.loads(body)["error"]
        assert error["code"] == "AnotherUser"
        assert f"for its own user (uid {os.geteuid()}) only" in error["message"]
        assert f"this call comes from uid {nobody}" in error["message"]
        assert "--auth" in error["message"]
    with httpx.Client(base_url=open_server.url) as http:
        assert http.get("/api/v1/jobs").json()["items"] == [], "the intruder's job was taken"
        assert http.get("/healthz").status_code == 200


def test_with_auth_another_user_meets_the_token_rules_instead(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path, port=0, auth=True)
    runner.start()
    try:
        answers = calls_as_nobody(runner.url)
    finally:
        runner.stop()

    assert runner.own_user is None and runner.warnings == []
    assert [status for status, _ in answers] == [401, 401, 200]
