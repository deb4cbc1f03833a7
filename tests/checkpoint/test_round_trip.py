"""A saved state comes back bit for bit, locally and on an fsspec filesystem."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoint.conftest import Build, adam, assert_same, mlp, sgd_momentum, train, trained
from tidemill.checkpoint import CheckpointStore
from tidemill.runtime import ElasticState

pytestmark = pytest.mark.usefixtures("reading")


@pytest.mark.parametrize("build", [sgd_momentum, adam], ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("where", ["store_url", "memory_url"])
def test_a_trained_state_comes_back_bit_for_bit_and_trains_on_identically(
    build: Build, where: str, request: pytest.FixtureRequest
) -> None:
    original = trained(build, steps=3, epoch=2, seen={7: "int keys survive"})
    store = CheckpointStore(request.getfixturevalue(where))
    manifest = store.save(original.committed, job="round-trip")

    torch.manual_seed(99)
    model, optimizer = build()
    restored = ElasticState(model, optimizer)
    loaded = store.load_newest(model, optimizer)
    assert loaded.committed is not None and loaded.manifest == manifest
    assert loaded.skipped == []
    restored.adopt(loaded.committed)

    assert (restored.step, restored.world_size) == (3, 1)
    assert_same(original.extras, restored.extras, "extras")
    assert_same(original.data, restored.data, "data")
    assert_same(original.model.state_dict(), restored.model.state_dict(), "model")
    assert_same(original.optimizer.state_dict(), optimizer.state_dict(), "optimizer")
    train(original, 2, seed=5)
    train(restored, 2, seed=5)
    assert_same(original.model.state_dict(), restored.model.state_dict(), "model after 2 steps")


def test_the_manifest_describes_the_checkpoint(store_url: str) -> None:
    state = trained(adam, steps=2, note="small")
    manifest = CheckpointStore(store_url).save(state.committed, job="described")
    assert (manifest.step, manifest.world_size, manifest.job) == (2, 1, "described")
    assert manifest.checksum_algorithm == "crc32"
    assert set(manifest.files) == {".metadata", "__0_0.distcp"}
    assert manifest.size_bytes == sum(info.size for info in manifest.files.values())
    assert manifest.model["0.weight"] == ((8, 4), "float32")
    assert manifest.optimizer_groups == (4,)
    assert (manifest.data, manifest.extras) == ({"offset": 32}, {"note": "small"})


def test_large_or_non_json_extras_stay_out_of_the_manifest_but_in_the_checkpoint(
    store_url: str,
) -> None:
    state = trained(adam, steps=1, blob="x" * 70_000, when=object.__name__)
    state.extras["tensor"] = torch.arange(3)
    state.commit()
    store = CheckpointStore(store_url)
    assert store.save(state.committed).extras is None
    model, optimizer = adam()
    committed = store.load_newest(model, optimizer).committed
    assert committed is not None and committed.extras["blob"] == "x" * 70_000
    assert torch.equal(committed.extras["tensor"], torch.arange(3))


def test_saving_a_step_that_is_already_saved_returns_its_manifest_unchanged(
    store_url: str,
) -> None:
    state = trained(sgd_momentum, steps=1)
    store = CheckpointStore(store_url)
    first = store.save(state.committed)
    assert store.save(state.committed, job="other") == first


def test_without_an_optimizer_on_either_side_the_model_still_round_trips(store_url: str) -> None:
    with_optimizer = trained(adam, steps=2)
    store = CheckpointStore(store_url)
    store.save(with_optimizer.committed)
    bare = mlp()
    loaded = store.load_newest(bare, None)
    assert loaded.committed is not None and loaded.committed.optimizer is None
    ElasticState(bare).adopt(loaded.committed)
    assert_same(with_optimizer.model.state_dict(), bare.state_dict(), "model")

    model_only = ElasticState(mlp(), step=4)
    model_only.commit()
    store.save(model_only.committed)
    model, optimizer = adam()
    loaded = store.load_newest(model, optimizer)
    assert loaded.committed is not None and loaded.committed.optimizer is None
    ElasticState(model, optimizer).adopt(loaded.committed)
    assert optimizer.state_dict()["state"] == {}


def test_loading_does_not_touch_the_model(store_url: str) -> None:
    store = CheckpointStore(store_url)
    store.save(trained(adam).committed)
    model, optimizer = adam()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    store.load_newest(model, optimizer)
    assert_same(before, dict(model.state_dict()), "model")
    assert optimizer.state_dict()["state"] == {}


def test_an_empty_or_missing_location_has_nothing_to_load(store_url: str) -> None:
    store = CheckpointStore(store_url)
    assert store.list() == []
    model, optimizer = adam()
    loaded = store.load_newest(model, optimizer)
    assert (loaded.committed, loaded.manifest, loaded.skipped) == (None, None, [])


def test_a_rollback_after_a_restore_returns_to_the_checkpoint_bit_for_bit(store_url: str) -> None:
    original = trained(adam, steps=3)
    store = CheckpointStore(store_url)
    store.save(original.committed)
    model, optimizer = adam()
    restored = ElasticState(model, optimizer)
    restored.adopt(store.load_newest(model, optimizer).committed)

    for _ in range(2):  # steps that are never committed: they change the live state in place
        optimizer.zero_grad()
        model(torch.ones(16, 4)).pow(2).mean().backward()
        optimizer.step()
    assert not torch.equal(model[0].weight, original.model[0].weight)
    restored.restore()
    assert_same(original.model.state_dict(), model.state_dict(), "model")
    assert_same(original.optimizer.state_dict(), optimizer.state_dict(), "optimizer")


def test_restored_tensors_are_aligned_as_torch_load_aligns_them(store_url: str) -> None:
    """Kernels may assume it; DCP stores entries one after another at any byte offset."""
    store = CheckpointStore(store_url)
    store.save(trained(adam, steps=2).committed)
    loaded = store.load_newest(*adam())
    assert loaded.committed is not None and loaded.committed.optimizer is not None
    tensors = list(loaded.committed.model.values()) + [
        value for state in loaded.committed.optimizer["state"].values() for value in state.values()
    ]
    assert len(tensors) == 16
    assert [tensor.data_ptr() % 64 for tensor in tensors] == [0] * 16


def test_a_large_restored_state_is_the_checkpoint_files_mapped_not_a_copy(store_url: str) -> None:
    """Files of 4 MiB and more are mapped: the committed copy costs no fresh memory."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1024, 1024)
    state = ElasticState(model, torch.optim.Adam(model.parameters()))
    assert state.optimizer is not None
    model(torch.randn(8, 1024)).square().mean().backward()
    state.optimizer.step()
    state.step = 1
    state.commit()
    store = CheckpointStore(store_url)
    store.save(state.committed)
    loaded = store.load_newest(model, state.optimizer)
    assert loaded.committed is not None and loaded.committed.optimizer is not None
    moments = loaded.committed.optimizer["state"].values()
    tensors = [*loaded.committed.model.values()] + [
        value for values in moments for value in values.values()
    ]
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) == 6 and fields[5].endswith(".distcp"):
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                regions.append((start, end))
    large = [tensor for tensor in tensors if tensor.numel() >= 1024]
    assert len(large) == 6
    for tensor in large:
        assert any(start <= tensor.data_ptr() < end for start, end in regions)
    assert_same(state.committed.model, loaded.committed.model, "model")


def test_where_files_cannot_be_mapped_they_are_read(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems (FUSE ones among them) refuse mmap with ENODEV; no real one that
    does runs here, so the refusal is injected."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    state = trained(adam, steps=2)
    store = CheckpointStore(store_url)
    store.save(state.committed)
    monkeypatch.setattr("tidemill.checkpoint._files.mmap.mmap", refuse)
    loaded = store.load_newest(*adam())
    assert loaded.committed is not None and loaded.skipped == []
    assert_same(state.committed.model, loaded.committed.model, "model")
