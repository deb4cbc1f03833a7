"""The writer thread: never blocks a submit, writes the latest state, survives its callbacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.checkpoint.conftest import adam, assert_same, train, trained
from tidemill.checkpoint import CheckpointStore, CheckpointWriter, Manifest
from tidemill.checkpoint._writer import WRITER_NICE
from tidemill.runtime import ElasticState

SUBMIT_LIMIT_S = 0.05
"""A submit only swaps a reference under a lock; anything near this means it waited."""


class Recorder:
    """Callbacks that record what they saw; ``gate`` holds the thread inside ``on_saved``."""

    def __init__(self) -> None:
        self.saved: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def on_saved(self, manifest: Manifest) -> None:
        self.saved.append(manifest.step)
        self.entered.set()
        self.gate.wait(30)

    def on_failed(self, step: int, error: str) -> None:
        self.failed.append((step, error))


def writer_for(url: str, recorder: Recorder, keep: int = 10) -> CheckpointWriter:
    """A writer that saves every state (small ones included) through its process, if any."""
    return CheckpointWriter(
        CheckpointStore(url, keep=keep),
        "job-a",
        recorder.on_saved,
        recorder.on_failed,
        process_min_bytes=0,
    )


def save_two_steps(writer: CheckpointWriter) -> None:
    """Submit step 1, wait for it, submit step 2, close the writer."""
    state = trained(adam, steps=1)
    writer.submit(state.committed)
    assert writer.flush(timeout_s=60)
    train(state, 1)
    writer.submit(state.committed)
    assert writer.close(timeout_s=60)


def test_while_one_write_runs_newer_submits_replace_each_other_and_only_the_last_is_written(
    store_url: str,
) -> None:
    recorder = Recorder()
    recorder.gate.clear()
    writer = writer_for(store_url, recorder)
    state = trained(adam, steps=1)
    writer.submit(state.committed)
    assert recorder.entered.wait(30), "the first write did not finish"
    for _ in range(4):
        train(state, 1)
        started = time.perf_counter()
        writer.submit(state.committed)
        assert time.perf_counter() - started < SUBMIT_LIMIT_S
    assert writer.busy
    assert not writer.flush(timeout_s=0.2)
    recorder.gate.set()
    assert writer.close(timeout_s=30)
    assert not writer.busy
    assert recorder.saved == [1, 5] and recorder.failed == []
    store = CheckpointStore(store_url)
    assert [listing.step for listing in store.list()] == [5, 1]
    [newest, _] = store.list()
    assert newest.manifest is not None and newest.manifest.job == "job-a"


def test_a_failed_write_reports_the_step_and_the_error_and_the_thread_goes_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("in the way")
    recorder = Recorder()
    broken = writer_for(str(tmp_path / "file" / "ckpt"), recorder)
    broken.submit(trained(adam, steps=3).committed)
    assert broken.flush(timeout_s=30)
    [(step, error)] = recorder.failed
    assert step == 3 and "saving step 3 failed: [Errno 20] Not a directory" in error
    broken.submit(trained(adam, steps=4).committed)
    assert broken.close(timeout_s=30)
    assert [step for step, _ in recorder.failed] == [3, 4]


def test_a_callback_that_raises_does_not_stop_the_writer(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    saved: list[int] = []

    def explode(manifest: Manifest) -> None:
        saved.append(manifest.step)
        raise RuntimeError("callback bug")

    save_two_steps(CheckpointWriter(CheckpointStore(store_url), None, explode, lambda s, e: None))
    assert saved == [1, 2]
    assert "callback bug" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux only")
def test_the_writer_thread_and_process_run_at_a_lower_priority_than_training(
    store_url: str,
) -> None:
    seen: list[tuple[int, int]] = []
    writer: CheckpointWriter

    def priority(manifest: Manifest) -> None:
        assert writer.process is not None and writer.process.pid is not None
        thread = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen.append((thread, os.getpriority(os.PRIO_PROCESS, writer.process.pid)))

    writer = CheckpointWriter(
        CheckpointStore(store_url), None, priority, lambda s, e: None, process_min_bytes=0
    )
    writer.submit(trained(adam, steps=1).committed)
    assert writer.close(timeout_s=60)
    lowered = min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + WRITER_NICE)
    assert seen == [(lowered, lowered)]


@pytest.mark.skipif(sys.platform != "linux", reason="the writer process is Linux only")
def test_a_killed_writer_process_fails_that_save_and_the_next_save_starts_a_new_one(
    store_url: str,
) -> None:
    recorder = Recorder()
    writer = writer_for(store_url, recorder)
    assert writer.process is not None
    state = trained(adam, steps=1)
    writer.submit(state.committed)
    assert writer.flush(timeout_s=60) and recorder.saved == [1]
    first = writer.process.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    train(state, 1)
    writer.submit(state.committed)
    assert writer.flush(timeout_s=60)
    [(step, error)] = recorder.failed
    assert step == 2 and f"writer process (pid {first}) exited with code -9" in error
    train(state, 1)
    writer.submit(state.committed)
    assert writer.close(timeout_s=60)
    assert recorder.saved == [1, 3]
    assert [listing.step for listing in CheckpointStore(store_url).list()] == [3, 1]
    loaded = CheckpointStore(store_url).load_newest(*adam())
    assert loaded.committed is not None
    assert_same(state.committed.model, loaded.committed.model)


TRAINER = """
import sys, time, torch
from tidemill.checkpoint import CheckpointStore, CheckpointWriter
from tidemill.runtime import ElasticState
model = torch.nn.Linear(256, 256)
state = ElasticState(model, torch.optim.Adam(model.parameters()))
writer = CheckpointWriter(
    CheckpointStore(sys.argv[1]), None, lambda m: None, print, process_min_bytes=0)
