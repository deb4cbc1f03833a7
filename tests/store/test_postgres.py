"""The same store on a real PostgreSQL server, started by the test (skipped without one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemill.engines.local import free_port
from tidemill.store.store import Store
from tidemill.store.tables import JobRow

pytest.importorskip("psycopg")
INITDB = shutil.which("initdb")
POSTGRES = shutil.which("postgres")
pytestmark = pytest.mark.skipif(not (INITDB and POSTGRES), reason="PostgreSQL is not installed")


def _as_postgres_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root, so drop to nobody there.
    return ["runuser", "-u", "nobody", "--", *argv] if os.geteuid() == 0 else argv


@pytest.fixture
def postgres_url() -> Iterator[str]:
    # Not under pytest's tmp_path: that folder is private to root, and nobody must enter it.
    data = Path(tempfile.mkdtemp(prefix="tidemill-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "nobody")
    subprocess.run(
        _as_postgres_user([str(INITDB), "-D", str(data), "-U", "tidemill", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        _as_postgres_user(
            [str(POSTGRES), "-D", str(data), "-p", str(port), "-k", str(data), "-h", "127.0.0.1"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql+psycopg://tidemill@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                Store(url).close()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


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
