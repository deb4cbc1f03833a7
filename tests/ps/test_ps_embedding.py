"""The torch modules against torch's own EmbeddingBag, with and without prefetch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import tidemill.ps
from tidemill.ps import PSClient, PSConfigError, PSEmbedding, PSEmbeddingBag, PSEmbeddingCollection
from tidemill.ps._config import init_rows

from .conftest import SHARED_CONFIG, PSProcesses

IDS = 100


def padded_batches(seed: int, steps: int) -> list[torch.Tensor]:
    """Bags of up to 5 ids, -1 padding; some bags empty."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(0, IDS, size=(8, 5))
        ids[rng.random((8, 5)) < 0.3] = -1
        ids[0] = -1
        out.append(torch.from_numpy(ids))
    return out


def as_offsets(padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = padded != -1
    counts = keep.sum(dim=1)
    return padded[keep], torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_a_bag_trains_like_torch_embedding_bag_and_prefetch_changes_nothing(
    shared_ps: PSProcesses, mode: str
) -> None:
    table = "bag"
    config = SHARED_CONFIG.table(table)
    reference = nn.EmbeddingBag(IDS, config.dim, mode=mode)
    reference.weight.data = torch.from_numpy(init_rows(config, np.arange(IDS)))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    data = padded_batches(seed=3, steps=12)
    epoch = 0 if mode == "sum" else 1
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=[table], epoch=epoch) as client:
        if mode == "mean":  # the sum run trained the same table: start the reference from there
            reference.weight.data = torch.from_numpy(client.pull(table, np.arange(IDS)))
        bag = PSEmbeddingBag(client, table, mode=mode)
        for step, padded in enumerate(data):
            flat, offsets = as_offsets(padded)
            pooled = bag(padded) if step % 2 else bag(flat, offsets)
            expected = reference(flat, offsets)
            torch.testing.assert_close(pooled, expected, rtol=0, atol=1e-6)
            if step + 1 < len(data):
                bag.prefetch(data[step + 1])
            (pooled**2).sum().backward()
            client.advance()
            optimizer.zero_grad()
            (expected**2).sum().backward()
            optimizer.step()
        trained = client.pull(table, np.arange(IDS))
    np.testing.assert_allclose(trained, reference.weight.detach().numpy(), rtol=0, atol=1e-6)


def test_a_collection_pulls_several_features_and_tables_in_one_call(shared_ps: PSProcesses) -> None:
    features = {"seen": "collection", "clicked": "collection", "item": "misc"}
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=["collection", "misc"]) as client:
        collection = PSEmbeddingCollection(client, features, mode="mean")
        inputs = {
            "seen": torch.tensor([[1, 2, -1], [3, -1, -1]]),
            "clicked": (torch.tensor([2, 9, 9]), torch.tensor([0, 1])),
            "item": torch.tensor([[5, 6, 7], [8, -1, -1]]),
        }
        with torch.no_grad():
            out = collection(inputs)
        rows = client.pull("collection", [1, 2, 3, 9])
        torch.testing.assert_close(out["seen"][0], torch.from_numpy(rows[:2].mean(0)))
        torch.testing.assert_close(out["clicked"][1], torch.from_numpy(rows[3]))
        assert tuple(out["item"].shape) == (2, 4)
        with torch.no_grad():  # a rank with no records this step: no bags, not one
            empty = collection({name: torch.zeros((0, 3), dtype=torch.int64) for name in features})
        dims = {"seen": 3, "clicked": 3, "item": 4}
        assert {name: tuple(t.shape) for name, t in empty.items()} == {
            name: (0, dim) for name, dim in dims.items()
        }
        with pytest.raises(PSConfigError, match=r"features \['other'\] are not configured"):
            collection({"other": torch.tensor([[1]])})


def test_a_per_id_lookup_keeps_the_shape_and_a_prefetch_out_of_order_is_refused(
    shared_ps: PSProcesses,
) -> None:
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=["misc"]) as client:
        embedding = PSEmbedding(client, "misc")
        ids = torch.tensor([[[3, 3], [4, 0]]])
        with torch.no_grad():
            out = embedding(ids)
        assert tuple(out.shape) == (1, 2, 2, 4)
        torch.testing.assert_close(out[0, 0, 0], out[0, 0, 1])
        embedding.prefetch(ids)  # the next step's ids, sent before this step's forward
        with pytest.raises(
            PSConfigError, match="call prefetch\\(next_batch\\) after this step's forward"
        ):
            embedding(ids)


def test_the_public_names_are_pinned_and_the_server_never_imports_torch() -> None:
    assert sorted(tidemill.ps.__all__) == [
        "OptimizerConfig",
        "PSBadIds",
        "PSClient",
        "PSConfig",
        "PSConfigError",
        "PSCutMissing",
        "PSEmbedding",
        "PSEmbeddingBag",
        "PSEmbeddingCollection",
        "PSError",
        "PSProtocolError",
        "PSServer",
        "PSServerError",
        "PSTimeout",
        "PSUnavailable",
        "PSUnknownTable",
        "PullHandle",
        "PulledRows",
        "ShardMap",
        "TableConfig",
    ]
    assert all(getattr(tidemill.ps, name) is not None for name in tidemill.ps.__all__)
    probe = "import sys, tidemill.ps, tidemill.ps.__main__; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
