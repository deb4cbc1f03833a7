"""Which PS replica holds an id: hash -> virtual shard -> replica, and the id checks.

Ids hash into ``virtual_shards`` buckets (:func:`virtual_shard`) and a :class:`ShardMap`
(a plain value, one owner per bucket) places the buckets on replicas, so a bucket can
move to another replica later without rehashing any id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt

from tidemill.ps._errors import PSBadIds, PSConfigError
from tidemill.ps._hashing import _dedupe, mix64_one, virtual_shard
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

    def group(self, ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], tuple[int, ...]]:
        """``(order, bounds)``: ``ids[order[bounds[r]:bounds[r+1]]]`` are replica r's ids,
        in their order in ``ids``; one compiled pass (a counting sort by owner).

        >>> shard_map = ShardMap.modulo(virtual_shards=4, replicas=2)
        >>> order, bounds = shard_map.group(np.arange(5))
        >>> shard_map.owner_mask(np.arange(5)[order]).tolist(), bounds
        ([0, 0, 1, 1, 1], (0, 2, 5))
        """
        order, bounds = _group(ids, self._lookup, self.replicas)
        return order, tuple(bounds.tolist())

    def unique_grouped(
        self, ids: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], tuple[int, ...]]:
        """``(unique, inverse, bounds)``: each id once, grouped by replica as in
        :meth:`group`, with ``unique[inverse] == ids``; one compiled call.

        >>> unique, inverse, bounds = ShardMap.modulo(4, 2).unique_grouped(np.array([5, 5, 6]))
        >>> unique[inverse].tolist(), bounds[-1]
        ([5, 5, 6], 2)
        """
        unique, inverse, bounds = _unique_grouped(ids, self._lookup, self.replicas)
        return unique, inverse, tuple(bounds.tolist())


@numba.njit(nogil=True, cache=True)
def _group(
    ids: npt.NDArray[np.int64], lookup: npt.NDArray[np.int32], replicas: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    shards = np.uint64(lookup.size)
    owner = np.empty(ids.size, np.int32)
    bounds = np.zeros(replicas + 1, np.int64)
    if lookup.size & (lookup.size - 1) == 0:  # a power of two: the same bucket, no division
        mask = shards - np.uint64(1)
        for i in range(ids.size):
            owner[i] = lookup[mix64_one(np.uint64(ids[i])) & mask]
    else:
        for i in range(ids.size):
            owner[i] = lookup[mix64_one(np.uint64(ids[i])) % shards]
    for i in range(ids.size):
        bounds[owner[i] + 1] += 1
    for r in range(replicas):
        bounds[r + 1] += bounds[r]
    filled = bounds[:-1].copy()
    order = np.empty(ids.size, np.int64)
    for i in range(ids.size):
        order[filled[owner[i]]] = i
        filled[owner[i]] += 1
    return order, bounds


@numba.njit(nogil=True, cache=True)
def _unique_grouped(
    ids: npt.NDArray[np.int64], lookup: npt.NDArray[np.int32], replicas: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    unique, inverse = _dedupe(ids)
    order, bounds = _group(unique, lookup, replicas)
    grouped = np.empty(unique.size, np.int64)
    position = np.empty(unique.size, np.int64)
    for i in range(order.size):
        grouped[i] = unique[order[i]]
        position[order[i]] = i
    for i in range(inverse.size):
        inverse[i] = position[inverse[i]]
    return grouped, inverse, bounds


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
