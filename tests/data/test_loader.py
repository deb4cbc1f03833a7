"""tidemill.data.loader in one process: plans, passes, shuffle, mixing, resume, tensors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.data.conftest import Topic
from tidemill.data import SourceNotFound, loader
from tidemill.data._loader import _one_batch
from tidemill.data._progress import PROGRESS_KEY
from tidemill.data._tensors import to_tensors
from tidemill.runtime import ElasticContext, ElasticState, elastic


def write_ids(folder: Path, files: int = 3, rows: int = 500) -> Path:
    folder.mkdir(exist_ok=True)
    for f in range(files):
        ids = list(range(f * rows, (f + 1) * rows))
        table = pa.table({"id": ids, "x": [i * 0.5 for i in ids], "name": [str(i) for i in ids]})
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=120)
    return folder


def plan(path: Path, **extra: Any) -> dict[str, Any]:
    stage = {"name": "all", "sources": [{"parquet": {"path": str(path)}}], **extra.pop("stage", {})}
    return {"stages": [stage], "rowsPerShard": 250, **extra}


def ids_of(batches: Any) -> list[int]:
    return [i for batch in batches for i in batch["id"].tolist()]


def test_every_record_once_per_epoch_as_tensors(tmp_path: Path) -> None:
    folder = write_ids(tmp_path / "d")
    batches = list(loader(100, ["id", "x"], spec=plan(folder, stage={"epochs": 2})))
    assert Counter(Counter(ids_of(batches)).values()) == {2: 1500}
    assert isinstance(batches[0]["x"], torch.Tensor) and batches[0]["x"].dtype == torch.float64
    assert all(len(batch["id"]) == 100 for batch in batches)


def test_the_shuffle_buffer_mixes_records_the_same_way_for_the_same_seed(tmp_path: Path) -> None:
    folder = write_ids(tmp_path / "d")
    spec = plan(folder, shuffle={"seed": 4, "bufferRows": 300})
    first = ids_of(loader(64, ["id"], spec=spec))
    second = ids_of(loader(64, ["id"], spec=spec))
    other = ids_of(loader(64, ["id"], spec={**spec, "shuffle": {"seed": 5, "bufferRows": 300}}))
    assert sorted(first) == list(range(1500))
    assert first == second != other
    assert first[:300] != sorted(first[:300])


def test_resuming_from_a_commit_reads_exactly_what_was_not_committed(tmp_path: Path) -> None:
    """The view committed with the model is all a new process needs to continue."""
    folder = write_ids(tmp_path / "d")
    spec = plan(folder, shuffle={"seed": 2, "bufferRows": 150})
    state = ElasticState(torch.nn.Linear(1, 1))
    trained: list[int] = []

    @elastic(state)
    def train_until_crash(ctx: ElasticContext) -> None:
        for batch in loader(70, ["id"], spec=spec):
            trained.extend(batch["id"].tolist())
            state.step += 1
            if state.step == 9:
                state.commit()
            if state.step == 13:
                return  # "crashes": steps 10..13 were never committed

    train_until_crash()
    committed = trained[: 9 * 70]
    fresh = ElasticState(torch.nn.Linear(1, 1), data=state.committed_data)
    assert PROGRESS_KEY in fresh.data
    rest: list[int] = []

    @elastic(fresh)
    def resume(ctx: ElasticContext) -> None:
        for batch in loader(70, ["id"], spec=spec):
            rest.extend(batch["id"].tolist())

    resume()
    assert sorted(committed + rest) == list(range(1500))
    assert trained[9 * 70 : 13 * 70] == rest[: 4 * 70]  # the same records, in the same order


def test_a_stream_and_a_table_in_one_stage_deliver_every_record_once(
    tmp_path: Path, make_topic: Callable[..., Topic]
) -> None:
    """The stream has priority: what it has ready fills each batch, the table the rest."""
    topic = make_topic(n=300, partitions=2)
    folder = tmp_path / "t"
    folder.mkdir()
    pq.write_table(pa.table({"id": list(range(10_000, 10_900))}), folder / "p.parquet")
    kafka = {
        "bootstrap": topic.bootstrap,
        "topic": topic.name,
        "start": "earliest",
        "end": "offsets",
        "endOffsets": {topic.name: {0: 150, 1: 150}},
    }
    spec = {
        "stages": [
            {
                "name": "mixed",
                "sources": [
                    {"name": "live", "priority": 1, "kafka": kafka},
                    {"name": "table", "parquet": {"path": str(folder)}},
                ],
            }
        ]
    }
    batches = list(loader(100, ["id"], spec=spec, output="arrow"))
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert sorted(ids) == list(range(300)) + list(range(10_000, 10_900))


def test_weights_split_each_batch_between_sources_of_equal_priority(tmp_path: Path) -> None:
    small = write_ids(tmp_path / "a", files=1, rows=1000)
    big = tmp_path / "b"
    big.mkdir()
    pq.write_table(pa.table({"id": list(range(10_000, 13_000))}), big / "p.parquet")
    spec = {
        "stages": [
            {
                "name": "mix",
                "sources": [
                    {"name": "a", "weight": 1, "parquet": {"path": str(small)}},
                    {"name": "b", "weight": 3, "parquet": {"path": str(big)}},
                ],
            }
        ]
    }
    first = next(iter(loader(100, ["id"], spec=spec, output="arrow")))
    from_b = sum(1 for i in first.column("id").to_pylist() if i >= 10_000)
    assert from_b == 75


def test_a_worker_of_a_group_outside_the_elastic_loop_is_told_to_move_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_ids(tmp_path / "d", files=1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("TIDEMILL_DATA", json.dumps(plan(folder)))
    with pytest.raises(RuntimeError, match=r"outside an @elastic training function in a job of 4"):
        next(loader(10))
    # A plan of its own (an evaluation on rank 0) is read alone.
    assert len(ids_of(loader(100, ["id"], spec=plan(folder)))) == 500


def test_bad_input_names_what_to_fix(tmp_path: Path) -> None:
    folder = write_ids(tmp_path / "d", files=1)
    with pytest.raises(ValueError, match=r"no data plan: give the job file a spec\.data"):
        loader(10)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        loader(0, spec=plan(folder))
    with pytest.raises(TypeError, match=r"column 'name' is string.*output='arrow'"):
        next(iter(loader(10, ["id", "name"], spec=plan(folder))))
    with pytest.raises(SourceNotFound, match="nowhere"):
        next(iter(loader(10, spec=plan(tmp_path / "nowhere"))))


def test_two_loaders_in_one_training_function_both_commit_and_resume(tmp_path: Path) -> None:
    """Each loader hooks the commit with its own key: the second no longer overwrites the first."""
    spec = plan(write_ids(tmp_path / "d"))
    other = plan(write_ids(tmp_path / "e", files=1, rows=400))
    state = ElasticState(torch.nn.Linear(1, 1))
    seen: dict[str, list[int]] = {"main": [], "aux": []}

    @elastic(state)
    def train(ctx: ElasticContext) -> None:
        aux = loader(40, ["id"], spec=other, name="aux")
        for batch in loader(100, ["id"], spec=spec):
            seen["main"].extend(batch["id"].tolist())
            seen["aux"].extend(next(aux)["id"].tolist())
            state.step += 1
            if state.step == 3:
                state.commit()
                return

    train()
    committed = state.committed_data
    assert set(committed) == {PROGRESS_KEY, f"{PROGRESS_KEY}:aux"}
    fresh = ElasticState(torch.nn.Linear(1, 1), data=committed)
    rest: dict[str, list[int]] = {}

    @elastic(fresh)
    def resume(ctx: ElasticContext) -> None:
        rest["main"] = ids_of(loader(100, ["id"], spec=spec))
        rest["aux"] = ids_of(loader(40, ["id"], spec=other, name="aux"))

    resume()
    assert sorted(seen["main"] + rest["main"]) == list(range(1500))
    assert sorted(seen["aux"] + rest["aux"]) == list(range(400))
    assert len(seen["aux"]) == 3 * 40


def test_a_step_with_no_records_keeps_the_column_types_of_the_last_batch() -> None:
    """A rank with nothing to read this step (a stream at a stage change) still gets ids
    as integers: an embedding lookup of float ids would be refused."""
    schema = pa.schema([("id", pa.int64()), ("x", pa.float32())])
    tensors = to_tensors(_one_batch([], ["id", "x"], schema))
    assert {name: (t.dtype, len(t)) for name, t in tensors.items()} == {
        "id": (torch.int64, 0),
        "x": (torch.float32, 0),
    }
