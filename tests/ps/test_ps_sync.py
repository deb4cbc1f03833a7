"""Sync training through two real PS processes equals dense torch training, alone or in ranks."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from tidemill.ps import PSClient, PSEmbedding
from tidemill.ps._config import init_rows

from .conftest import SHARED_CONFIG, PSProcesses

Optimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
IDS = 400
STEPS = 25
BATCH = 16


def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of 16 samples x 3 ids whose id range grows: repeated ids and new ones."""
    rng = np.random.default_rng(seed)
    return [
        (
            torch.from_numpy(rng.integers(0, 60 + 12 * step, size=(BATCH, 3))),
            torch.from_numpy(rng.normal(size=BATCH).astype(np.float32)),
        )
        for step in range(STEPS)
    ]


def loss_of(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((rows.sum(dim=(1, 2)) - target) ** 2).mean()


def dense_reference(
    table: str, optimizer: Optimizer, data: list[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    config = SHARED_CONFIG.table(table)
    reference = nn.Embedding(IDS, config.dim)
    reference.weight.data = torch.from_numpy(init_rows(config, np.arange(IDS)))
    step = optimizer([reference.weight])
    for ids, target in data:
        step.zero_grad()
        loss_of(reference(ids), target).backward()
        step.step()
    return reference.weight.detach().numpy()


@pytest.mark.parametrize(
    ("table", "optimizer"),
    [
        ("sgd_ref", lambda params: torch.optim.SGD(params, lr=0.5)),
        ("adagrad_ref", lambda params: torch.optim.Adagrad(params, lr=0.3)),
    ],
)
def test_sync_training_on_two_shards_matches_a_dense_torch_embedding(
    shared_ps: PSProcesses, table: str, optimizer: Optimizer
) -> None:
    data = batches(seed=1)
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=[table]) as client:
        embedding = PSEmbedding(client, table)
        for ids, target in data:
            loss_of(embedding(ids), target).backward()
            client.advance()
        trained = client.pull(table, np.arange(IDS))
        stats = client.stats()
    expected = dense_reference(table, optimizer, data)
    np.testing.assert_allclose(trained, expected, rtol=0, atol=1e-6)
    assert not np.allclose(trained, init_rows(SHARED_CONFIG.table(table), np.arange(IDS)))
    shards_rows = [shard["tables"][table]["rows"] for shard in stats]
    assert sum(shards_rows) == IDS and min(shards_rows) > 0
    assert all(shard["tables"][table]["staleness_max_steps"] == 0 for shard in stats)


def test_two_ranks_in_sync_mode_equal_one_process_on_the_combined_batch(
    shared_ps: PSProcesses,
) -> None:
    table = "two_ranks"
    data = batches(seed=2)
    failures: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            with PSClient(
                SHARED_CONFIG, shared_ps.addresses, rank=rank, world=2, tables=[table]
            ) as client:
                embedding = PSEmbedding(client, table)  # grad_scale 1/2, as DDP averages
                half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
                for ids, target in data:
                    loss_of(embedding(ids[half]), target[half]).backward()
                    client.advance()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=rank_main, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    with PSClient(
        SHARED_CONFIG, shared_ps.addresses, tables=[table], epoch=1, step=STEPS
    ) as reader:
        trained = reader.pull(table, np.arange(IDS))
    expected = dense_reference(table, lambda params: torch.optim.Adagrad(params, lr=0.2), data)
    np.testing.assert_allclose(trained, expected, rtol=0, atol=1e-6)
