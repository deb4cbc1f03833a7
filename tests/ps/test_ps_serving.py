"""Serving export: a full Parquet export plus the delta since a cut equals a full export
taken now, tombstones included; the delta holds only what changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
from tidemill.ps._serving import apply_serving, serving_path

BUDGET = TableConfig("user", 3, OptimizerConfig("adagrad", lr=0.5), init_scale=0.1, max_rows=40)
CONFIG = PSConfig((BUDGET,), virtual_shards=16)


def train(client: PSClient, steps: range, rng: np.random.Generator) -> None:
    for _ in steps:
        ids = np.unique(rng.integers(0, 120, size=24))
        client.pull("user", ids)
        client.push("user", ids, rng.normal(size=(len(ids), 3)).astype(np.float32))
        client.advance()


Rows = dict[int, npt.NDArray[np.float32]]


def applied(folder: Path, base: Rows) -> Rows:
    for shard in range(2):
        base = apply_serving(base, serving_path(folder, "user", shard))
    return base


def as_lists(rows: Rows) -> dict[int, list[float]]:
    return {key: value.tolist() for key, value in sorted(rows.items())}


def test_a_full_export_plus_the_delta_since_a_cut_equals_the_table_now(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    servers = [PSServer(CONFIG, index=i).start() for i in range(2)]
    try:
        with PSClient(CONFIG, [s.address for s in servers]) as client:
            train(client, range(10), rng)
            client.begin(10)
            client.export_serving(str(tmp_path / "full-10"))
            train(client, range(10, 20), rng)
            client.begin(20)
            client.export_serving(str(tmp_path / "delta-10-20"), since_version=10)
            client.export_serving(str(tmp_path / "full-20"))
    finally:
        for server in servers:
            server.stop()

    caught_up = applied(tmp_path / "delta-10-20", applied(tmp_path / "full-10", {}))
    assert as_lists(caught_up) == as_lists(applied(tmp_path / "full-20", {}))
    delta = [pq.read_table(serving_path(tmp_path / "delta-10-20", "user", k)) for k in range(2)]
    deleted = sum(t.column("deleted").to_pylist().count(True) for t in delta)
    assert deleted > 0, "the row budget evicted ids: the delta carries their tombstones"
    full = [pq.read_table(serving_path(tmp_path / "full-20", "user", k)) for k in range(2)]
    assert all(min(t.column("version").to_pylist()) > 10 for t in delta)
    held = sum(t.column("deleted").to_pylist().count(False) for t in full)
    assert 0 < held <= 2 * 40, "each shard keeps at most its row budget of 40"
    assert full[0].schema.metadata[b"tidemill.dim"] == b"3"
