"""Which store URLs a server can use, checked before it starts: the store is SQLite or
Postgres, and a URL SQLAlchemy cannot parse would otherwise fail deep in its engine."""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

BACKENDS = ("sqlite", "postgresql")
EXAMPLES = "sqlite:////var/lib/tidemill/tidemill.db or postgresql+psycopg://user@host/db"


def store_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a store, or None.

    >>> store_url_problem("postgresql+psycopg://tidemill@db/tidemill") is None
    True
    >>> store_url_problem("mysql://db/tidemill")
    "the store is SQLite or Postgres, not 'mysql'"
    """
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except NoSuchModuleError:  # an ArgumentError too: first
        return "SQLAlchemy knows no such database or driver"
    except ArgumentError:
        return "SQLAlchemy cannot parse it"
    if parsed.get_backend_name() not in BACKENDS:
        return f"the store is SQLite or Postgres, not {parsed.get_backend_name()!r}"
    return None
