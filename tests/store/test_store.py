"""The store survives a reopen and keeps transactions atomic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.store.store import Store
from tidemill.store.tables import JobRow, ReplicaRow


def new_job(name: str) -> JobRow:
    return JobRow(
        uid=f"uid-{name}",
        namespace="ads",
        name=name,
        spec={"spec": {"roles": {}}},
        queue="ads",
        priority=0,
        phase="Pending",
        conditions=[],
        created_at=1.0,
    )


def test_jobs_replicas_and_events_survive_reopening(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        job = tx.add_job(new_job("ctr"))
        job.replicas.append(
            ReplicaRow(
                role="worker",
                index=0,
                phase="Running",
                node="n1",
                cpu_millis=500,
                memory_bytes=2**30,
                gpu_ids=[3],
                gpu_share=0.5,
                handle={"engine": "local", "data": {"pid": 42}},
            )
        )
        tx.add_event("ads/ctr", "Submitted", "queued")
    store.close()

    reopened = Store.in_folder(tmp_path)
    with reopened.read() as tx:
        row = tx.job("ads", "ctr")
        assert row is not None
        assert [(r.replica_name, r.gpu_ids, r.handle) for r in row.replicas] == [
            ("worker-0", [3], {"engine": "local", "data": {"pid": 42}})
        ]
        assert [e.reason for e in tx.events("ads/ctr")] == ["Submitted"]
    reopened.close()


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.add_job(new_job("half-done"))
        raise RuntimeError("crash mid-way")
    with store.read() as tx:
        assert tx.jobs() == []
    store.close()


def test_names_are_unique_per_namespace_and_ids_keep_fifo_order(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        first = tx.add_job(new_job("a"))
        second = tx.add_job(new_job("b"))
    assert first.id < second.id
    with pytest.raises(Exception, match="UNIQUE"), store.transaction() as tx:
        tx.add_job(new_job("a"))
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_the_id_of_a_deleted_newest_job_is_never_given_again(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        first = tx.add_job(new_job("first")).id
    with store.transaction() as tx:
        row = tx.job("ads", "first")
        assert row is not None
        tx.delete_job(row)
    with store.transaction() as tx:
        second = tx.add_job(new_job("second")).id

    assert second > first
