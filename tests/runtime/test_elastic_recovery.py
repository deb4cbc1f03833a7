"""What a joiner receives and what a crash costs: real workers, a real master, gloo on the CPU.

Each worker seeds its model differently, so equal digests across ranks can only come
from the broadcast of the newest state (parameters, momentum buffers, learning rate).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.master.processes import MasterProcess, wait_until, worker_env

pytestmark = pytest.mark.e2e

PROBE = """
import hashlib, json, os, sys, time
import torch
from tidemill.runtime import ElasticState, elastic

torch.set_num_threads(1)
torch.manual_seed(int(os.environ["TIDEMILL_INDEX"]))
model = torch.nn.Linear(8, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
state = ElasticState(model, optimizer)
crash_file, stop_file = sys.argv[1], sys.argv[2]


def scale_lr(old, new):
    for group in optimizer.param_groups:
        group["lr"] *= new / old


def digest():
    h = hashlib.sha256()
    for tensor in model.state_dict().values():
        h.update(tensor.numpy().tobytes())
    for buffers in optimizer.state.values():
        h.update(buffers["momentum_buffer"].numpy().tobytes())
    h.update(repr(optimizer.param_groups[0]["lr"]).encode())
    return h.hexdigest()[:16]


def report(**fields):
    print(json.dumps(fields), flush=True)


@elastic(state, on_resize=scale_lr)
def train(ctx):
    report(epoch=ctx.epoch, rank=ctx.rank, world=ctx.world_size, step=state.step,
           digest=digest(), lr=round(optimizer.param_groups[0]["lr"], 6), pid=os.getpid())
    for step in ctx.steps(until=600):
        if os.path.exists(crash_file) and os.environ.get("CRASH") == "1":
            raise ValueError(f"bad batch at step {step}")
        x = torch.full((4, 8), float(ctx.rank + 1))
        loss = ctx.model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step += 1
        if state.step % 5 == 0:
            state.commit()
        if not os.path.exists(stop_file):
            time.sleep(0.03)
    report(done=state.step, digest=digest())


train()
"""


class Probes:
    def __init__(self, folder: Path, master: MasterProcess) -> None:
        self.folder = folder
        self.master = master
        self.processes: dict[int, subprocess.Popen[str]] = {}
        self.reports: dict[int, list[dict[str, Any]]] = {}
        (folder / "probe.py").write_text(PROBE)

    def start(self, index: int, crash: bool = False) -> None:
        env = worker_env(self.master.address, index, CRASH="1" if crash else "0")
        argv = [sys.executable, "probe.py", "crash", "stop"]
        with (self.folder / f"worker-{index}.err").open("w") as err:
            process = subprocess.Popen(
                argv, cwd=self.folder, env=env, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.processes[index] = process
        self.reports[index] = []
        threading.Thread(target=self._read, args=(index,), daemon=True).start()

    def _read(self, index: int) -> None:
        stdout = self.processes[index].stdout
        assert stdout is not None
        for line in stdout:
            self.reports[index].append(json.loads(line))

    def epoch(self, number: int, indexes: list[int]) -> dict[int, dict[str, Any]]:
        """Each listed worker's report on entering epoch ``number``."""

        def entered() -> dict[int, dict[str, Any]] | None:
            found = {
                i: report
                for i in indexes
                for report in self.reports[i]
                if report.get("epoch") == number
            }
            return found if len(found) == len(indexes) else None

        found: dict[int, dict[str, Any]] = wait_until(
            entered, 60, f"workers {indexes} in epoch {number}: {self.reports}"
        )
        return found

    def stderr(self, index: int) -> str:
        return (self.folder / f"worker-{index}.err").read_text()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()
        self.master.kill()


@pytest.fixture
def probes(tmp_path: Path) -> Iterator[Probes]:
    master = MasterProcess(
        tmp_path,
        {
            "TIDEMILL_ELASTIC_MIN": "2",
            "TIDEMILL_ELASTIC_MAX": "3",
            "TIDEMILL_ELASTIC_SETTLE_S": "0.5",
        },
    )
    master.start()
    running = Probes(tmp_path, master)
    try:
        yield running
    finally:
        running.stop()


def test_a_joiner_receives_the_newest_state_and_a_crashed_worker_costs_only_a_rollback(
    probes: Probes,
) -> None:
    probes.start(0)
    probes.start(1, crash=True)
    first = probes.epoch(1, [0, 1])
    assert first[0]["digest"] == first[1]["digest"], "rank 0's initial model went to rank 1"
    assert [first[i]["lr"] for i in (0, 1)] == [0.1, 0.1], "on_resize(1, 2) doubled the lr"

    probes.start(2)
    second = probes.epoch(2, [0, 1, 2])

    assert len({r["digest"] for r in second.values()}) == 1, second
    assert len({r["step"] for r in second.values()}) == 1
    assert second[0]["step"] > 0, "the group trained before worker-2 joined"
    assert {r["lr"] for r in second.values()} == {0.15}
    assert {i: second[i]["rank"] for i in (0, 1, 2)} == {0: 0, 1: 1, 2: 2}
    assert [second[i]["pid"] for i in (0, 1)] == [first[i]["pid"] for i in (0, 1)]

    (probes.folder / "crash").touch()
    assert probes.processes[1].wait(timeout=30) == 1
    assert "ValueError: bad batch at step" in probes.stderr(1)
    third = probes.epoch(3, [0, 2])
    assert {i: third[i]["rank"] for i in (0, 2)} == {0: 0, 2: 1}
    assert {r["lr"] for r in third.values()} == {0.1}
    assert third[0]["digest"] == third[2]["digest"]
    resumed = third[0]["step"]
    assert resumed == second[0]["step"] or resumed % 5 == 0, "the survivors resumed from a commit"
    assert "rolled back to step" in probes.stderr(0)

    (probes.folder / "stop").touch()
    for index in (0, 2):
        assert probes.processes[index].wait(timeout=60) == 0, probes.stderr(index)
    done = [probes.reports[i][-1] for i in (0, 2)]
    assert done[0] == done[1] and done[0]["done"] == 600
    messages = [e["message"] for e in probes.master.events()]
    assert any("left worker-1 (lost)" in m for m in messages), messages
