"""A store that cannot write says so (StoreUnavailable, with the database's reason),
keeps serving reads, and notices by itself when it can write again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.store.full_disk import disk_full, fill
from tidemill.store.store import PROBE_INTERVAL_S, Store, StoreUnavailable
from tidemill.store.tables import JobRow


def new_job(name: str) -> JobRow:
    """A job whose spec needs pages of its own (a full database has no room for it)."""
    return JobRow(
        uid=f"uid-{name}",
        namespace="ads",
        name=name,
        spec={"spec": {"roles": {}}, "notes": "n" * 10_000},
        queue="ads",
        priority=0,
        phase="Pending",
        conditions=[],
        created_at=1.0,
    )


def wait_until_writable(store: Store) -> None:
    deadline = time.monotonic() + PROBE_INTERVAL_S + 5
    while store.write_problem() is not None:
        assert time.monotonic() < deadline, f"still {store.write_problem()!r}"
        time.sleep(0.1)


def test_a_full_disk_is_reported_reads_carry_on_and_space_returning_recovers(
    tmp_path: Path,
) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        tx.add_job(new_job("ctr"))
    assert store.write_problem() is None

    with disk_full(store):
        error = fill(store)
        assert str(error) == "the store cannot write: database or disk is full"
        assert error.cause == "database or disk is full"
        with (
            pytest.raises(StoreUnavailable, match="database or disk is full"),
            store.transaction() as tx,
        ):
            tx.add_job(new_job("more"))
        assert store.write_problem() == "database or disk is full"
        with store.read() as tx:
            assert [j.name for j in tx.jobs()] == ["ctr"]

    wait_until_writable(store)
    with store.transaction() as tx:
        tx.add_job(new_job("more"))
    with store.read() as tx:
        assert [j.name for j in tx.jobs()] == ["ctr", "more"]
    store.close()


def test_a_store_opened_on_a_full_disk_finds_it_before_any_write_fails(tmp_path: Path) -> None:
    filled = Store.in_folder(tmp_path)
    with disk_full(filled):
        fill(filled)
    filled.close()

    reopened = Store.in_folder(tmp_path)
    with disk_full(reopened):
        assert reopened.write_problem() == "database or disk is full"
    reopened.close()


def test_a_database_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "tidemill.db"
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        Store(f"sqlite:///{missing}")


def test_other_database_errors_pass_through_unchanged(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        tx.add_job(new_job("a"))
    with pytest.raises(Exception, match="UNIQUE") as raised, store.transaction() as tx:
        tx.add_job(new_job("a"))
    assert not isinstance(raised.value, StoreUnavailable)
    assert store.write_problem() is None
    store.close()
