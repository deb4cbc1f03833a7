"""The elastic API as a script uses it: alone, misconfigured, leaving, refused."""

from __future__ import annotations

import doctest
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import tidemill.runtime
from tests.master.processes import MasterProcess, Replica, wait_until, worker_env
from tidemill.runtime import (
    ElasticContext,
    ElasticState,
    Left,
    RendezvousError,
    RuntimeConfigError,
    elastic,
    elastic_context,
    elastic_loop,
    elastic_state,
)

ELASTIC_VARS = ("TIDEMILL_MASTER_ADDR", "TIDEMILL_ELASTIC", "TIDEMILL_ROLE", "TIDEMILL_INDEX")

WAITER = """
import torch
from tidemill.runtime import ElasticState, elastic

state = ElasticState(torch.nn.Linear(1, 1))

@elastic(state)
def train(ctx):
    raise AssertionError("a group of one was never allowed to form")

train()
print("not reached")
"""


@pytest.fixture
def no_master(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ELASTIC_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_elastic_names_are_public_and_resolve_lazily() -> None:
    assert tidemill.runtime.elastic is elastic_loop.elastic
    assert tidemill.runtime.ElasticState is elastic_state.ElasticState
    assert tidemill.runtime.ElasticContext is elastic_context.ElasticContext
    assert issubclass(Left, SystemExit)


@pytest.mark.parametrize("module", [elastic_loop, elastic_state, elastic_context])
def test_the_docstring_examples_run(no_master: pytest.MonkeyPatch, module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_without_a_master_the_function_runs_once_alone_on_the_bare_model(
    no_master: pytest.MonkeyPatch,
) -> None:
    model = torch.nn.Linear(2, 1)
    state = ElasticState(model)
    seen: list[ElasticContext] = []

    @elastic(state)
    def train(ctx: ElasticContext, scale: int) -> int:
        seen.append(ctx)
        for _ in ctx.steps(until=4):
            state.step += 1
        return state.step * scale

    assert train(10) == 40
    [ctx] = seen
    assert (ctx.rank, ctx.world_size, ctx.is_chief, ctx.model) == (0, 1, True, model)


def test_an_elastic_launch_without_the_masters_address_says_what_is_missing(
    no_master: pytest.MonkeyPatch,
) -> None:
    no_master.setenv("TIDEMILL_ELASTIC", "1")
    state = ElasticState(torch.nn.Linear(1, 1))

    with pytest.raises(RuntimeConfigError, match="TIDEMILL_MASTER_ADDR is not set"):
        elastic(state)(lambda ctx: None)()


def test_rollback_restores_model_optimizer_and_positions_in_place() -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = ElasticState(model, optimizer, data={"offset": 0})

    def train_step() -> None:
        loss = model(torch.ones(4, 3)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step += 1
        state.data["offset"] += 4

    train_step()
    state.commit()
    weight = model.weight.detach().clone()
    momentum = optimizer.state[model.weight]["momentum_buffer"].clone()
    train_step()
    train_step()

    state.restore()

    assert (state.step, state.data) == (1, {"offset": 4})
    assert torch.equal(model.weight, weight)
    # Through the optimizer's own methods, which wait for the restored state to be filled
    # in the background (optimizer.state read directly may not hold it yet).
    restored = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(restored, momentum)
    train_step()
    assert not torch.equal(model.weight, weight), "the optimizer still drives the same tensors"


def test_commit_hooks_run_in_registration_order_and_a_removed_one_no_longer_runs() -> None:
    state = ElasticState(torch.nn.Linear(1, 1))
    calls: list[str] = []
    first = state.add_commit_hook(lambda s: calls.append("first"))
    state.add_commit_hook(lambda s: calls.append("second"))
    state.add_commit_hook(lambda s: s.data.update(seen=list(calls)))
    state.commit()
    assert calls == ["first", "second"]
    assert state.committed_data == {"seen": ["first", "second"]}
    first.remove()
    first.remove()
    calls.clear()
    state.commit()
    assert calls == ["second"]


def test_hooks_added_for_an_epoch_end_with_it_and_others_stay(
    no_master: pytest.MonkeyPatch,
) -> None:
    from tidemill.runtime._active import current

    state = ElasticState(torch.nn.Linear(1, 1))
    calls: list[str] = []
    state.add_commit_hook(lambda s: calls.append("kept"))

    @elastic(state)
    def train(ctx: ElasticContext) -> None:
        active = current()
        assert active is not None
        active.hook_commits(lambda s: calls.append("epoch"))
        state.commit()

    train()
    assert calls == ["kept", "epoch"]
    calls.clear()
    state.commit()
    assert calls == ["kept"]


def test_only_small_json_extras_travel_to_the_master() -> None:
    state = ElasticState(torch.nn.Linear(1, 1), extras={"epoch": 2})
    state.commit()
    assert state.report() == {"step": 0, "data": {}, "extras": {"epoch": 2}}
    state.extras = {"blob": "x" * 70_000}
    state.commit()
    assert state.report()["extras"] is None
    state.extras = {"tensor": torch.zeros(1)}
    state.commit()
    assert state.report()["extras"] is None


def test_an_uncaught_left_ends_the_process_with_exit_code_0_and_no_traceback() -> None:
    script = "from tidemill.runtime import Left\nraise Left('worker-3 left the job', step=5)\n"
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (finished.returncode, finished.stderr) == (0, "")


def test_a_worker_told_to_leave_before_it_joined_exits_0(tmp_path: Path) -> None:
    master = MasterProcess(tmp_path, {"TIDEMILL_ELASTIC_MIN": "2", "TIDEMILL_ELASTIC_MAX": "2"})
    master.start()
    try:
        (tmp_path / "waiter.py").write_text(WAITER)
        worker = subprocess.Popen(
            [sys.executable, "waiter.py"],
            cwd=tmp_path,
            env=worker_env(master.address, 0),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: _registered(master, "worker-0"), 60, "worker-0 to register")
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=30)
    finally:
        master.kill()

    assert worker.returncode == 0, stderr
    assert stdout == ""
    assert "worker-0 left the job before joining a group (SIGTERM)" in stderr


def test_a_second_process_with_a_live_replicas_identity_fails_with_the_masters_reason(
    tmp_path: Path,
) -> None:
    master = MasterProcess(tmp_path, {"TIDEMILL_ELASTIC_MIN": "2", "TIDEMILL_ELASTIC_MAX": "2"})
    master.start()
    holder = Replica(master.address).register("worker-0")
    try:
        holder.expect("registered")
        (tmp_path / "waiter.py").write_text(WAITER)
        finished = subprocess.run(
            [sys.executable, "waiter.py"],
            cwd=tmp_path,
            env=worker_env(master.address, 0),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.close()
        master.kill()

    assert finished.returncode == 1
    assert RendezvousError.__name__ in finished.stderr
    assert "the job master refused worker-0: worker-0 registered twice" in finished.stderr


def _registered(master: MasterProcess, name: str) -> bool:
    return f"{name} (pid" in (master.folder / f"master.{master.starts}.log").read_text()
