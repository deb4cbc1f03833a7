"""Data progress: how far a job has read, committed together with the model.

The view is plain JSON that lives in ``ElasticState.data`` under :data:`PROGRESS_KEY`,
so it is copied, rolled back and broadcast exactly like the model it belongs to. Each
worker keeps the part it read since its epoch began (:class:`RankPart`); at a commit
the parts of every rank are gathered and merged into the view, so every rank holds
the same view and rank 0 reports it to the job master.

Inside a shard, reading goes window by window (a window is what gets shuffled). A
:class:`Cursor` says where a shard stands: the window it is in and how many of the
window's records were handed out. Reading the window again from ``start`` yields the
same records, shuffled the same way, so resuming skips exactly ``taken`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROGRESS_KEY = "tidemill.data"


@dataclass(frozen=True)
class Cursor:
    """Where a shard stands: window ``[start, end)`` of ``rows`` records, ``taken`` handed out.

    Positions are record counts within the shard for files and Kafka offsets for leases.
    With no window open, ``rows == taken == 0`` and ``start == end`` is the next position.
    """

    start: int
    rows: int = 0
    taken: int = 0
    end: int | None = None

    @classmethod
    def at(cls, position: int) -> Cursor:
        return cls(position, 0, 0, position)

    @property
    def in_window(self) -> bool:
        return self.taken < self.rows

    @property
    def next_position(self) -> int:
        """Where reading goes on once the current window is used up."""
        return self.start if self.end is None else self.end

    def to_json(self) -> int | list[int]:
        if not self.in_window:
            return self.next_position
        return [self.start, self.rows, self.taken, self.next_position]

    @classmethod
    def from_json(cls, value: Any) -> Cursor:
        if isinstance(value, int):
            return cls.at(value)
        start, rows, taken, end = (int(v) for v in value)
        return cls(start, rows, taken, end)


def to_ranges(indexes: Iterable[int]) -> list[list[int]]:
    """``[0, 1, 2, 5]`` as ``[[0, 3], [5, 6]]``: done lists stay small in every commit."""
    ranges: list[list[int]] = []
    for index in sorted(set(indexes)):
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] = index + 1
        else:
            ranges.append([index, index + 1])
    return ranges


def from_ranges(ranges: Sequence[Sequence[int]]) -> set[int]:
    return {index for low, high in ranges for index in range(int(low), int(high))}


Cursors = dict[str, dict[str, Cursor]]
"""Source name -> shard id -> cursor."""


def _cursors_json(cursors: Cursors) -> dict[str, dict[str, Any]]:
    return {
        name: {shard: c.to_json() for shard, c in sorted(by_shard.items())}
        for name, by_shard in sorted(cursors.items())
        if by_shard
    }


def _cursors_from(data: Mapping[str, Any]) -> Cursors:
    return {
        name: {shard: Cursor.from_json(c) for shard, c in by_shard.items()}
        for name, by_shard in data.items()
    }


@dataclass
class RankPart:
    """What one rank read since its epoch (or pass) began: shards finished, cursors of held ones."""

    done: dict[str, set[int]] = field(default_factory=dict)
    cursors: Cursors = field(default_factory=dict)
    """Shards this rank holds and has not finished."""
    finished: dict[str, set[str]] = field(default_factory=dict)
    """Ids of the finished shards, whose cursors the merged view drops."""

    def hold(self, source: str, shard_id: str, cursor: Cursor) -> None:
        self.cursors.setdefault(source, {})[shard_id] = cursor

    def finish(self, source: str, index: int, shard_id: str) -> None:
        self.done.setdefault(source, set()).add(index)
        self.cursors.get(source, {}).pop(shard_id, None)
        self.finished.setdefault(source, set()).add(shard_id)

    def drop(self, sources: Sequence[str]) -> None:
        """Forget ``sources`` (batch sources at the end of a pass)."""
        for table in (self.done, self.cursors, self.finished):
            for name in sources:
                table.pop(name, None)

    def to_json(self) -> dict[str, Any]:
        return {
            "done": {name: sorted(indexes) for name, indexes in self.done.items()},
            "cursors": _cursors_json(self.cursors),
            "finished": {name: sorted(ids) for name, ids in self.finished.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RankPart:
        return cls(
            done={name: set(indexes) for name, indexes in data["done"].items()},
            cursors=_cursors_from(data["cursors"]),
            finished={name: set(ids) for name, ids in data["finished"].items()},
        )


@dataclass
class DataProgress:
    """The committed view of a job's reading (see the module docstring).

    ``done`` holds, per source, the plan indexes of the shards finished in this pass
    (batch sources) or this stage (streams whose lease reached its end). ``cursors``
    holds the shards started and not finished. ``batch_ended`` is set once the stage's
    batch sources finished their last pass while its streams go on.
    """

    stage: int = 0
    pass_index: int = 0
    batch_ended: bool = False
    done: dict[str, set[int]] = field(default_factory=dict)
    cursors: Cursors = field(default_factory=dict)

    def cursor(self, source: str, shard_id: str) -> Cursor | None:
        return self.cursors.get(source, {}).get(shard_id)

    def merged(self, parts: Iterable[RankPart]) -> DataProgress:
        """This view with what the ranks read since it was taken."""
        done = {name: set(indexes) for name, indexes in self.done.items()}
        cursors = {name: dict(by_shard) for name, by_shard in self.cursors.items()}
        for part in parts:
            for name, indexes in part.done.items():
                done.setdefault(name, set()).update(indexes)
            for name, by_shard in part.cursors.items():
                cursors.setdefault(name, {}).update(by_shard)
            for name, ids in part.finished.items():
                for shard in ids:
                    cursors.get(name, {}).pop(shard, None)
        return DataProgress(self.stage, self.pass_index, self.batch_ended, done, cursors)

    def next_pass(self, batch_sources: Sequence[str], epochs: int) -> DataProgress:
        """Batch sources start over (or end, after ``epochs`` passes); streams go on."""
        if self.pass_index + 1 >= epochs:
            ended = self.with_pass(self.pass_index, batch_sources)
            ended.batch_ended = True
            return ended
        return self.with_pass(self.pass_index + 1, batch_sources)

    def with_pass(self, pass_index: int, batch_sources: Sequence[str]) -> DataProgress:
        """Pass ``pass_index`` of the batch sources, from nothing read; streams as they are."""
        done = {k: set(v) for k, v in self.done.items() if k not in batch_sources}
        cursors = {k: dict(v) for k, v in self.cursors.items() if k not in batch_sources}
        return DataProgress(self.stage, pass_index, False, done, cursors)

    def next_stage(self) -> DataProgress:
        return DataProgress(self.stage + 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "pass": self.pass_index,
            "batch_ended": self.batch_ended,
            "done": {name: to_ranges(indexes) for name, indexes in sorted(self.done.items())},
            "cursors": _cursors_json(self.cursors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> DataProgress:
        if not data:
            return cls()
        return cls(
            stage=int(data["stage"]),
            pass_index=int(data["pass"]),
            batch_ended=bool(data.get("batch_ended")),
            done={name: from_ranges(r) for name, r in data["done"].items()},
            cursors=_cursors_from(data["cursors"]),
        )
