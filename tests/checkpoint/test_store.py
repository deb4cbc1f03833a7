"""What the store keeps, what it lists, and what it passes over when loading."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import pytest

from tests.checkpoint.conftest import adam, assert_same, train, trained
from tidemill.checkpoint import CheckpointError, CheckpointStore
from tidemill.runtime import ElasticState

PARTIAL = "partial: no manifest (the write did not finish)"


pytestmark = pytest.mark.usefixtures("reading")


def saved_steps(store: CheckpointStore, steps: list[int]) -> ElasticState:
    state = trained(adam, steps=0)
    for step in steps:
        train(state, step - state.step)
        store.save(state.committed)
    return state


def names(store: CheckpointStore) -> list[str]:
    return [listing.name for listing in store.list()]


def test_only_the_newest_keep_checkpoints_stay(store_url: str) -> None:
    store = CheckpointStore(store_url, keep=2)
    saved_steps(store, [1, 2, 3, 4])
    assert names(store) == ["step-000000000004", "step-000000000003"]
    assert sorted(p.name for p in Path(store_url).iterdir()) == [
        "step-000000000003",
        "step-000000000004",
    ]


def test_a_partial_directory_is_listed_with_its_problem_and_passed_over(store_url: str) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1, 2])
    (Path(store_url) / "step-000000000005").mkdir()
    (Path(store_url) / "step-000000000005" / "__0_0.distcp").write_bytes(b"half")
    [partial, newest, _] = store.list()
    assert (partial.name, partial.manifest, partial.problem) == ("step-000000000005", None, PARTIAL)
    assert newest.manifest is not None and newest.problem is None

    model, optimizer = adam()
    loaded = store.load_newest(model, optimizer)
    assert loaded.manifest is not None and loaded.manifest.step == 2
    assert [(s.name, s.reason) for s in loaded.skipped] == [("step-000000000005", PARTIAL)]


def test_partial_directories_older_than_the_newest_valid_one_are_removed_by_the_next_save(
    store_url: str,
) -> None:
    store = CheckpointStore(store_url)
    (Path(store_url) / "step-000000000001").mkdir(parents=True)
    (Path(store_url) / "step-000000000009").mkdir()
    (Path(store_url) / "not-a-checkpoint").mkdir()
    saved_steps(store, [3])
    assert names(store) == ["step-000000000009", "step-000000000003"]
    assert (Path(store_url) / "not-a-checkpoint").is_dir()


def test_a_corrupted_newest_checkpoint_is_skipped_with_the_reason_and_the_previous_loads(
    store_url: str,
) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1, 2])
    previous = store.load("step-000000000001", *adam()).committed
    data = Path(store_url) / "step-000000000002" / "__0_0.distcp"
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))

    model, optimizer = adam()
    loaded = store.load_newest(model, optimizer)
    assert loaded.manifest is not None and loaded.manifest.step == 1
    [skipped] = loaded.skipped
    assert skipped.name == "step-000000000002"
    assert skipped.reason.startswith("file __0_0.distcp has crc32 ")
    assert "its bytes changed after the write" in skipped.reason
    assert loaded.committed is not None
    assert previous is not None
    assert_same(previous.model, loaded.committed.model, "model")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda m: m.pop("files"), "invalid manifest: field 'files' is missing"),
        (
            lambda m: m.update(step="two"),
            "invalid manifest: field 'step': expected an integer >= 0, got 'two'",
        ),
        (
            lambda m: m["model"].update({"0.weight": [[8, 4]]}),
            "invalid manifest: field 'model.0.weight': expected [shape list, dtype], got [[8, 4]]",
        ),
        (lambda m: m.update(version=99), "invalid manifest: field 'version': 99 is newer"),
    ],
    ids=["missing-field", "wrong-type", "bad-model-entry", "newer-version"],
)
def test_a_checkpoint_with_a_damaged_manifest_is_listed_with_the_field_that_is_wrong(
    store_url: str, damage: object, problem: str
) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1, 2])
    path = Path(store_url) / "step-000000000002" / "manifest.json"
    manifest = json.loads(path.read_text())
    damage(manifest)  # type: ignore[operator]
    path.write_text(json.dumps(manifest))
    [newest, _] = store.list()
    assert newest.manifest is None and newest.problem is not None
    assert newest.problem.startswith(problem)
    loaded = store.load_newest(*adam())
    assert loaded.manifest is not None and loaded.manifest.step == 1


def test_a_truncated_manifest_is_not_json(store_url: str) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1])
    path = Path(store_url) / "step-000000000001" / "manifest.json"
    path.write_text(path.read_text()[:40])
    [listing] = store.list()
    assert listing.problem is not None and listing.problem.startswith("invalid manifest: not JSON")


def test_a_missing_data_file_is_skipped_with_its_name(store_url: str) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1, 2])
    (Path(store_url) / "step-000000000002" / ".metadata").unlink()
    loaded = store.load_newest(*adam())
    assert [(s.name, s.reason) for s in loaded.skipped] == [
        ("step-000000000002", "file .metadata is missing")
    ]


def test_a_checkpoint_dcp_cannot_read_is_skipped_like_a_corrupt_one(store_url: str) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1, 2])
    newest = Path(store_url) / "step-000000000002"
    (newest / "__0_0.distcp").write_bytes(b"not what DCP wrote")
    manifest = json.loads((newest / "manifest.json").read_text())
    manifest["files"]["__0_0.distcp"] = {
        "size": 18,
        "checksum": f"{zlib.crc32(b'not what DCP wrote'):08x}",
    }
    (newest / "manifest.json").write_text(json.dumps(manifest))
    loaded = store.load_newest(*adam())
    assert loaded.manifest is not None and loaded.manifest.step == 1
    [skipped] = loaded.skipped
    assert skipped.reason.startswith("DCP could not read it: ")


class Schedule:
    """Stands for a user's class pickled into extras."""

    def __init__(self, rate: float) -> None:
        self.rate = rate


def test_extras_that_no_longer_unpickle_make_the_checkpoint_unusable_with_the_reason(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(store_url)
    saved_steps(store, [1])
    state = trained(adam, steps=2, schedule=Schedule(0.5))
    store.save(state.committed)
    monkeypatch.delattr(sys.modules[__name__], "Schedule")
    loaded = store.load_newest(*adam())
    assert loaded.manifest is not None and loaded.manifest.step == 1
    [skipped] = loaded.skipped
    assert skipped.reason.startswith(
        "its step, data, extras or optimizer could not be decoded: AttributeError"
    )


def test_one_checkpoint_loads_by_name_or_by_url_and_a_damaged_one_raises(store_url: str) -> None:
    store = CheckpointStore(store_url)
    state = saved_steps(store, [1, 2])
    by_url = CheckpointStore("memory://unused").load(
        f"file://{store_url}/step-000000000002", *adam()
    )
    assert by_url.committed is not None and by_url.committed.step == 2
    assert_same(state.committed.model, by_url.committed.model, "model")
    assert store.load("step-000000000001", *adam()).manifest is not None

    (Path(store_url) / "step-000000000002" / "__0_0.distcp").write_bytes(b"short")
    with pytest.raises(CheckpointError, match=r"file __0_0\.distcp has 5 bytes, the manifest says"):
        store.load("step-000000000002", *adam())
    with pytest.raises(CheckpointError, match="nothing is stored at this URL"):
        store.load(f"{store_url}/step-000000000007", *adam())
    with pytest.raises(CheckpointError, match="this holds checkpoints, not one checkpoint"):
        store.load(store_url, *adam())
