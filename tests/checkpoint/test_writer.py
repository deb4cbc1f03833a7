"""The writer thread: never blocks a submit, writes the latest state, survives its callbacks."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.checkpoint.conftest import adam, train, trained
from tidemill.checkpoint import CheckpointStore, CheckpointWriter, Manifest
from tidemill.checkpoint._writer import WRITER_NICE

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
    return CheckpointWriter(
        CheckpointStore(url, keep=keep), "job-a", recorder.on_saved, recorder.on_failed
    )


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

    writer = CheckpointWriter(CheckpointStore(store_url), None, explode, lambda s, e: None)
    state = trained(adam, steps=1)
    writer.submit(state.committed)
    assert writer.flush(timeout_s=30)
    train(state, 1)
    writer.submit(state.committed)
    assert writer.close(timeout_s=30)
    assert saved == [1, 2]
    assert "callback bug" in caplog.text


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux only")
def test_the_writer_thread_runs_at_a_lower_priority_than_training(store_url: str) -> None:
    seen: list[int] = []

    def priority(manifest: Manifest) -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    writer = CheckpointWriter(CheckpointStore(store_url), None, priority, lambda s, e: None)
    writer.submit(trained(adam, steps=1).committed)
    assert writer.close(timeout_s=30)
    ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, ours + WRITER_NICE)]


def test_flush_on_an_idle_writer_is_immediate_and_a_closed_writer_refuses_submits(
    store_url: str,
) -> None:
    writer = writer_for(store_url, Recorder())
    assert writer.flush(timeout_s=0) and not writer.busy
    assert writer.close(timeout_s=1)
    with pytest.raises(RuntimeError, match="is closed; step 1 was not submitted"):
        writer.submit(trained(adam, steps=1).committed)
