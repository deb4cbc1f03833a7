"""Staging a committed state in shared memory: what the writer process rebuilds is the state."""

from __future__ import annotations

import dataclasses
import os

import torch

from tests.checkpoint.conftest import adam, assert_same, sgd_momentum, trained
from tidemill.checkpoint._staging import Stager, unstage
from tidemill.runtime import ElasticState
from tidemill.runtime._shared_memory import SharedArena
from tidemill.runtime.elastic_state import Committed


def through_another_mapping(stager: Stager, committed: Committed) -> Committed:
    """Stage, then rebuild from second mappings of the arenas, as the writer process does."""
    staged = stager.stage(committed)
    assert staged.arenas, "a state with tensors names at least one arena"
    others = {
        arena.generation: SharedArena.adopt(os.dup(arena.fd), arena.generation)
        for arena in staged.arenas
        if arena.fd is not None
    }
    return unstage(staged.payload, others)


def assert_same_committed(expected: Committed, actual: Committed) -> None:
    for field in dataclasses.fields(Committed):
        if field.name not in ("memory", "fill"):
            assert_same(getattr(expected, field.name), getattr(actual, field.name), field.name)


def large_state() -> ElasticState:
    """A state past the commit memory's threshold: its commits lie in shared memory."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 512)).sum().backward()
    optimizer.step()
    state = ElasticState(model, optimizer, extras={"epoch": 1}, data={"offset": 64})
    state.step = 1
    state.commit()
    return state


def test_a_trained_state_comes_back_bit_for_bit_from_a_second_mapping() -> None:
    committed = trained(adam, steps=3, epoch=2).committed
    rebuilt = through_another_mapping(Stager(), committed)
    assert_same_committed(committed, rebuilt)


def test_a_commit_in_shared_memory_is_described_in_place_not_copied() -> None:
    committed = large_state().committed
    assert committed.memory is not None and committed.memory.fd is not None
    stager = Stager()
    staged = stager.stage(committed)
    assert staged.arenas == [committed.memory]
    assert stager.arena is None, "nothing needed a staging copy"
    rebuilt = through_another_mapping(Stager(), committed)
    assert_same_committed(committed, rebuilt)


def test_a_state_partly_in_shared_memory_stages_only_the_rest() -> None:
    committed = large_state().committed
    assert committed.memory is not None
    extra = torch.arange(10, dtype=torch.int64)
    mixed = dataclasses.replace(committed, model={**committed.model, "extra": extra})
    stager = Stager()
    staged = stager.stage(mixed)
    assert stager.arena is not None
    assert staged.arenas == [committed.memory, stager.arena]
    assert stager.arena.nbytes < committed.memory.nbytes, "only the extra tensor was copied"
    assert_same_committed(mixed, through_another_mapping(Stager(), mixed))


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


def test_the_staging_arena_is_reused_while_states_fit_and_replaced_when_one_does_not() -> None:
    stager = Stager()
    stager.stage(trained(sgd_momentum, steps=1).committed)
    assert stager.arena is not None
    first = stager.arena
    stager.stage(trained(sgd_momentum, steps=2).committed)
    assert stager.arena is first
    big = torch.nn.Linear(512, 512)
    stager.stage(Committed(1, 1, {}, {}, dict(big.state_dict()), None))
    assert stager.arena is not first and first.closed
    assert stager.arena.nbytes >= 512 * 513 * 4
    stager.close()


def test_the_staging_arena_holds_a_copy_not_the_live_tensors() -> None:
    weight = torch.zeros(4)
    committed = Committed(1, 1, {}, {}, {"w": weight}, None)
    stager = Stager()
    staged = stager.stage(committed)
    weight += 1
    rebuilt = unstage(staged.payload, {arena.generation: arena for arena in staged.arenas})
    assert torch.equal(rebuilt.model["w"], torch.zeros(4))
