"""Snapshots at a cut: a full one, then a delta; fresh servers that load the chain hold
exactly the tables of the cut (optimizer state included, so training goes on alike); a
damaged file is refused naming it."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, PSServerError, TableConfig

TABLE = TableConfig("item", 4, OptimizerConfig("adagrad", lr=0.3), init_scale=0.1, max_rows=60)
CONFIG = PSConfig((TABLE,), virtual_shards=32)


def train(client: PSClient, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = np.unique(rng.integers(0, 150, size=20))
        client.pull("item", ids)
        client.push("item", ids, rng.normal(size=(len(ids), 4)).astype(np.float32))
        client.advance()


def complete(folder: Path, shards: int = 2) -> None:
    deadline = time.monotonic() + 20
    while not all((folder / f"shard-{k}.json").exists() for k in range(shards)):
        assert time.monotonic() < deadline, f"no complete snapshot in {folder}"
        time.sleep(0.02)


def servers() -> list[PSServer]:
    return [PSServer(CONFIG, index=i, replicas=2).start() for i in range(2)]


def test_fresh_servers_loading_the_full_and_delta_snapshots_continue_exactly(
    tmp_path: Path,
) -> None:
    first = servers()
    try:
        with PSClient(CONFIG, [s.address for s in first]) as client:
            train(client, 5, seed=1)
            client.begin(5, snapshot_to=str(tmp_path / "cut-5"))
            train(client, 5, seed=2)
            client.begin(10, snapshot_to=str(tmp_path / "cut-10"), since=5)
            train(client, 4, seed=3)
            expected = client.pull("item", np.arange(150))
    finally:
        for server in first:
            server.stop()
    complete(tmp_path / "cut-5")
    complete(tmp_path / "cut-10")

    second = servers()
    try:
        with PSClient(CONFIG, [s.address for s in second], epoch=1) as client:
            client.restore([str(tmp_path / "cut-5"), str(tmp_path / "cut-10")], step=10)
            client.reconfigure(epoch=2, rank=0, world=1, step=10)
            train(client, 4, seed=3)
            assert np.array_equal(client.pull("item", np.arange(150)), expected)
    finally:
        for server in second:
            server.stop()


def test_a_damaged_snapshot_file_is_refused_naming_it(tmp_path: Path) -> None:
    first = servers()
    try:
        with PSClient(CONFIG, [s.address for s in first]) as client:
            train(client, 3, seed=4)
            client.begin(3, snapshot_to=str(tmp_path / "cut-3"))
    finally:
        for server in first:
            server.stop()
    complete(tmp_path / "cut-3")
    damaged = tmp_path / "cut-3" / "item.shard1.npz"
    damaged.write_bytes(damaged.read_bytes()[:-7] + b"garbage")
    second = servers()
    try:
        damage = r"item.shard1.npz: size or CRC-32 differs"
        with (
            PSClient(CONFIG, [s.address for s in second]) as client,
            pytest.raises(PSServerError, match=damage),
        ):
            client.restore([str(tmp_path / "cut-3")], step=3)
    finally:
        for server in second:
            server.stop()


def test_a_snapshot_taken_over_two_replicas_loads_over_three(tmp_path: Path) -> None:
    config = PSConfig((replace(TABLE, max_rows=None),), virtual_shards=32)
    first = [PSServer(config, index=i, replicas=2).start() for i in range(2)]
    try:
        with PSClient(config, [s.address for s in first]) as client:
            train(client, 6, seed=5)
            client.begin(6, snapshot_to=str(tmp_path / "cut-6"))
            expected = client.pull("item", np.arange(150))
    finally:
        for server in first:
            server.stop()
    complete(tmp_path / "cut-6")
    three = [PSServer(config, index=i, replicas=3).start() for i in range(3)]
    try:
        with PSClient(config, [s.address for s in three], epoch=1) as client:
            client.restore([str(tmp_path / "cut-6")], step=6)
            client.reconfigure(epoch=2, rank=0, world=1, step=6)
            assert np.array_equal(client.pull("item", np.arange(150)), expected)
            rows = [shard["tables"]["item"]["rows"] for shard in client.stats()]
            assert all(count > 0 for count in rows), f"every replica holds its part: {rows}"
    finally:
        for server in three:
            server.stop()
