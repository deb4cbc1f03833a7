"""Where the master's state lives (a file, or the control plane's REST API) and its settings."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

import tidemill.master.config
import tidemill.master.persistence
from tidemill.master.config import MasterConfig, MasterConfigError
from tidemill.master.persistence import FileBackend, RestBackend

from .processes import free_port


class ControlPlane(ThreadingHTTPServer):
    """The three master endpoints of the control plane, as the contract describes them."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.states: dict[tuple[str, str], Any] = {}
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: ControlPlane

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _route(self) -> tuple[str, str, str]:
        url = urlparse(self.path)
        _, _, _, _, name, what = url.path.split("/")
        return name, what, parse_qs(url.query)["namespace"][0]

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_GET(self) -> None:
        name, _, namespace = self._route()
        self._reply({"state": self.server.states.get((namespace, name))})

    def do_PUT(self) -> None:
        name, _, namespace = self._route()
        self.server.states[(namespace, name)] = self._body()["state"]
        self._reply({"ok": True})

    def do_POST(self) -> None:
        name, _, namespace = self._route()
        self.server.events.append((namespace, name, self._body()))
        self._reply({"ok": True})


@pytest.fixture
def control_plane() -> Iterator[ControlPlane]:
    server = ControlPlane()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_rest_backend_saves_loads_and_posts_events_under_the_jobs_namespace(
    control_plane: ControlPlane,
) -> None:
    async def scenario() -> Any:
        backend = RestBackend(control_plane.url, "ads/ctr")
        empty = await backend.load()
        await backend.save({"epoch": 3, "members": ["worker-0"]})
        await backend.event("Warning", "WorkerLost", "worker-1 lost", "worker-1")
        loaded = await backend.load()
        await backend.close()
        return empty, loaded

    empty, loaded = asyncio.run(scenario())

    assert empty is None
    assert loaded == {"epoch": 3, "members": ["worker-0"]}
    assert control_plane.states == {("ads", "ctr"): loaded}
    assert control_plane.events == [
        (
            "ads",
            "ctr",
            {
                "type": "Warning",
                "reason": "WorkerLost",
                "message": "worker-1 lost",
                "replica": "worker-1",
            },
        )
    ]


def test_an_unreachable_control_plane_slows_nothing_down_and_raises_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> Any:
        backend = RestBackend(f"http://127.0.0.1:{free_port()}", "ads/ctr", timeout_s=1)
        loaded = await backend.load(attempts=2, backoff_s=0.01)
        await backend.save({"epoch": 1})
        await backend.event("Normal", "EpochStarted", "epoch 1", None)
        await backend.close()
        return loaded

    assert asyncio.run(scenario()) is None
    log = capsys.readouterr().err
    assert "could not load the saved state of ads/ctr" in log
    assert "could not save state to http://127.0.0.1:" in log
    assert "could not post event EpochStarted" in log


def test_the_file_backend_replaces_its_state_whole_and_appends_events(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "deep" / "state.json")

    async def scenario() -> Any:
        await backend.save({"epoch": 1, "members": ["worker-0", "worker-1"]})
        await backend.save({"epoch": 2, "members": ["worker-0"]})
        await backend.event("Normal", "EpochStarted", "epoch 2", None)
        return await backend.load()

    assert asyncio.run(scenario()) == {"epoch": 2, "members": ["worker-0"]}
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == [
        "state.json",
        "state.json.events",
    ]
    assert json.loads((tmp_path / "deep" / "state.json.events").read_text()) == {
        "type": "Normal",
        "reason": "EpochStarted",
        "message": "epoch 2",
        "replica": None,
    }


def test_the_master_reads_its_bounds_and_deadlines_from_the_environment() -> None:
    config = MasterConfig.from_env(
        {
            "TIDEMILL_JOB": "ads/ctr",
            "TIDEMILL_MASTER_PORT": "29400",
            "TIDEMILL_SERVER": "http://127.0.0.1:8500",
            "TIDEMILL_ELASTIC_MIN": "2",
            "TIDEMILL_ELASTIC_MAX": "8",
            "TIDEMILL_ELASTIC_TIMEOUT_S": "30",
            "TIDEMILL_ELASTIC_HEARTBEAT_TIMEOUT_S": "5",
        }
    )
    assert (config.job, config.port, config.server, config.state_file) == (
        "ads/ctr",
        29400,
        "http://127.0.0.1:8500",
        None,
    )
    assert (config.rules.min_workers, config.rules.max_workers, config.rules.timeout_s) == (
        2,
        8,
        30.0,
    )
    assert config.heartbeat_timeout_s == 5.0


def test_a_broken_environment_is_refused_naming_every_variable() -> None:
    with pytest.raises(MasterConfigError) as caught:
        MasterConfig.from_env(
            {
                "TIDEMILL_JOB": "ctr",
                "TIDEMILL_MASTER_PORT": "http",
                "TIDEMILL_ELASTIC_MIN": "4",
                "TIDEMILL_ELASTIC_MAX": "2",
                "TIDEMILL_ELASTIC_TIMEOUT_S": "soon",
            }
        )
    assert str(caught.value).splitlines() == [
        "cannot start the job master:",
        "  TIDEMILL_JOB='ctr' must be namespace/name (e.g. ads/ctr)",
        "  TIDEMILL_MASTER_PORT='http' must be a TCP port (1..65535); the controller picks "
        "one per job and reuses it after a restart",
        "  TIDEMILL_ELASTIC_MAX=2 must be at least TIDEMILL_ELASTIC_MIN=4",
        "  TIDEMILL_ELASTIC_TIMEOUT_S='soon' is not a number",
    ]


@pytest.mark.parametrize("module", [tidemill.master.config, tidemill.master.persistence])
def test_the_docstring_examples_run(module: Any) -> None:
    import doctest

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
