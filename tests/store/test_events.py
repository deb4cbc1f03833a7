"""Events are bounded: fields cut to size, a cap per job, and gone with their job."""

from __future__ import annotations

from pathlib import Path

from tests.store.test_store import new_job
from tidemill.store.store import Store
from tidemill.store.tables import EVENT_MESSAGE_MAX_CHARS, EVENTS_PER_JOB_MAX


def test_over_long_fields_are_cut_and_the_message_says_so(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        tx.add_event("ads/ctr", "R" * 100, "m" * 100_000, replica="w" * 100)
    with store.read() as tx:
        [event] = tx.events("ads/ctr")
    assert event.reason == "R" * 64
    assert event.replica == "w" * 64
    assert len(event.message) == EVENT_MESSAGE_MAX_CHARS
    assert event.message.startswith("mmm")
    cut = 100_000 - EVENT_MESSAGE_MAX_CHARS
    assert event.message.endswith(f"… [{cut} more characters cut]")
    store.close()


def test_a_job_keeps_at_most_the_cap_of_events_the_newest_ones(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    total = EVENTS_PER_JOB_MAX + 345
    with store.transaction() as tx:
        for i in range(total):
            tx.add_event("ads/chatty", "Tick", str(i))
            if i % 1000 == 0:
                tx.add_event("ads/quiet", "Tick", str(i))
    with store.read() as tx:
        kept = tx.events("ads/chatty", limit=2 * EVENTS_PER_JOB_MAX)
        quiet = tx.events("ads/quiet", limit=100)
    assert len(kept) <= EVENTS_PER_JOB_MAX
    assert kept[-1].message == str(total - 1)
    assert len(kept) >= EVENTS_PER_JOB_MAX - EVENTS_PER_JOB_MAX // 100
    assert len(quiet) == 11
    store.close()


def test_a_deleted_job_takes_its_events_and_a_new_one_of_that_name_inherits_none(
    tmp_path: Path,
) -> None:
    store = Store.in_folder(tmp_path)
    with store.transaction() as tx:
        tx.add_job(new_job("ctr"))
        tx.add_event("ads/ctr", "Submitted", "queued")
        tx.add_event("ads/other", "Submitted", "queued")
    with store.transaction() as tx:
        row = tx.job("ads", "ctr")
        assert row is not None
        tx.delete_job(row)
        tx.add_event("ads/ctr", "Deleted", "job deleted; processes stopped")
    with store.read() as tx:
        assert [e.reason for e in tx.events("ads/ctr")] == ["Deleted"]

    with store.transaction() as tx:
        tx.add_job(new_job("ctr"))
    with store.read() as tx:
        assert tx.events("ads/ctr") == []
        assert [e.reason for e in tx.events("ads/other")] == ["Submitted"]
    store.close()
