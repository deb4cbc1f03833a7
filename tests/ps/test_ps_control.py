"""Refusals with clear errors, async staleness, undo and export through the wire, shutdown."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from tidemill.ps import (
    OptimizerConfig,
    PSBadIds,
    PSClient,
    PSConfig,
    PSConfigError,
    PSTimeout,
    PSUnavailable,
    PSUnknownTable,
    TableConfig,
)
from tidemill.ps._wire import ErrorCode, Header, Op, buffers_of, recv_header, recv_text, send_frames

from .conftest import SHARED_CONFIG, SHARED_TABLES, PSProcesses, StartPS

SMALL = PSConfig((TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0), init_scale=0.1),))


def test_bad_ids_are_refused_with_the_reason(shared_ps: PSProcesses) -> None:
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=["misc"]) as client:
        with pytest.raises(PSBadIds, match=r"misc: 2 negative ids \(smallest -7\)"):
            client.pull("misc", [3, -7, -1])
        with pytest.raises(PSBadIds, match="dtype float64; use an integer dtype"):
            client.pull("misc", np.array([1.5]))
        with pytest.raises(PSBadIds, match="above the int64 maximum"):
            client.pull("misc", np.array([2**64 - 1], dtype=np.uint64))
        with pytest.raises(
            PSConfigError, match=r"'nope' is not used by this client; tables: \['misc'\]"
        ):
            client.pull("nope", [1])
        assert client.pull("misc", [2**63 - 1]).shape == (1, 4)
    with socket.create_connection(shared_ps.addresses[0], timeout=10) as raw:
        ids = np.array([4, -5], dtype=np.int64)
        send_frames(raw, [(Header(Op.PULL, table=0, rows=2, payload_bytes=16), buffers_of(ids))])
        answer = recv_header(raw, 1 << 20)
        assert answer is not None and answer.flags == ErrorCode.BAD_IDS
        assert "1 negative ids (smallest -5)" in recv_text(raw, answer)


def test_a_table_the_servers_do_not_hold_is_refused_naming_the_tables_they_do(
    shared_ps: PSProcesses,
) -> None:
    wider = PSConfig((*SHARED_TABLES, TableConfig("ghost", 4)))
    with pytest.raises(
        PSUnknownTable, match=r"does not hold tables \['ghost'\]; tables: \['sgd_ref'"
    ):
        PSClient(wider, shared_ps.addresses, tables=["ghost", "misc"])


def test_a_dead_or_missing_shard_is_reported_as_unavailable_naming_it(start_ps: StartPS) -> None:
    replicas = start_ps(SMALL, 1)
    host, port = replicas.addresses[0]
    with PSClient(SMALL, replicas.addresses) as client:
        client.pull("t", [1])
        replicas.processes[0].kill()
        replicas.processes[0].wait()
        with pytest.raises(
            PSUnavailable, match=f"PS shard 0 at {host}:{port} is unavailable"
        ) as caught:
            client.pull("t", [1])
        assert (caught.value.shard, caught.value.address) == (0, f"{host}:{port}")
    with pytest.raises(PSUnavailable, match=f"PS shard 0 at {host}:{port} is unreachable"):
        PSClient(SMALL, replicas.addresses, connect_timeout_s=2)


def test_async_pulls_run_at_most_max_staleness_steps_ahead_of_the_slowest_rank(
    start_ps: StartPS,
) -> None:
    config = PSConfig(SMALL.tables, consistency="async", max_staleness=1, pull_timeout_s=1.0)
    replicas = start_ps(config, 1)
    with (
        PSClient(config, replicas.addresses, rank=0, world=2) as fast,
        PSClient(config, replicas.addresses, rank=1, world=2) as slow,
    ):
        for _ in range(2):  # steps 0 and 1 need nothing from rank 1 (bound 1)
            fast.pull("t", [1, 2])
            fast.push("t", [1], np.ones((1, 4), np.float32))
            fast.advance()
        with pytest.raises(PSTimeout, match=r"pull of step 2 .* not heard from ranks \[1\]"):
            fast.pull("t", [1])
        waiting = fast.pull_async({"t": [1]})
        slow.push("t", [2], np.ones((1, 4), np.float32))  # rank 1 finishes step 0
        assert waiting.result(timeout_s=10)["t"].rows.shape == (1, 4)
        stats = fast.stats()[0]["tables"]["t"]
    assert stats["staleness_max_steps"] == 1
    assert stats["pushed_rows"] == 3


def test_begin_rollback_export_load_and_shutdown_through_the_wire(
    start_ps: StartPS, tmp_path: Path
) -> None:
    replicas = start_ps(SMALL, 2)
    ids = np.arange(50)
    with PSClient(SMALL, replicas.addresses) as client:
        before = client.pull("t", ids)
        rows_before = sum(shard["tables"]["t"]["rows"] for shard in client.stats())
        client.begin(0)
        client.push("t", ids, np.ones((50, 4), np.float32))
        client.advance()
        assert np.allclose(client.pull("t", np.arange(80))[:50], before - 1.0)
        client.rollback()
        assert np.array_equal(client.pull("t", ids), before)
        assert sum(shard["tables"]["t"]["rows"] for shard in client.stats()) == rows_before
        written = client.export(str(tmp_path))
        assert sorted(Path(files["t"]).name for files in written) == [
            "t.shard0.npz",
            "t.shard1.npz",
        ]
        client.push("t", ids, np.ones((50, 4), np.float32))
        client.advance()
        client.load(str(tmp_path))
        assert np.array_equal(client.pull("t", ids), before)
        client.shutdown_servers()
    assert [process.wait(timeout=20) for process in replicas.processes] == [0, 0]


def test_a_sigtermed_replica_serves_its_connected_workers_then_exits(start_ps: StartPS) -> None:
    replicas = start_ps(SMALL, 1)
    process = replicas.processes[0]
    with PSClient(SMALL, replicas.addresses) as client:
        client.pull("t", [1, 2])
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None, "a worker is still connected: keep serving it"
        client.push("t", [1, 2], np.ones((2, 4), np.float32))
        client.advance()
        assert client.pull("t", [1]).shape == (1, 4)
    assert process.wait(timeout=10) == 0
