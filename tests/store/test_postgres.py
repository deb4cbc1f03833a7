"""The same store on a real PostgreSQL server, started by the test (skipped without one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.harness import script_job
from tidemill.engines.local import free_port
from tidemill.store.store import PROBE_INTERVAL_S, Store, StoreUnavailable
from tidemill.store.tables import JobRow

pytest.importorskip("psycopg")
INITDB = shutil.which("initdb")
POSTGRES = shutil.which("postgres")
pytestmark = pytest.mark.skipif(not (INITDB and POSTGRES), reason="PostgreSQL is not installed")


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root, so drop to nobody there.
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class Postgres:
    """A PostgreSQL server in a fresh data folder, stoppable and restartable."""

    data: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://tidemill@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        argv = [str(POSTGRES), "-D", str(self.data), "-p", str(self.port), "-k", str(self.data)]
        self.process = subprocess.Popen(
            _as_postgres_user([*argv, "-h", "127.0.0.1"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                Store(self.url).close()
                return
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the database host goes away."""
        if self.process is None or self.process.poll() is not None:
            return
        for child in psutil.Process(self.process.pid).children(recursive=True):
            if child.name() == "postgres":
                child.send_signal(signal.SIGINT)
                break
        else:
            self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    # Not under pytest's tmp_path: that folder is private to root, and nobody must enter it.
    data = Path(tempfile.mkdtemp(prefix="tidemill-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "nobody")
    subprocess.run(
        _as_postgres_user([str(INITDB), "-D", str(data), "-U", "tidemill", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    server = Postgres(data)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres) -> str:
    return postgres.url


def test_jobs_survive_a_reopen_on_postgres(postgres_url: str) -> None:
    store = Store(postgres_url)
    with store.transaction() as tx:
        tx.add_job(
            JobRow(
                uid="u1",
                namespace="ads",
                name="ctr",
                spec={},
                queue="ads",
                priority=5,
                phase="Pending",
                conditions=[],
                created_at=1.0,
            )
        )
        tx.add_event("ads/ctr", "Submitted", "queued")
    store.close()

    reopened = Store(postgres_url)
    with reopened.read() as tx:
        row = tx.job("ads", "ctr")
        assert row is not None and row.priority == 5
        assert [e.reason for e in tx.events("ads/ctr")] == ["Submitted"]
        assert [(r.name, counts) for r, counts in tx.job_summaries()] == [("ctr", {})]
    reopened.close()


def test_a_lost_database_connection_is_unavailable_and_recovers_on_its_own(
    postgres: Postgres,
) -> None:
    store = Store(postgres.url)
    with store.transaction() as tx:
        tx.add_event(None, "Hello", "before")

    postgres.stop()
    with pytest.raises(StoreUnavailable) as raised, store.transaction() as tx:
        tx.add_event(None, "Lost", "while the database is down")
    assert str(raised.value).startswith("the store cannot write: ")
    assert store.write_problem() is not None

    postgres.start()
    deadline = time.monotonic() + PROBE_INTERVAL_S + 10
    while store.write_problem() is not None:
        assert time.monotonic() < deadline, store.write_problem()
        time.sleep(0.2)
    with store.transaction() as tx:
        tx.add_event(None, "Back", "after")
    with store.read() as tx:
        assert [e.reason for e in tx.events()] == ["Hello", "Back"]
    store.close()


def test_concurrent_submits_on_postgres_keep_the_bound_and_refuse_a_taken_name(
    postgres_url: str, tmp_path: Path
) -> None:
    """Submits racing each other from many clients: a namespace takes exactly its bound
    (not one per racer past it), and one name goes to one job, the others a 409 (a
    unique-key failure at commit would be a 500)."""
    state = tmp_path / "state"
    state.mkdir()
    server = ServerProcess(
        state, None, args=("--store-url", postgres_url, "--max-jobs-per-namespace", "5")
    )
    server.start()
    try:

        def submit(name: str) -> int:
            job = script_job(name, "pass")
            job["spec"]["suspend"] = True  # held, not run: only the store is under test
            return httpx.post(f"{server.url}/api/v1/jobs", json=job, timeout=60).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(submit, [f"bounded-{i}" for i in range(40)]))
            same_name = list(pool.map(submit, ["twin"] * 16))
        assert sorted(statuses) == [201] * 5 + [403] * 35, statuses
        assert sorted(same_name) == [403] * 16, same_name

        with httpx.Client(base_url=server.url, timeout=60) as client:
            for i in range(40):
                client.delete(f"/api/v1/jobs/bounded-{i}")
        with ThreadPoolExecutor(max_workers=8) as pool:
            same_name = list(pool.map(submit, ["twin"] * 16))
        assert sorted(same_name) == [201] + [409] * 15, same_name
        assert "Traceback" not in server.server_log()
    finally:
        server.stop()
