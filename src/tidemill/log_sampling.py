"""How often a refusal that anyone can repeat is logged: enough to see it, never enough
to fill a disk. A flood of connections or requests is answered each time but logged
only now and then, with the count so far."""

from __future__ import annotations

LOG_EVERY = 1000
"""After the first few, one line per this many."""


def worth_logging(count: int, first: int = 1) -> bool:
    """Whether the ``count``-th (from 1) of a repeated event is logged: the first
    ``first``, then every :data:`LOG_EVERY`-th."""
    return count <= first or count % LOG_EVERY == 0
