"""Staging a committed state in shared memory: what the writer process rebuilds is the state."""

from __future__ import annotations

import dataclasses
import os

import torch

from tests.checkpoint.conftest import adam, assert_same, sgd_momentum, trained
from tidemill.checkpoint._staging import SharedArena, Stager, unstage
from tidemill.runtime.elastic_state import Committed


def through_another_mapping(stager: Stager, committed: Committed) -> Committed:
    """Stage, then rebuild from a second mapping of the arena, as the writer process does."""
    staged = stager.stage(committed)
    other = SharedArena.adopt(os.dup(staged.arena.fd), staged.arena.generation)
    return unstage(staged.payload, other)


def assert_same_committed(expected: Committed, actual: Committed) -> None:
    for field in dataclasses.fields(Committed):
        assert_same(getattr(expected, field.name), getattr(actual, field.name), field.name)


def test_a_trained_state_comes_back_bit_for_bit_from_a_second_mapping() -> None:
    committed = trained(adam, steps=3, epoch=2).committed
    rebuilt = through_another_mapping(Stager(), committed)
    assert_same_committed(committed, rebuilt)


def test_odd_tensors_survive_staging() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.ones(3, dtype=torch.bfloat16)
    committed = Committed(
        step=9,
        world_size=2,
        extras={"note": "x"},
        data={"offset": 7},
        model={
            "transposed": base.t(),
            "empty": torch.empty(0, 5),
            "int8": torch.tensor([-3, 4], dtype=torch.int8),
            "scalar": torch.tensor(2.5, dtype=torch.float64),
        },
        optimizer={"state": {0: {"a": shared, "b": shared}}, "param_groups": [{"params": [0]}]},
    )
    rebuilt = through_another_mapping(Stager(), committed)
    assert_same_committed(committed, rebuilt)
    again = rebuilt.optimizer
    assert again is not None
    assert again["state"][0]["a"] is again["state"][0]["b"], "one tensor stays one tensor"


def test_the_arena_is_reused_while_states_fit_and_replaced_when_one_does_not() -> None:
    stager = Stager()
    small = stager.stage(trained(sgd_momentum, steps=1).committed)
    first = small.arena.generation
    del small
    same = stager.stage(trained(sgd_momentum, steps=2).committed)
    assert same.arena.generation == first
    big = torch.nn.Linear(512, 512)
    bigger = Committed(1, 1, {}, {}, dict(big.state_dict()), None)
    grown = stager.stage(bigger)
    assert grown.arena.generation > first
    assert grown.arena.nbytes >= 512 * 513 * 4
    stager.close()


def test_the_arena_holds_a_copy_not_the_live_tensors() -> None:
    weight = torch.zeros(4)
    committed = Committed(1, 1, {}, {}, {"w": weight}, None)
    stager = Stager()
    staged = stager.stage(committed)
    weight += 1
    rebuilt = unstage(staged.payload, staged.arena)
    assert torch.equal(rebuilt.model["w"], torch.zeros(4))
