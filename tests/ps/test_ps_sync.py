"""Sync training through two real PS processes equals dense torch training, alone or in ranks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSEmbedding, PSTimeout, TableConfig
from tidemill.ps._config import init_rows

from .conftest import SHARED_CONFIG, PSProcesses, StartPS

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
    # read as a rank of the same epoch: a new epoch would roll the replicas back to their
    # last cut, which only the tests run before this one on the shared replicas had moved
    with PSClient(
        SHARED_CONFIG, shared_ps.addresses, rank=0, world=2, tables=[table], step=STEPS
    ) as reader:
        trained = reader.pull(table, np.arange(IDS))
    expected = dense_reference(table, lambda params: torch.optim.Adagrad(params, lr=0.2), data)
    np.testing.assert_allclose(trained, expected, rtol=0, atol=1e-6)


def test_a_prefetched_pull_rides_behind_this_ranks_pushes_and_sees_every_ranks_step(
    start_ps: StartPS,
) -> None:
    sgd = OptimizerConfig("sgd", lr=1.0)
    config = PSConfig(
        (TableConfig("a", 2, sgd, init_scale=0.0), TableConfig("b", 2, sgd, init_scale=0.0)),
        pull_timeout_s=20.0,
    )
    replicas = start_ps(config, 2)
    ids = np.arange(40)
    ones = np.ones((40, 2), np.float32)
    with (
        PSClient(config, replicas.addresses, rank=0, world=2) as first,
        PSClient(config, replicas.addresses, rank=1, world=2) as second,
    ):
        for client in (first, second):
            client.pull_many({"a": ids, "b": ids})  # step 0 creates the rows, all 0.0
        ahead = first.pull_async({"a": ids, "b": ids}, step=1)
        first.push("a", ids, ones)
        first.push("b", ids, ones)  # both tables pushed: the pull of step 1 goes out
        first.advance()
        second.push("a", ids, 2 * ones)
        second.advance()  # an empty push of "b" for rank 1
        rows = ahead.result(timeout_s=30)
        assert np.array_equal(rows["a"].gather(), np.full((40, 2), -3.0, np.float32))
        assert np.array_equal(rows["b"].gather(), np.full((40, 2), -1.0, np.float32))

        first.push("a", ids, ones)
        first.push("b", ids, ones)
        late = first.pull_async({"b": ids}, step=2)  # asked after the pushes: advance sends it
        assert first.stats()[0]["tables"]["b"]["applied_step"] == 0
        first.advance()
        second.push("b", ids, ones)
        second.advance()
        assert np.array_equal(late.result(timeout_s=30)["b"].gather(), np.full((40, 2), -3.0))
        assert np.array_equal(first.pull("a", ids), second.pull("a", ids))
        assert np.array_equal(first.pull("a", ids), np.full((40, 2), -4.0, np.float32))


def test_a_prefetch_held_when_the_membership_changes_is_sent_and_ends(start_ps: StartPS) -> None:
    sgd = OptimizerConfig("sgd", lr=1.0)
    config = PSConfig((TableConfig("a", 2, sgd, init_scale=0.0),), pull_timeout_s=1.0)
    replicas = start_ps(config, 1)
    with PSClient(config, replicas.addresses) as client:
        client.pull("a", [1, 2])
        ahead = client.pull_async({"a": [1, 2]}, step=1)
        client.reconfigure(epoch=0, rank=0, world=1, step=5)  # step 0's push never comes
        deadline = time.monotonic() + 20
        while not ahead.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ahead.done(), "a held pull must go out when the membership changes"
        with pytest.raises(PSTimeout, match="pull of step 1 waited 1s for the pushes of step 0"):
            ahead.result(timeout_s=30)
        assert client.pull("a", [1, 2], step=0).shape == (2, 2)
