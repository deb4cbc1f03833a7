"""The loader in an elastic group without the control plane: a real job master and two
real workers. Records are exchanged between the workers every step, and the master is
killed and relaunched mid-stage; the ledger model still counts every record once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.master.processes import MasterProcess, wait_until, worker_env

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parents[1] / "e2e" / "ledger_train.py"
ROWS = 1200


def write_files(folder: Path) -> Path:
    """Two files of disjoint ids, so a batch holding both came through the exchange."""
    data = folder / "data"
    data.mkdir()
    for name, low in (("a", 0), ("b", ROWS)):
        ids = list(range(low, low + ROWS))
        pq.write_table(pa.table({"id": ids}), data / f"{name}.parquet", row_group_size=200)
    return data


def trained(trace: Path) -> list[dict[str, list[int]]]:
    lines = [line for f in trace.glob("*.jsonl") for line in f.read_text().splitlines()]
    return [json.loads(line) for line in lines]


def test_exchange_and_a_master_restart_keep_every_record_exactly_once(tmp_path: Path) -> None:
    spec = {
        "stages": [{"name": "all", "sources": [{"parquet": {"path": str(write_files(tmp_path))}}]}],
        "rowsPerShard": 400,
        "shuffle": {"seed": 3, "bufferRows": 64, "exchange": True},
    }
    plan = json.dumps(spec)
    master = MasterProcess(
        tmp_path, {"TIDEMILL_ELASTIC_MIN": "2", "TIDEMILL_ELASTIC_MAX": "2", "TIDEMILL_DATA": plan}
    )
    master.start()
    trace = tmp_path / "trace"
    trace.mkdir()
    result = tmp_path / "ledger.json"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(2):
            env = worker_env(
                master.address,
                index,
                TIDEMILL_DATA=plan,
                LEDGER_SIZE=str(2 * ROWS),
                LEDGER_RESULT=str(result),
                LEDGER_BATCH="10",
                LEDGER_STEP_S="0.03",
                LEDGER_TRACE=str(trace),
            )
            with (tmp_path / f"worker-{index}.log").open("wb") as log:
                workers.append(subprocess.Popen([sys.executable, str(SCRIPT)], env=env, stderr=log))
        wait_until(lambda: len(trained(trace)) > 20, 60, "the workers to train")
        master.kill()
        time.sleep(0.5)
        master.start()
        for worker in workers:
            assert worker.wait(timeout=120) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        master.kill()

    counts = json.loads(result.read_text())["counts"]
    assert [i for i, c in enumerate(counts) if c != 1] == []
    batches = [step["ids"] for step in trained(trace)]
    mixed = [ids for ids in batches if min(ids) < ROWS <= max(ids)]
    assert mixed, "no batch held records of both files: the exchange did not happen"
    assert sorted(i for ids in batches for i in ids) == list(range(2 * ROWS))
