"""The same store on a real PostgreSQL server, started by the test (skipped without one)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

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
