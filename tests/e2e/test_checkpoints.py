"""Durable checkpoints through the control plane: whole-job loss, a corrupt newest
checkpoint, preemption, suspension, and a checkpoint folder that fills up.

The workers are ledgers (tests/e2e/ledger_train.py): the model counts how often each
record id trained, so "every record exactly once" and "the final model equals an
uninterrupted run's" are the same check: every count is 1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.e2e.harness import script_job, wait_for
from tests.e2e.ledger import (
    CLUSTER,
    PARTITIONS,
    STREAM_PER_PARTITION,
    TABLE_ROWS,
    SlowProducer,
    committed_offsets,
    job,
    ledger_counts,
    make_table,
    stage_records,
)
from tidemill.api.status import JobPhase
from tidemill.checkpoint import CheckpointStore
from tidemill.client import Client
from tidemill.data.testing import LocalBroker

pytestmark = pytest.mark.e2e


def backfill_job(
    catalog: dict[str, str], result: Path, name: str, checkpoint: dict[str, Any]
) -> dict[str, Any]:
    """The ledger job with only the Iceberg stage, named ``name``."""
    spec = job(catalog, "127.0.0.1:9", "unused", result)
    spec["metadata"]["name"] = name
    spec["spec"]["data"]["stages"] = spec["spec"]["data"]["stages"][:1]
    spec["spec"]["roles"]["worker"]["env"]["LEDGER_SIZE"] = str(TABLE_ROWS)
    spec["spec"]["checkpoint"] = checkpoint
    return spec


def two_slow_workers(spec: dict[str, Any], **resources: Any) -> dict[str, Any]:
    """``spec`` with two fixed workers (``resources`` if given) taking 0.2 s a step, so
    that a stop lands mid-stage."""
    worker = spec["spec"]["roles"]["worker"]
    worker["replicas"] = 2
    del worker["minReplicas"], worker["maxReplicas"]
    worker["env"]["LEDGER_STEP_S"] = "0.2"
    if resources:
        worker["resources"] = resources
    return spec


def steps_left_at_sigterm(logs: str) -> list[int]:
    """The steps at which workers left the job for a SIGTERM, as their logs say."""
    return [int(step) for step in re.findall(r"left the job at step (\d+) \(SIGTERM\)", logs)]


def events_of(client: Client, name: str, reason: str) -> list[str]:
    return [e.message for e in client.job_events(name) if e.reason == reason]


def restored_step(client: Client, name: str) -> int:
    """The step of the job's (last) CheckpointRestored event."""
    messages = events_of(client, name, "CheckpointRestored")
    assert messages, [(e.reason, e.message) for e in client.job_events(name)]
    found = re.search(r"restored step (\d+)", messages[-1])
    assert found, messages[-1]
    return int(found[1])


