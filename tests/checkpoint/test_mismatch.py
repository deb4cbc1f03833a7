"""A checkpoint that does not fit the model or optimizer says exactly how, and is not bypassed."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoint.conftest import trained
from tidemill.checkpoint import CheckpointError, CheckpointMismatch, CheckpointStore
from tidemill.runtime import ElasticState


def linear(inputs: int, outputs: int = 2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(inputs, outputs)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def saved(store_url: str, *steps_and_models: tuple[int, torch.nn.Module]) -> CheckpointStore:
    store = CheckpointStore(store_url)
    for step, model in steps_and_models:
        state = ElasticState(model, torch.optim.SGD(model.parameters(), lr=0.1), step=step)
        state.commit()
        store.save(state.committed)
    return store


def test_a_shape_difference_names_the_key_both_shapes_and_the_url(store_url: str) -> None:
    store = saved(store_url, (1, torch.nn.Linear(4, 2)))
    with pytest.raises(CheckpointMismatch) as raised:
        store.load_newest(*linear(5))
    message = str(raised.value)
    assert f"checkpoint {store_url}/step-000000000001: does not fit the model" in message
    assert "1 difference (weight: checkpoint [2, 4] float32, model [2, 5] float32)" in message
    assert raised.value.different == ["weight: checkpoint [2, 4] float32, model [2, 5] float32"]
    assert "bias" not in message


def test_missing_and_unexpected_keys_are_counted_and_the_first_few_named(store_url: str) -> None:
    wide = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(8)])
    store = saved(store_url, (1, wide))
    narrow = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, bias=False))
    with pytest.raises(CheckpointMismatch) as raised:
        store.load_newest(narrow, None)
    error = raised.value
    assert error.missing == []
    assert error.unexpected[:3] == ["1.bias", "2.weight", "2.bias"] and len(error.unexpected) == 13
    assert (
        "13 keys in the checkpoint that the model lacks"
        " (1.bias, 2.weight, 2.bias, 3.weight, 3.bias, and 8 more)"
    ) in str(error)

    store = saved(store_url, (2, torch.nn.Linear(2, 2, bias=False)))
    with pytest.raises(CheckpointMismatch) as raised:
        store.load_newest(torch.nn.Linear(2, 2), None)
    assert "1 key of the model missing from the checkpoint (bias)" in str(raised.value)


def test_a_dtype_difference_is_a_mismatch(store_url: str) -> None:
    store = saved(store_url, (1, torch.nn.Linear(4, 2)))
    with pytest.raises(CheckpointMismatch) as raised:
        store.load_newest(torch.nn.Linear(4, 2).double(), None)
    assert "weight: checkpoint [2, 4] float32, model [2, 4] float64" in str(raised.value)


def test_a_mismatch_does_not_fall_back_to_an_older_checkpoint_that_would_fit(
    store_url: str,
) -> None:
    store = saved(store_url, (1, torch.nn.Linear(5, 2)), (2, torch.nn.Linear(4, 2)))
    with pytest.raises(CheckpointMismatch, match="step-000000000002"):
        store.load_newest(*linear(5))


def test_optimizer_parameter_groups_must_match_in_number_and_size(store_url: str) -> None:
    state = trained(lambda: linear(4), steps=1)
    store = CheckpointStore(store_url)
    store.save(state.committed)

    model = torch.nn.Linear(4, 2)
    split = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1)
    with pytest.raises(CheckpointMismatch) as raised:
        store.load_newest(model, split)
    assert "does not fit the optimizer" in str(raised.value)
    assert raised.value.different == ["parameter groups: checkpoint 1, optimizer 2"]

    weight_only = torch.optim.SGD([model.weight], lr=0.1)
    with pytest.raises(
        CheckpointMismatch, match="parameter group 0: checkpoint 2 parameters, optimizer 1"
    ):
        store.load_newest(model, weight_only)


def test_a_mismatch_is_a_checkpoint_error() -> None:
    assert issubclass(CheckpointMismatch, CheckpointError)
