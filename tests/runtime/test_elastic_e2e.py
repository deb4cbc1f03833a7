"""Elastic training end to end, the way the controller runs it, without the control plane.

A real job master and real worker processes (``examples/elastic/train.py``, gloo on the
CPU), environments set by hand as the controller sets them. One run goes through
every membership change the issue names: kill -9 of a worker, two joiners, a SIGTERM
scale-in, kill -9 and relaunch of the master, then one more scale-in, so that a group
forms on the relaunched master's store. The example's counting model then proves
that no sample was lost or trained twice, and the pids in its epoch history prove that
survivors kept their processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.master.processes import MasterProcess, wait_until, worker_env

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "elastic" / "train.py"
STEPS = 600
BATCH = 60
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TF_CONFIG")


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[str]
    stderr: Path
    lines: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"worker-{self.index}"


@dataclass
class ElasticJob:
    """A master and workers on this machine; :meth:`stop` ends whatever is left."""

    folder: Path
    master: MasterProcess
    workers: dict[int, Worker] = field(default_factory=dict)

    @property
    def fast_file(self) -> Path:
        return self.folder / "fast"

    @property
    def result_file(self) -> Path:
        return self.folder / "result.json"

    def start_worker(self, index: int) -> Worker:
        env = worker_env(self.master.address, index)
        env.update(
            {
                # What the controller also sets at launch; the elastic runtime ignores them.
                "RANK": str(index),
                "WORLD_SIZE": "4",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1",
                "CUDA_VISIBLE_DEVICES": "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        argv = [
            sys.executable,
            str(EXAMPLE),
            f"--steps={STEPS}",
            f"--batch={BATCH}",
            "--commit-every=10",
            "--step-time=0.05",
            "--log-every=1",
            f"--fast-when={self.fast_file}",
            f"--result={self.result_file}",
        ]
        stderr = self.folder / f"worker-{index}.err"
        with stderr.open("w") as err:
            process = subprocess.Popen(
                argv, env=env, cwd=self.folder, stdout=subprocess.PIPE, stderr=err, text=True
            )
        worker = Worker(index, process, stderr)
        threading.Thread(target=self._read, args=(worker,), daemon=True).start()
        self.workers[index] = worker
        return worker

    def _read(self, worker: Worker) -> None:
        assert worker.process.stdout is not None
        for line in worker.process.stdout:
            worker.lines.append(line.rstrip("\n"))

    def progress(self) -> list[dict[str, Any]]:
        """Every step rank 0 reported, from whichever process was rank 0."""
        return [
            json.loads(line.removeprefix("progress "))
            for worker in list(self.workers.values())
            for line in list(worker.lines)
            if line.startswith("progress ")
        ]

    def first_step(self, world: int, after: float, timeout_s: float) -> dict[str, Any]:
        """The first step completed at ``world`` workers after time ``after``."""
        found: dict[str, Any] = wait_until(
            lambda: min(
                (p for p in self.progress() if p["world"] == world and p["t"] > after),
                key=lambda p: p["t"],
                default=None,
            ),
            timeout_s,
            f"a step at world size {world} (last: {self.last()})",
        )
        return found

    def last(self) -> dict[str, Any] | None:
        return max(self.progress(), key=lambda p: p["t"], default=None)

    def steps_left(self) -> int:
        last = self.last()
        return STEPS - (last["step"] if last else 0)

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
            worker.process.wait()
        self.master.kill()


@pytest.fixture
def job(tmp_path: Path) -> Iterator[ElasticJob]:
    master = MasterProcess(
        tmp_path,
        {
            "TIDEMILL_ELASTIC_MIN": "1",
            "TIDEMILL_ELASTIC_MAX": "6",
            "TIDEMILL_ELASTIC_SETTLE_S": "2",
            "TIDEMILL_ELASTIC_TIMEOUT_S": "30",
            "TIDEMILL_ELASTIC_RECONNECT_TIMEOUT_S": "10",
        },
    )
    elastic_job = ElasticJob(tmp_path, master)
    try:
        yield elastic_job
    finally:
        elastic_job.stop()


def test_workers_come_and_go_and_the_master_restarts_yet_every_sample_is_trained_once(
    job: ElasticJob, capsys: pytest.CaptureFixture[str]
) -> None:
    timings: dict[str, float] = {}
    job.master.start()
    for index in range(4):
        job.start_worker(index)
    first = job.first_step(4, after=0, timeout_s=90)
    wait_until(
        lambda: (job.last() or first)["step"] >= first["step"] + 25,
        30,
        "a few commits at 4 workers",
    )

    killed_at = time.time()
    job.workers[2].process.send_signal(signal.SIGKILL)
    timings["kill -9 worker-2 -> first step at 3 workers"] = (
        job.first_step(3, after=killed_at, timeout_s=30)["t"] - killed_at
    )

    started_at = time.time()
    job.start_worker(4)
    job.start_worker(5)
    timings["start worker-4, worker-5 -> first step at 5 workers"] = (
        job.first_step(5, after=started_at, timeout_s=60)["t"] - started_at
    )

    terminated_at = time.time()
    job.workers[1].process.send_signal(signal.SIGTERM)
    timings["SIGTERM worker-1 -> first step at 4 workers"] = (
        job.first_step(4, after=terminated_at, timeout_s=30)["t"] - terminated_at
    )
    assert job.workers[1].process.wait(timeout=30) == 0, job.workers[1].stderr.read_text()

    master_killed_at = time.time()
    job.master.kill()
    step_at_kill = job.last()
    job.master.start()
    job.master.wait_for_event("MasterResumed", timeout_s=20)
    timings["kill -9 master -> resumed (relaunch included)"] = time.time() - master_killed_at
    resumed_at = time.time()
    job.first_step(4, after=resumed_at, timeout_s=20)

    after_restart = time.time()
    job.workers[3].process.send_signal(signal.SIGTERM)
    timings["SIGTERM worker-3 -> first step at 3 workers (store of the new master)"] = (
        job.first_step(3, after=after_restart, timeout_s=30)["t"] - after_restart
    )
    assert job.workers[3].process.wait(timeout=30) == 0, job.workers[3].stderr.read_text()
    assert job.steps_left() > 0, f"training ended before all changes were made; raise {STEPS=}"

    job.fast_file.touch()
    for index in (0, 4, 5):
        process = job.workers[index].process
        assert process.wait(timeout=120) == 0, job.workers[index].stderr.read_text()[-3000:]
    with capsys.disabled():
        print()
        for what, seconds in timings.items():
            print(f"  elastic timing: {what}: {seconds:.2f} s")

    result = json.loads(job.result_file.read_text())
    assert result["committed_step"] == STEPS
    assert (result["counts_min"], result["counts_max"]) == (1.0, 1.0)
    assert result["ids_trained_once"] == STEPS * BATCH
    assert result["ids_beyond_commit_nonzero"] == 0

    worlds = [epoch["world_size"] for epoch in result["epochs"]]
    assert _in_order([4, 3, 5, 4, 3], worlds), worlds
    pids = {w.name: w.process.pid for w in job.workers.values()}
    for epoch in result["epochs"]:
        assert {name: pid for name, pid in epoch["pids"]} == {
            name: pids[name] for name, _ in epoch["pids"]
        }, f"a process was replaced in epoch {epoch}"
    assert job.workers[2].process.wait(timeout=5) == -signal.SIGKILL
    assert "left the job at step" in job.workers[1].stderr.read_text()
    assert step_at_kill is not None

    events = job.master.events()
    messages = [e["message"] for e in events if e["reason"] == "EpochStarted"]
    assert any("left worker-2 (lost)" in m for m in messages), messages
    assert any("left worker-1 (left)" in m for m in messages), messages
    assert any("left worker-3 (left)" in m for m in messages), messages
    assert any("joined worker-4" in m for m in messages), messages
    lost = [e for e in events if e["reason"] == "WorkerLost"]
    assert [e["replica"] for e in lost] == ["worker-2"]
    assert job.master.saved()["committed"]["step"] == STEPS
    assert job.master.saved()["phase"] == "finished"


def _in_order(wanted: list[int], seen: list[int]) -> bool:
    """``wanted`` is a subsequence of ``seen``."""
    remaining = iter(seen)
    return all(any(value == w for value in remaining) for w in wanted)
