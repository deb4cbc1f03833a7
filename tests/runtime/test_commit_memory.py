"""Commits copy into reused memory: an old commit's bytes are reused only once nothing
holds them, so every commit, rollback and held tensor keeps its own values."""

from __future__ import annotations

import os

import pytest
import torch

from tidemill.runtime import ElasticState
from tidemill.runtime._commit_memory import MIN_BYTES


def large_state() -> ElasticState:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 4))
    state = ElasticState(model, torch.optim.Adam(model.parameters(), lr=0.01))
    train(state, 1)
    return state


def train(state: ElasticState, steps: int) -> None:
    assert state.optimizer is not None
    for _ in range(steps):
        state.optimizer.zero_grad()
        state.model(torch.randn(8, 512)).pow(2).mean().backward()
        state.optimizer.step()
        state.step += 1


def arena_of(state: ElasticState) -> int:
    memory = state.committed.memory
    assert memory is not None, "a state this large commits into commit memory"
    return memory.generation


def test_commits_alternate_between_two_arenas_once_the_first_two_exist() -> None:
    state = large_state()
    seen = []
    for _ in range(6):
        state.commit()
        seen.append(arena_of(state))
    assert seen[2:] == seen[:2] * 2, f"arenas used in turn: {seen}"
    assert seen[0] != seen[1]


def test_a_tensor_held_from_an_old_commit_keeps_its_values_through_later_commits() -> None:
    state = large_state()
    state.commit()
    held = state.committed.model["0.weight"][3]  # a view: it alone keeps the arena busy
    expected = held.clone()
    held_arena = state.committed.memory
    assert held_arena is not None
    for _ in range(4):
        train(state, 1)
        state.commit()
        assert arena_of(state) != held_arena.generation
    assert torch.equal(held, expected)
    del held
    used = set()
    for _ in range(2):
        train(state, 1)
        state.commit()
        used.add(arena_of(state))
    assert held_arena.generation in used or held_arena.closed, "freed memory is reused or let go"


def test_a_rollback_after_many_commits_returns_the_last_commit_bit_for_bit() -> None:
    state = large_state()
    for _ in range(3):
        train(state, 1)
        state.commit()
    expected = {key: value.clone() for key, value in state.model.state_dict().items()}
    train(state, 2)
    state.restore()
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_small_state_commits_into_ordinary_tensors() -> None:
    model = torch.nn.Linear(4, 2)
    state = ElasticState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    state.commit()
    assert state.committed.memory is None
    assert sum(p.numel() * 4 for p in model.parameters()) < MIN_BYTES


def test_where_memfd_is_refused_commits_use_private_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(name: str, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refused)
    state = large_state()
    state.commit()
    memory = state.committed.memory
    assert memory is not None and memory.fd is None
    expected = state.model.state_dict()["0.weight"].clone()
    train(state, 1)
    state.restore()
    assert torch.equal(state.model.state_dict()["0.weight"], expected)
