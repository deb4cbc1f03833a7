"""A `tidemill server` process under load it must bound: a huge log downloads in
constant memory, and a state folder it cannot write stops it with one clear line."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.harness import SLEEP_FOREVER, script_job, wait_for
from tidemill.server.logs import LOG_LIMIT_BYTES, cut_note

pytestmark = pytest.mark.e2e

LOG_BYTES = 300 << 20
LINE = "tidemill log line: the quick brown fox jumps over the lazy dog 0123456789"


def big_log_job(name: str) -> dict[str, Any]:
    """A worker that writes LOG_BYTES of log lines and exits."""
    script = f"yes '{LINE}' | head -c {LOG_BYTES}"
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 0.1, "memory": "16Mi"},
                    "command": ["sh", "-c", script],
                    "restartPolicy": "Never",
                }
            }
        },
    }


class PeakRss:
    """Samples a process's resident memory until stopped; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def download(url: str, params: dict[str, Any]) -> tuple[int, bytes]:
    """Stream a log; returns its size and its last 4 KiB."""
    size, tail = 0, b""
    with httpx.stream("GET", url, params=params, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            size += len(chunk)
            tail = (tail + chunk)[-4096:]
    return size, tail


def test_a_300_mib_log_downloads_in_constant_server_memory(start_server):  # type: ignore[no-untyped-def]
    server, client = start_server()
    client.submit(big_log_job("loud"))
    final = client.wait("loud", timeout_s=120)
    assert final.phase == "Succeeded", final.message
    url = f"{server.url}/api/v1/jobs/loud/logs"
    params = {"role": "worker", "index": 0}
    assert server.process is not None
    before = psutil.Process(server.process.pid).memory_info().rss

    header = httpx.get(url, params={**params, "limitBytes": 4096}).text.splitlines()[0]
    last_line = LOG_BYTES % (len(LINE) + 1)  # `head -c` cut the last line short

    rss = PeakRss(server.process.pid)
    whole, whole_tail = download(url, {**params, "limitBytes": 2 * LOG_BYTES})
    capped, capped_tail = download(url, params)
    growth = rss.stop() - before

    assert whole == len(header) + 1 + LOG_BYTES + (1 if last_line else 0)
    assert whole_tail.endswith(f"\n{LINE[:last_line]}\n".encode())
    note = cut_note(LOG_LIMIT_BYTES).encode()
    assert capped_tail.endswith(note)
    assert LOG_LIMIT_BYTES + len(note) <= capped <= LOG_LIMIT_BYTES + 1 + len(note)
    assert growth < 100 << 20, f"server RSS grew {growth >> 20} MiB"


def start_failure(
    state_dir: Path, file_size_limit: int | None = None, port: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run `tidemill server` on ``state_dir``; it is expected to exit at once."""

    def limit_file_size() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    argv = [
        sys.executable,
        "-m",
        "tidemill",
        "server",
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, preexec_fn=limit_file_size
    )


def test_a_state_folder_that_cannot_be_made_stops_the_server_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    result = start_failure(blocker / "state")

    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: cannot write the state folder {blocker / 'state'}: Not a directory\n"
    )


def test_a_disk_that_takes_no_more_bytes_stops_the_server_with_one_line(tmp_path: Path) -> None:
    # RLIMIT_FSIZE=0: every write to a file fails (EFBIG), as writes to a full disk do.
    result = start_failure(tmp_path / "state", file_size_limit=0)

    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: cannot write the state folder {tmp_path / 'state'}: File too large\n"
    )


def test_a_database_that_cannot_be_opened_stops_the_server_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "tidemill.db").mkdir(parents=True)  # a folder where the database file belongs

    result = start_failure(state)

    assert result.returncode == 1
    assert (
        result.stderr
        == f"error: cannot write the state folder {state}: unable to open database file\n"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_another_server_holds_stops_the_server_with_one_line(start_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    # The server holding the port answers /healthz: the second must not take it for its own.
    holder, client = start_server()
    port = int(holder.url.rsplit(":", 1)[1])

    result = start_failure(tmp_path / "second", port=port)

    assert result.returncode == 1
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; another process "
        "holds the port: stop it, or choose another --port\n"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert client.health()


def test_a_namespace_at_its_job_bound_is_refused_more_and_others_are_not(tmp_path: Path) -> None:
    """A runaway submit loop stops at the bound with a 403 naming it; another namespace
    still submits, and deleting one job makes room again."""
    state = tmp_path / "state"
    state.mkdir()
    server = ServerProcess(state, None, args=("--max-jobs-per-namespace", "3"))
    server.start()
    env = {**os.environ, "TIDEMILL_SERVER": server.url}
    env["TIDEMILL_CONFIG"] = str(tmp_path / "no-config.yaml")

    def submit(name: str, namespace: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"{namespace}-{name}.yaml"
        path.write_text(json.dumps(script_job(name, SLEEP_FOREVER, namespace=namespace)))
        argv = [sys.executable, "-m", "tidemill", "submit", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)

    try:
        for i in range(3):
            assert submit(f"j{i}", "loop").returncode == 0
        refused = submit("j3", "loop")
        assert refused.returncode == 1, refused
        assert "namespace loop holds 3 unfinished jobs" in refused.stderr
        assert "--max-jobs-per-namespace" in refused.stderr
        answer = httpx.post(
            f"{server.url}/api/v1/jobs", json=script_job("j4", SLEEP_FOREVER, namespace="loop")
        )
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "QuotaExceeded"
        dry = httpx.post(
            f"{server.url}/api/v1/jobs",
            params={"dryRun": "true"},
            json=script_job("j4", SLEEP_FOREVER, namespace="loop"),
        )
        assert dry.status_code == 403, "a dry run says what the submit would meet"
        assert submit("other", "calm").returncode == 0
        httpx.delete(f"{server.url}/api/v1/jobs/j0", params={"namespace": "loop"})
        wait_for(lambda: submit("j3", "loop").returncode == 0, what="room after a delete")
        listed = httpx.get(f"{server.url}/api/v1/jobs", params={"namespace": "loop"}).json()
        assert sorted(job["name"] for job in listed["items"]) == ["j1", "j2", "j3"]
    finally:
        for namespace in ("loop", "calm"):
            listed = httpx.get(f"{server.url}/api/v1/jobs", params={"namespace": namespace})
            for job in listed.json()["items"]:
                httpx.delete(
                    f"{server.url}/api/v1/jobs/{job['name']}", params={"namespace": namespace}
                )
        server.stop()
