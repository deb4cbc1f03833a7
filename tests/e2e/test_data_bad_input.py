"""Bad data: a missing table, a corrupt Parquet file, a stream whose schema changes.

Each job fails (restartPolicy Never) with a Warning event whose reason says what went
wrong and whose message names the source and, where known, the shard; a job that
reads nothing keeps running in the same process and the server keeps serving.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from pyiceberg.catalog import load_catalog

from tests.e2e.harness import running_pids, script_job, wait_for
from tidemill.data.testing import LocalBroker

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parent / "ledger_train.py"
CLUSTER = "nodes:\n  - {name: n, cpu: 8, memory: 16Gi}\n"


def data_job(name: str, stage: dict[str, Any], folder: Path) -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, str(SCRIPT)],
                    "env": {
                        "LEDGER_SIZE": "100000",
                        "LEDGER_RESULT": str(folder / f"{name}.json"),
                        "LEDGER_STEP_S": "0",
                        "LEDGER_BATCH": "10",  # the stream's schema settles on the first batch
                    },
                    "restartPolicy": "Never",
                }
            },
            "data": {"stages": [{"name": "only", "sources": [stage]}]},
        },
    }


def corrupt_folder(folder: Path) -> Path:
    """A good file and one whose second row group's pages are overwritten with junk."""
    folder.mkdir()
    pq.write_table(pa.table({"id": list(range(100))}), folder / "a.parquet")
    bad = folder / "b.parquet"
    pq.write_table(pa.table({"id": list(range(100, 400))}), bad, row_group_size=100)
    second = pq.ParquetFile(bad).metadata.row_group(1).column(0)
    start = second.dictionary_page_offset if second.has_dictionary_page else None
    start = start or second.data_page_offset
    raw = bytearray(bad.read_bytes())
    raw[start : start + second.total_compressed_size] = b"\xff" * second.total_compressed_size
    bad.write_bytes(bytes(raw))
    return folder


def changing_topic(broker: LocalBroker) -> str:
    topic = f"changes-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(50):
        producer.produce(topic, json.dumps({"id": i}).encode())
    producer.produce(topic, json.dumps({"id": 50, "country": "NL"}).encode())
    assert producer.flush(10) == 0
    return topic


def warnings_of(client: Any, name: str) -> dict[str, str]:
    return {e.reason: e.message for e in client.job_events(name) if e.type == "Warning"}


def test_bad_data_fails_its_job_with_an_event_naming_the_source(
    start_server: Any, tmp_path: Path
) -> None:
    _, client = start_server(CLUSTER)
    client.submit(script_job("bystander", "import time; time.sleep(600)"))
    [pid] = wait_for(lambda: running_pids(client, "bystander"), what="bystander running")
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    catalog = {"uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    load_catalog("default", **catalog).create_namespace("ads")

    with LocalBroker() as broker:
        topic = changing_topic(broker)
        kafka = {"bootstrap": broker.bootstrap, "topic": topic, "start": "earliest"}
        jobs = {
            "no-table": {"iceberg": {"catalog": catalog, "table": "ads.nope"}},
            "corrupt": {"parquet": {"path": str(corrupt_folder(tmp_path / "files"))}},
            "changes": {"kafka": {**kafka, "end": "offsets", "endOffsets": {topic: {0: 51}}}},
        }
        for name, source in jobs.items():
            client.submit(data_job(name, source, tmp_path))
        finals = {name: client.wait(name, timeout_s=120) for name in jobs}

    assert {name: final.phase for name, final in finals.items()} == dict.fromkeys(jobs, "Failed")
    missing = warnings_of(client, "no-table")
    assert "ads.nope" in missing["DataSourceNotFound"], missing
    corrupt = warnings_of(client, "corrupt")
    assert "b.parquet#rg" in corrupt["CorruptData"], corrupt
    assert "cannot decode row group 1" in corrupt["CorruptData"]
    changed = warnings_of(client, "changes")
    assert f"{topic}/0 offset 50" in changed["SchemaChanged"], changed
    assert "country" in changed["SchemaChanged"]
    after = client.get("bystander")
    assert after.phase == "Running" and after.replicas[0].pid == pid
    assert client.health()