def test_killing_every_worker_and_the_master_mid_stream_resumes_exactly_once(
    start_server: Any, broker: LocalBroker, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    catalog = make_table(tmp_path)
    _, client = start_server(CLUSTER)
    result = tmp_path / "ledger.json"
    spec = job(catalog, broker.bootstrap, topic, result)
    spec["spec"]["checkpoint"] = {"everySteps": 8}
    spec["spec"]["roles"]["worker"]["env"]["LEDGER_BALLAST_MB"] = "20"  # the writer process
    client.submit(spec)
    client.scale("clicks", "worker", 2)
    wait_for(lambda: stage_records(client, "clicks", "backfill") > 0, 120, "the backfill")
    producer = SlowProducer(broker.bootstrap, topic)
    producer.start()

    def mid_stream_checkpoint() -> int | None:
        listing = client.checkpoints("clicks")
        usable = [c for c in listing.items if c.problem is None and c.data]
        streaming = [c for c in usable if c.data and c.data["tidemill.data"]["stage"] == 1]
        return streaming[0].step if streaming else None

    wait_for(lambda: stage_records(client, "clicks", "online") > 200, 120, "the stream stage")
    saved = wait_for(mid_stream_checkpoint, 60, "a checkpoint taken while streaming")
    replicas = client.get("clicks").replicas
    pids = [r.pid for r in replicas if r.pid and r.role in ("worker", "master")]
    assert {r.role for r in replicas if r.pid} == {"worker", "master"}
    writers: Any = wait_for(writer_processes, 60, "rank 0's checkpoint writer process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not set(writer_processes()) & set(writers),
        10,
        "the killed workers' writer processes to end with them",
    )

    final = client.wait("clicks", timeout_s=300)
    producer.join(30)
    assert producer.error is None, producer.error
    assert final.phase == "Succeeded", final.message
    ledger_counts(result)
    assert isinstance(saved, int)
    assert restored_step(client, "clicks") >= saved
    assert committed_offsets(broker.bootstrap, topic) == [STREAM_PER_PARTITION] * PARTITIONS
    assert wait_for(lambda: not writer_processes(), 10, "the writer processes to end")


def writer_processes() -> list[int]:
    """Checkpoint writer processes running on this machine (a killed worker's must end)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if b"tidemill.checkpoint._writer_child" in status.read_bytes():
                found.append(int(status.parent.name))
    return found


def test_a_corrupt_newest_checkpoint_is_skipped_and_resume_from_continues_exactly_once(
    start_server: Any, tmp_path: Path
) -> None:
    catalog = make_table(tmp_path)
    server, client = start_server(CLUSTER)
    first = tmp_path / "first.json"
    client.submit(backfill_job(catalog, first, "first", {"everySteps": 4, "keep": 3}))
    assert client.wait("first", timeout_s=180).phase == "Succeeded"
    listing = client.checkpoints("first")
    assert listing.url is not None and len(listing.items) == 3
    assert all(c.problem is None for c in listing.items)
    newest, previous = listing.items[0], listing.items[1]
    assert newest.step is not None and previous.step is not None
    assert previous.step < newest.step
    folder = Path(newest.url)
    data_file = max(
        (p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"),
        key=lambda p: p.stat().st_size,
    )
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))

    second = tmp_path / "second.json"
    job_file = tmp_path / "second.yaml"
    job_file.write_text(yaml.safe_dump(backfill_job(catalog, second, "second", {})))
    submitted = subprocess.run(
        [sys.executable, "-m", "tidemill", "submit", str(job_file), "--resume-from", "first"],
        env={**os.environ, "TIDEMILL_SERVER": server.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    assert client.wait("second", timeout_s=180).phase == "Succeeded"

    ledger_counts(second)
    assert restored_step(client, "second") == previous.step
    skipped = events_of(client, "second", "CheckpointSkipped")
    assert any(newest.name in message for message in skipped), skipped


def test_a_preempted_job_resumes_from_the_step_it_reached(
    start_server: Any, tmp_path: Path
) -> None:
    catalog = make_table(tmp_path)
    _, client = start_server("nodes:\n  - {name: n, cpu: 2, memory: 8Gi}\n")
    result = tmp_path / "low.json"
    low = backfill_job(catalog, result, "low", {"everySeconds": 3600})
    client.submit(two_slow_workers(low, cpu=1, memory="512Mi"))
    wait_for(lambda: stage_records(client, "low", "backfill") > 600, 120, "low to train")

    client.submit(script_job("urgent", "import time; time.sleep(2)", cpu=2, priority=100))
    wait_for(
        lambda: any(c.type == "Preempted" and c.status for c in client.get("low").conditions),
        60,
        "low to be preempted",
    )
    assert client.wait("urgent", timeout_s=120).phase == "Succeeded"
    assert client.wait("low", timeout_s=240).phase == "Succeeded"

    ledger_counts(result)
    logs = "\n".join(client.logs("low", role="worker", index=0))
    reached = steps_left_at_sigterm(logs)
    assert reached, "\n".join(
        [
            logs[-3000:],
            *(f"{e.reason}: {e.message}" for e in client.job_events("low")),
            str(client.checkpoints("low")),
        ]
    )
    assert restored_step(client, "low") == reached[0] > 0


def test_a_suspended_job_resumes_from_the_step_it_reached_and_trains_every_record_once(
    start_server: Any, tmp_path: Path
) -> None:
    catalog = make_table(tmp_path)
    _, client = start_server(CLUSTER)
    result = tmp_path / "nap.json"
    client.submit(two_slow_workers(backfill_job(catalog, result, "nap", {"everySeconds": 3600})))
    wait_for(lambda: stage_records(client, "nap", "backfill") > 600, 120, "nap to train")

    client.suspend("nap")
    view = client.wait("nap", timeout_s=60, until={JobPhase.SUSPENDED})
    assert view.replicas == []
    client.resume("nap")
    assert client.wait("nap", timeout_s=240).phase == "Succeeded"

    ledger_counts(result)
    logs = "\n".join(client.logs("nap", role="worker"))  # a worker may not have joined yet
    reached = set(steps_left_at_sigterm(logs))
    assert len(reached) == 1, logs[-3000:]
    step = reached.pop()
    assert restored_step(client, "nap") == step > 0
    finished = [int(s) for s in re.findall(r"finished at step (\d+)", logs)]
    assert finished and min(finished) > step, "it trained on after the resume"
    reasons = [e.reason for e in client.job_events("nap")]
    order = [reasons.index(r) for r in ("Suspended", "Resumed", "CheckpointRestored")]
    assert order == sorted(order), reasons


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that fills up (ENOSPC)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_checkpoint_folder_warns_while_training_goes_on(
    start_server: Any, tmp_path: Path, small_disk: Path
) -> None:
    catalog = make_table(tmp_path)
    _, client = start_server(CLUSTER)
    result = tmp_path / "ledger.json"
    spec = backfill_job(catalog, result, "full", {"dir": str(small_disk), "everySteps": 4})
    spec["spec"]["roles"]["worker"]["env"]["LEDGER_STEP_S"] = "0.1"
    client.submit(spec)
    wait_for(lambda: events_of(client, "full", "CheckpointSaved"), 120, "a first checkpoint")
    filler = small_disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    failed = wait_for(
        lambda: events_of(client, "full", "CheckpointFailed"), 120, "a failed checkpoint"
    )
    assert "No space left" in str(failed), failed
    final = client.wait("full", timeout_s=180)
    assert final.phase == "Succeeded", final.message

    ledger_counts(result)
    listing = client.checkpoints("full")
    assert listing.items, "the checkpoints saved before the disk filled are gone"
    assert all(c.problem is None for c in listing.items), listing.items
    assert listing.url is not None
    ledger = torch.nn.Module()
    ledger.counts = torch.nn.Parameter(torch.zeros(TABLE_ROWS, dtype=torch.float64))
    loaded = CheckpointStore(listing.url).load_newest(ledger, None)
    assert loaded.committed is not None and loaded.committed.step == listing.items[0].step
