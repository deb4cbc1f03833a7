"""The ids a shard evicted, each with the table version of its eviction: a delta export
names them as deleted, so serving drops them too."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tidemill.ps._undo import grown

Ids = npt.NDArray[np.int64]


class Tombstones:
    """An append-only log of ``(id, version)``, cut back to an earlier length on rollback.

    >>> log = Tombstones(); log.append(np.array([7, 3, 7]), np.array([1, 2, 4]))
    >>> [a.tolist() for a in log.latest(since_version=1)]
    [[3, 7], [2, 4]]
    """

    def __init__(self) -> None:
        self._log = np.empty((0, 2), np.int64)
        self.count = 0
        """entries in use (the log's room beyond them is reused)"""

    @property
    def nbytes(self) -> int:
        return int(self._log.nbytes)

    def append(self, ids: Ids, versions: Ids) -> None:
        self._log = grown(self._log, self.count + ids.size, self.count)
        self._log[self.count : self.count + ids.size, 0] = ids
        self._log[self.count : self.count + ids.size, 1] = versions
        self.count += ids.size

    def truncate(self, count: int) -> None:
        """Forget the entries after the first ``count`` (a rollback to a cut)."""
        self.count = count

    def clear(self) -> None:
        self._log = np.empty((0, 2), np.int64)
        self.count = 0

    def latest(self, since_version: int | None) -> tuple[Ids, Ids]:
        """Each id's newest tombstone (after ``since_version``, when given), sorted by
        id: the ids and their versions, as copies."""
        tombs = self._log[: self.count]
        if since_version is not None:
            tombs = tombs[tombs[:, 1] > since_version]
        tombs = tombs[np.lexsort((tombs[:, 1], tombs[:, 0]))]
        newest = np.ones(tombs.shape[0], bool)
        newest[:-1] = tombs[1:, 0] != tombs[:-1, 0]
        tombs = tombs[newest]
        return tombs[:, 0].copy(), tombs[:, 1].copy()
