"""What a hostile web page in the user's own browser can do to a server on loopback
with auth off (the default of `tidemill server` and `tidemill run`): nothing.

Real Chromium; its host resolver maps two attacker names to 127.0.0.1, as the
attacker's DNS would. A page on another site posts a job file as text/plain (a request
browsers send without asking the server), and a page whose name was rebound to this
machine calls the API as its own origin. Either would run any command on the machine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import laptop_tab, sleeper
from tests.e2e.harness import wait_for
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

ATTACKER = "attacker.test"
REBOUND = "rebound.test"


def hostile_job(marker: Path) -> str:
    """A job whose one worker would prove the attack by writing ``marker``."""
    job = sleeper("pwned")
    job["spec"]["roles"]["worker"]["command"] = ["sh", "-c", f"echo owned > {marker}"]
    return json.dumps(job)


@pytest.fixture
def resolving_page(chromium: Any, tmp_path: Path) -> Iterator[Any]:
    """A tab whose browser resolves the attacker's names to 127.0.0.1."""
    rules = f"--host-resolver-rules=MAP {ATTACKER} 127.0.0.1, MAP {REBOUND} 127.0.0.1"
    with laptop_tab(chromium, tmp_path / "profile", rules) as tab:
        yield tab


@pytest.fixture
def attacker_site() -> Iterator[tuple[ThreadingHTTPServer, dict[str, bytes]]]:
    """The attacker's own web server: serves ``pages[path]`` as HTML."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.get(self.path.split("?")[0], b"")
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    site = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield site, pages
    site.shutdown()
    site.server_close()


def jobs_and_phases(server: ServerRunner) -> dict[str, str]:
    with Client(server.url) as client:
        return {job.name: job.phase for job in client.jobs()}


def test_a_page_on_another_site_can_neither_submit_nor_suspend(
    resolving_page: Any,
    start_server: Any,
    attacker_site: tuple[ThreadingHTTPServer, dict[str, bytes]],
    tmp_path: Path,
) -> None:
    server = start_server()
    with Client(server.url) as client:
        client.submit(sleeper("victim"))
    wait_for(lambda: jobs_and_phases(server) == {"victim": "Running"}, 30, "victim to run")
    site, pages = attacker_site
    marker = tmp_path / "owned"
    api = f"{server.url}/api/v1/jobs"
    pages["/"] = f"""<!doctype html><title>cute cats</title><script>
      const sent = [];
      const post = (url, body) => fetch(url, {{method: "POST", mode: "no-cors", body}})
        .then(() => sent.push(url), (e) => sent.push("failed " + e));
      Promise.all([post({json.dumps(api)}, {json.dumps(hostile_job(marker))}),
                   post({json.dumps(api + "/victim/suspend")}, "")])
        .then(() => {{ document.title = "sent " + sent.length; }});
    </script>""".encode()

    resolving_page.goto(f"http://{ATTACKER}:{site.server_address[1]}/")
    resolving_page.wait_for_function("() => document.title === 'sent 2'")

    assert jobs_and_phases(server) == {"victim": "Running"}
    assert not marker.exists()
    with Client(server.url) as client:
        reasons = [event.reason for event in client.job_events("victim")]
    assert "Suspending" not in reasons


def test_a_name_rebound_to_this_machine_is_refused_while_the_dashboard_works(
    resolving_page: Any, start_server: Any, tmp_path: Path
) -> None:
    server = start_server()
    marker = tmp_path / "owned"
    call = """async ([method, body]) => {
        const response = await fetch("/api/v1/jobs", {method, body});
        return [response.status, await response.text()];
    }"""

    rebound = resolving_page.goto(f"http://{REBOUND}:{server.port}/")
    assert rebound is not None and rebound.status == 403
    status, text = resolving_page.evaluate(call, ["POST", hostile_job(marker)])
    assert status == 403 and "ForeignHost" in text and "--allow-host" in text
    status, text = resolving_page.evaluate(call, ["GET", None])
    assert status == 403, text
    assert jobs_and_phases(server) == {}

    own = resolving_page.goto(f"http://localhost:{server.port}/")
    assert own is not None and own.status == 200
    resolving_page.wait_for_selector("#jobs")
    status, text = resolving_page.evaluate(call, ["POST", json.dumps(sleeper("mine"))])
    assert status == 201, text
    assert list(jobs_and_phases(server)) == ["mine"]
    assert not marker.exists()


def test_a_page_on_another_site_cannot_frame_the_dashboard_nor_run_script_in_it(
    resolving_page: Any,
    start_server: Any,
    attacker_site: tuple[ThreadingHTTPServer, dict[str, bytes]],
) -> None:
    server = start_server()
    site, pages = attacker_site
    pages["/"] = f"""<!doctype html><title>click to win</title>
      <iframe src="{server.url}/#/" width="800" height="600"></iframe>""".encode()

    resolving_page.goto(f"http://{ATTACKER}:{site.server_address[1]}/")
    framed = resolving_page.frames[1]
    assert framed.query_selector("header .brand") is None, "the dashboard rendered in a frame"

    resolving_page.goto(f"{server.url}/#/")
    resolving_page.wait_for_selector("header .brand")
    resolving_page.evaluate(
        """document.querySelector("#status").innerHTML =
             '<img src="data:," onerror="window.injected = 1">' +
             '<img src="data:," onload="window.injected = 1">'"""
    )
    resolving_page.wait_for_timeout(500)
    assert resolving_page.evaluate("window.injected") is None, "an inline handler ran"