state.commit()
writer.submit(state.committed)
writer.flush(60)
print(writer.process.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the writer process is Linux only")
def test_a_training_process_killed_with_sigkill_leaves_no_writer_process(
    store_url: str,
) -> None:
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, store_url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout is not None
        writer_pid = int(trainer.stdout.readline())
        os.kill(writer_pid, 0)  # alive while the trainer is
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(writer_pid):
        time.sleep(0.05)
    assert not _alive(writer_pid), f"writer process {writer_pid} outlived its trainer"


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent that is gone (init reaps those)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the writer process is Linux only")
def test_without_shared_memory_the_writer_saves_on_its_thread_and_says_so(
    store_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(name: str, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refuse)
    recorder = Recorder()
    writer = writer_for(store_url, recorder)
    save_two_steps(writer)
    assert recorder.saved == [1, 2] and recorder.failed == []
    assert writer.process is None
    assert "writer process unavailable ([Errno 38] Function not implemented)" in caplog.text


def test_a_memory_store_is_written_on_the_thread_itself(memory_url: str) -> None:
    recorder = Recorder()
    writer = writer_for(memory_url, recorder)
    assert writer.process is None
    writer.submit(trained(adam, steps=2).committed)
    assert writer.close(timeout_s=60)
    assert recorder.saved == [2]


def test_flush_on_an_idle_writer_is_immediate_and_a_closed_writer_refuses_submits(
    store_url: str,
) -> None:
    writer = writer_for(store_url, Recorder())
    assert writer.flush(timeout_s=0) and not writer.busy
    assert writer.close(timeout_s=1)
    with pytest.raises(RuntimeError, match="is closed; step 1 was not submitted"):
        writer.submit(trained(adam, steps=1).committed)


@pytest.mark.skipif(sys.platform != "linux", reason="the writer process is Linux only")
def test_commits_in_shared_memory_are_saved_by_the_process_from_each_arena_in_turn(
    store_url: str,
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    state = ElasticState(model, optimizer)
    recorder = Recorder()
    writer = writer_for(store_url, recorder)
    arenas = set()
    for _ in range(4):
        state.model(torch.randn(8, 512)).sum().backward()
        optimizer.step()
        state.step += 1
        state.commit()
        assert state.committed.memory is not None
        arenas.add(state.committed.memory.generation)
        writer.submit(state.committed)
        assert writer.flush(timeout_s=60)
    assert writer.close(timeout_s=60)
    assert recorder.failed == [] and recorder.saved == [1, 2, 3, 4]
    assert len(arenas) >= 2, "commits rotate through arenas the process maps once each"
    torch.manual_seed(1)
    fresh = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 2))
    loaded = CheckpointStore(store_url).load_newest(fresh, None)
    assert loaded.committed is not None and loaded.committed.step == 4
    assert_same(dict(state.committed.model), dict(loaded.committed.model), "model")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # no_dist, as asked
def test_a_checkpoint_the_writer_process_saved_loads_with_plain_dcp(store_url: str) -> None:
    """Other DCP tools read tidemill checkpoints: the model under ``model.``, as
    ``dcp.load({"model": model.state_dict()})`` expects (the writer process leaves out
    torch.save's per-record checksums; the store's file checksums cover every byte)."""
    state = trained(adam, steps=2)
    recorder = Recorder()
    writer = writer_for(store_url, recorder)
    writer.submit(state.committed)
    assert writer.close(timeout_s=60)
    assert recorder.failed == [] and recorder.saved == [state.step]
    (listing,) = CheckpointStore(store_url).list()
    torch.manual_seed(99)
    fresh, _ = adam()
    loaded = {"model": fresh.state_dict()}
    dcp.load(loaded, checkpoint_id=listing.url, no_dist=True)
    fresh.load_state_dict(loaded["model"])
    assert_same(dict(state.committed.model), dict(fresh.state_dict()), "model")
