"""The copies ElasticState keeps: the optimizer's own state after a restore (filled in the
background, complete before its first step) and the commit a broadcast source keeps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tidemill.runtime import ElasticState


def adam_state(dtype: torch.dtype = torch.float32, width: int = 512) -> ElasticState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4))
    model.to(dtype)
    return ElasticState(model, torch.optim.Adam(model.parameters(), lr=0.01))


def train(state: ElasticState, steps: int) -> None:
    assert state.optimizer is not None
    generator = torch.Generator().manual_seed(state.step)
    width = state.model[0].in_features
    for _ in range(steps):
        state.optimizer.zero_grad()
        inputs = torch.randn(8, width, generator=generator, dtype=state.model[0].weight.dtype)
        state.model(inputs).pow(2).mean().backward()
        state.optimizer.step()
        state.step += 1


def optimizer_tensors(state: ElasticState) -> dict[str, torch.Tensor]:
    assert state.optimizer is not None
    return {
        f"{index}.{key}": value.clone()
        for index, values in state.optimizer.state_dict()["state"].items()
        for key, value in values.items()
    }


def assert_equal(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_after_a_rollback_training_again_gives_the_same_state_bit_for_bit() -> None:
    state = adam_state()
    train(state, 3)
    state.commit()
    train(state, 2)
    first = optimizer_tensors(state)
    for _ in range(3):
        state.restore()
        train(state, 2)
        assert_equal(first, optimizer_tensors(state))


def test_a_step_right_after_a_restore_trains_on_the_complete_state() -> None:
    state = adam_state(width=2048)  # 2 x 16 MiB of moments: the copy takes a while
    train(state, 2)
    state.commit()
    assert state.optimizer is not None
    gradients = [p.grad.clone() for p in state.model.parameters() if p.grad is not None]
    train(state, 3)
    expected_params = None
    for _ in range(2):
        state.restore()
        for parameter, gradient in zip(state.model.parameters(), gradients, strict=True):
            parameter.grad = gradient.clone()
        state.optimizer.step()  # at once: the background copy cannot have finished
        params = [p.detach().clone() for p in state.model.parameters()]
        if expected_params is None:
            expected_params = params
            expected = optimizer_tensors(state)
            continue
        assert_equal(expected, optimizer_tensors(state))
        for want, got in zip(expected_params, params, strict=True):
            assert torch.equal(want, got)


def test_the_committed_state_is_not_what_the_optimizer_trains_on() -> None:
    state = adam_state()
    train(state, 2)
    state.commit()
    committed = copy.deepcopy(state.committed.optimizer)
    state.restore()
    train(state, 3)
    assert committed is not None and state.committed.optimizer is not None
    for index, values in committed["state"].items():
        for key, value in values.items():
            assert torch.equal(value, state.committed.optimizer["state"][index][key])


def test_a_state_dict_taken_right_after_a_restore_is_complete() -> None:
    state = adam_state()
    train(state, 2)
    state.commit()
    expected = optimizer_tensors(state)
    train(state, 2)
    state.restore()
    assert_equal(expected, optimizer_tensors(state))


def test_an_adopted_state_of_another_dtype_is_converted_from_complete_values() -> None:
    source = adam_state(torch.float32)
    train(source, 2)
    source.commit()
    target = adam_state(torch.float64)
    target.adopt(source.committed)
    assert target.optimizer is not None
    for index, values in target.optimizer.state_dict()["state"].items():
        assert source.committed.optimizer is not None
        for key, value in values.items():
            saved = source.committed.optimizer["state"][index][key]
            if key != "step":
                assert value.dtype == torch.float64
            assert torch.equal(value, saved.to(value.dtype)), f"{index}.{key}"


@pytest.fixture
def group_of_one(tmp_path: Path) -> Iterator[None]:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_source_that_just_committed_keeps_its_commit_through_a_broadcast(
    group_of_one: None,
) -> None:
    state = adam_state()
    train(state, 2)
    state.commit()
    committed = state.committed
    state.broadcast(0, 0, torch.device("cpu"))
    assert state.committed is committed
    assert state.holds_group_state


def test_a_source_that_trained_since_its_commit_commits_what_it_broadcasts(
    group_of_one: None,
) -> None:
    state = adam_state()
    train(state, 2)
    state.commit()
    train(state, 1)
    state.broadcast(0, 0, torch.device("cpu"))
    assert state.committed_step == 3
    train(state, 1)  # training without a commit, then a second broadcast
    state.broadcast(0, 0, torch.device("cpu"))
    assert torch.equal(state.committed.model["1.bias"], state.model[1].bias)
