"""A full disk, as SQLite itself reports it: ``PRAGMA max_page_count`` on every
connection of the store keeps the database from growing, and a write that needs a new
page fails with SQLITE_FULL ("database or disk is full"), exactly the error a full disk
gives. Lifting the cap is space returning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from tidemill.store.store import Store, StoreUnavailable


@contextmanager
def disk_full(store: Store) -> Iterator[None]:
    """Inside the block the database cannot grow past its size at the start."""
    with store.engine.connect() as connection:
        pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar() or 0)

    def cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

    event.listen(store.engine, "connect", cap)
    store.engine.dispose()  # connections open now reconnect with the cap
    try:
        yield
    finally:
        event.remove(store.engine, "connect", cap)
        store.engine.dispose()


def fill(store: Store) -> StoreUnavailable:
    """Write events until the database is full; returns the error that said so."""
    for _ in range(10_000):
        try:
            with store.transaction() as tx:
                tx.add_event("filler/job", "Filler", "x" * 4000)
        except StoreUnavailable as exc:
            return exc
    raise AssertionError("the database never filled up")
