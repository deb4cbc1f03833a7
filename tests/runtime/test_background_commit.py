"""A commit copies parameters and optimizer state in the background until the optimizer's
next step: what a rollback returns is still exactly the commit, and a parameter changed
in place outside the optimizer before its copy was taken stops training, named."""

from __future__ import annotations

import pytest
import torch

from tidemill.runtime import CommitChangedError, ElasticState


def big_state(copy_in_background: bool = True) -> ElasticState:
    """Large enough (48 MB of parameters) that its copy takes milliseconds."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(3)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return ElasticState(model, optimizer, copy_in_background=copy_in_background)


def step(state: ElasticState) -> None:
    assert state.optimizer is not None
    state.optimizer.zero_grad()
    state.model(torch.randn(4, 2048)).pow(2).mean().backward()
    state.optimizer.step()
    state.step += 1


def snapshot(state: ElasticState) -> dict[str, torch.Tensor]:
    assert state.optimizer is not None
    model = {f"model.{k}": v.clone() for k, v in state.model.state_dict().items()}
    optimizer = {
        f"optimizer.{i}.{k}": v.clone()
        for i, values in state.optimizer.state_dict()["state"].items()
        for k, v in values.items()
    }
    return model | optimizer


def assert_equal(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert list(expected) == list(actual)
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


def assert_a_rollback_returns_the_commit(state: ElasticState, steps: int) -> None:
    """Commit, train ``steps`` steps at once (the first waits for the background copy),
    roll back: the state is the commit's, bit for bit."""
    state.commit()
    committed = snapshot(state)
    for _ in range(steps):
        step(state)
    state.restore()
    assert_equal(committed, snapshot(state))


def test_a_step_right_after_a_commit_waits_for_its_copy_and_a_rollback_is_exact() -> None:
    state = big_state()
    step(state)
    assert_a_rollback_returns_the_commit(state, steps=2)


def test_the_committed_state_handed_out_is_complete() -> None:
    state = big_state()
    step(state)
    state.commit()
    expected = snapshot(state)
    committed = state.committed
    step(state)
    for name, value in committed.model.items():
        assert torch.equal(value, expected[f"model.{name}"]), name


def test_a_parameter_changed_in_place_before_its_copy_stops_the_next_step_naming_it() -> None:
    state = big_state()
    step(state)
    state.commit()
    with torch.no_grad():
        state.model[2].bias.add_(1.0)  # copied last of the parameters: still waiting
    with pytest.raises(CommitChangedError, match=r"parameter '2.bias' changed in place"):
        step(state)


def test_without_background_copies_a_change_before_the_step_is_allowed() -> None:
    state = big_state(copy_in_background=False)
    step(state)
    state.commit()
    committed = snapshot(state)
    with torch.no_grad():
        state.model[2].bias.add_(1.0)
    step(state)
    state.restore()
    assert_equal(committed, snapshot(state))


def test_buffers_changed_by_the_forward_pass_roll_back_to_their_committed_values() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.BatchNorm1d(1024))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    state = ElasticState(model, optimizer)
    state.commit()
    running_mean = model[1].running_mean.clone()
    model(torch.randn(8, 1024)).sum().backward()  # updates the running statistics
    assert not torch.equal(model[1].running_mean, running_mean)
    optimizer.step()
    state.restore()
    assert torch.equal(model[1].running_mean, running_mean)


def test_weights_loaded_into_the_model_right_after_building_the_state_are_allowed() -> None:
    state = big_state()
    torch.manual_seed(1)
    pretrained = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(3)])
    state.model.load_state_dict(pretrained.state_dict())  # before the first step
    step(state)
    assert_a_rollback_returns_the_commit(state, steps=1)


def test_a_change_that_the_next_commit_replaces_is_no_error() -> None:
    state = big_state()
    step(state)
    state.commit()
    with torch.no_grad():
        state.model[2].bias.mul_(0.5)  # as on_resize may rescale after a broadcast
    assert_a_rollback_returns_the_commit(state, steps=1)


class ManySmall(torch.nn.Module):
    """Hundreds of small bfloat16 layers, one layer larger than a copy chunk, and an
    empty one no step ever changes."""

    def __init__(self) -> None:
        super().__init__()
        self.small = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(300))
        self.large = torch.nn.Linear(1024, 2560)  # a 10 MB weight: cut into chunks
        self.empty = torch.nn.Parameter(torch.empty(0, 16))
        self.to(torch.bfloat16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for layer in self.small:
            x = torch.tanh(layer(x))
        return x.sum() + self.large(y).sum()


def test_a_commit_of_many_small_tensors_of_mixed_sizes_rolls_back_exactly() -> None:
    torch.manual_seed(0)
    model = ManySmall()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    state = ElasticState(model, optimizer)

    def train() -> None:
        optimizer.zero_grad()
        x, y = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(2, 1024, dtype=torch.bfloat16)
        model(x, y).float().backward()
        optimizer.step()

    train()
    state.commit()
    committed = snapshot(state)
    train()
    train()
    assert not torch.equal(model.large.weight, committed["model.large.weight"])
    state.restore()
    assert_equal(committed, snapshot(state))
