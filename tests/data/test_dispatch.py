"""Shard dispatch from the committed view: pull order, resets per epoch, passes, stages."""

from __future__ import annotations

from typing import Any

from tidemill.api.data import DataSpec
from tidemill.data import FileRange, Shard, SourceKind
from tidemill.data._dispatch import Dispatcher, Grant
from tidemill.data._plan import SourcePlan, StagePlan
from tidemill.data._progress import Cursor, DataProgress

SPEC = DataSpec.model_validate(
    {
        "shuffle": {"seed": 1},
        "stages": [
            {"name": "backfill", "epochs": 2, "sources": [{"parquet": {"path": "t"}}]},
            {"name": "more", "sources": [{"parquet": {"path": "u"}}]},
        ],
    }
)


def shards(source: str, count: int) -> tuple[Shard, ...]:
    return tuple(
        Shard(f"{source}:f#{i}", source, SourceKind.PARQUET, file=FileRange("f", i, i + 1, 10))
        for i in range(count)
    )


def dispatcher() -> Dispatcher:
    made = Dispatcher(SPEC)
    for index, (name, count) in enumerate((("t", 4), ("u", 2))):
        source = SourcePlan(name, SourceKind.PARQUET, 1.0, 0, shards(name, count))
        made.add_plan(StagePlan(index, SPEC.stages[index].name, 2 - index, (source,), 0.0))
    return made


def lease(
    d: Dispatcher, replica: str, epoch: int, stage: int = 0, pass_index: int = 0, **kw: Any
) -> Grant:
    source = kw.pop("source", "t" if stage == 0 else "u")
    grant, _ = d.lease(replica, epoch, stage, pass_index, source, kw.get("view"), now=1.0)
    return grant


def test_workers_pull_every_shard_once_in_an_epoch_then_get_none() -> None:
    d = dispatcher()
    first = lease(d, "worker-0", 1, view=DataProgress().to_json())
    rest = [lease(d, f"worker-{i % 2}", 1) for i in range(3)]
    ids = [g.shard.id for g in [first, *rest] if g.shard is not None]
    assert sorted(ids) == [f"t:f#{i}" for i in range(4)]
    assert all(g.cursor == Cursor.at(0) for g in [first, *rest])
    assert lease(d, "worker-1", 1).shard is None
    assert d.counts(0, "t") == (0, 4, 0)


def test_a_new_epoch_starts_from_the_committed_view_and_forgets_uncommitted_leases() -> None:
    d = dispatcher()
    for _ in range(4):
        lease(d, "worker-0", 1, view=DataProgress().to_json())
    # The group committed: shard 1 done, shard 2 half read; shards 0 and 3 were leased
    # after the commit, and their reader died with the epoch.
    view = DataProgress(done={"t": {1}}, cursors={"t": {"t:f#2": Cursor(0, 10, 4, 10)}})
    again = [lease(d, "worker-1", 2, view=view.to_json())]
    again += [lease(d, "worker-1", 2) for _ in range(2)]
    assert again[0].shard is not None and again[0].shard.id == "t:f#2"
    assert again[0].cursor == Cursor(0, 10, 4, 10)
    assert sorted(g.shard.id for g in again if g.shard) == ["t:f#0", "t:f#2", "t:f#3"]
    assert lease(d, "worker-1", 2).shard is None


def test_a_request_from_an_epoch_that_is_over_is_stale() -> None:
    d = dispatcher()
    lease(d, "worker-0", 3, view=DataProgress().to_json())
    assert lease(d, "worker-1", 2).stale


def test_passes_reshuffle_and_stages_announce_themselves() -> None:
    d = dispatcher()
    first, changes = d.lease("w-0", 1, 0, 0, "t", DataProgress().to_json(), now=1.0)
    assert [(c.stage, c.started) for c in changes] == [("backfill", True)]
    order0 = [first.shard.id if first.shard else ""]
    order0 += [g.shard.id for g in (lease(d, "w-0", 1) for _ in range(3)) if g.shard]
    order1 = [g.shard.id for g in (lease(d, "w-0", 1, 0, 1) for _ in range(4)) if g.shard]
    assert sorted(order0) == sorted(order1) and order0 != order1
    _, changes = d.lease("w-0", 1, 1, 0, "u", None, now=2.0)
    assert [(c.stage, c.started) for c in changes] == [("backfill", False), ("more", True)]
    grant, changes = d.lease("w-0", 1, 2, 0, None, None, now=3.0)
    assert grant.shard is None and d.finished
    assert [(c.stage, c.started) for c in changes] == [("more", False)]
    assert d.times == {0: [1.0, 2.0], 1: [2.0, 3.0]}


def test_the_state_survives_a_master_restart() -> None:
    d = dispatcher()
    lease(d, "w-0", 1, view=DataProgress().to_json())
    restored = Dispatcher.restore(SPEC, d.snapshot())
    assert restored.snapshot() == d.snapshot()
    left = [lease(restored, "w-0", 1).shard for _ in range(4)]
    assert sum(shard is not None for shard in left) == 3
