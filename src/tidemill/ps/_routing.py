"""Which PS replica holds an id: hash -> virtual shard -> replica, and the id checks.

Ids hash into ``virtual_shards`` buckets (:func:`virtual_shard`) and a :class:`ShardMap`
(a plain value, one owner per bucket) places the buckets on replicas, so a bucket can
move to another replica later without rehashing any id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tidemill.ps._errors import PSBadIds, PSConfigError
from tidemill.ps._hashing import virtual_shard
from tidemill.ps._psconfig import PSConfig

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class ShardMap:
    """``owners[v]`` is the replica index that holds virtual shard ``v``.

    >>> ShardMap.modulo(virtual_shards=4, replicas=3).owners
    (0, 1, 2, 0)
    """

    owners: tuple[int, ...]
    replicas: int
    _lookup: npt.NDArray[np.int32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = [owner for owner in self.owners if not 0 <= owner < self.replicas]
        if bad:
            raise PSConfigError(
                f"shard_map: owners {sorted(set(bad))[:5]} are not replica indexes"
                f" 0 .. {self.replicas - 1}"
            )
        object.__setattr__(self, "_lookup", np.asarray(self.owners, dtype=np.int32))

    @classmethod
    def modulo(cls, virtual_shards: int, replicas: int) -> ShardMap:
        if replicas < 1:
            raise PSConfigError(f"replicas: {replicas}; a PS job needs at least one")
        return cls(tuple(v % replicas for v in range(virtual_shards)), replicas)

    @classmethod
    def for_config(cls, config: PSConfig, replicas: int) -> ShardMap:
        if config.shard_map is None:
            return cls.modulo(config.virtual_shards, replicas)
        return cls(config.shard_map, replicas)

    def owner_mask(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The replica index that holds each id."""
        owners: npt.NDArray[np.int32] = self._lookup[virtual_shard(ids, len(self.owners))]
        return owners

    def route(self, ids: npt.NDArray[np.int64]) -> list[npt.NDArray[np.intp]]:
        """Positions into ``ids`` for each replica, in replica order (stable within one)."""
        owner = self._lookup[virtual_shard(ids, len(self.owners))]
        order = np.argsort(owner, kind="stable")
        bounds = np.cumsum(np.bincount(owner, minlength=self.replicas))
        return np.split(order, bounds[:-1])


def checked_ids(ids: npt.ArrayLike, what: str) -> npt.NDArray[np.int64]:
    """``ids`` flattened to int64, or :class:`PSBadIds` naming ``what`` and the bad values.

    >>> checked_ids(np.array([[3, 5]], dtype=np.int32), "user").tolist()
    [3, 5]
    """
    array = np.asarray(ids)
    if array.dtype.kind not in "iu":
        raise PSBadIds(
            f"{what}: ids have dtype {array.dtype}; use an integer dtype (int64 preferred)"
        )
    flat = array.reshape(-1)
    if array.dtype.kind == "u" and flat.size and flat.max() > INT64_MAX:
        raise PSBadIds(f"{what}: id {int(flat.max())} is above the int64 maximum {INT64_MAX}")
    flat = flat.astype(np.int64, copy=False)
    if flat.size and (smallest := int(flat.min())) < 0:
        count = int(np.count_nonzero(flat < 0))
        raise PSBadIds(
            f"{what}: {count} negative ids (smallest {smallest}); ids must be in 0 .. {INT64_MAX}"
        )
    return np.ascontiguousarray(flat)
