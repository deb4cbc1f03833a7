"""Small real models trained a few steps, states to compare, and places to store checkpoints."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch

from tidemill.runtime import ElasticState

Build = Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]]


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def sgd_momentum() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def adam() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = mlp()
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def train(state: ElasticState, steps: int, seed: int = 0) -> ElasticState:
    """``steps`` optimizer steps on fixed random batches, then a commit."""
    generator = torch.Generator().manual_seed(seed)
    assert state.optimizer is not None
    for _ in range(steps):
        inputs = torch.randn(16, 4, generator=generator)
        state.optimizer.zero_grad()
        state.model(inputs).pow(2).mean().backward()
        state.optimizer.step()
        state.step += 1
        state.data["offset"] = state.step * 16
    state.commit()
    return state


def trained(build: Build, steps: int = 3, **extras: Any) -> ElasticState:
    torch.manual_seed(steps)
    model, optimizer = build()
    return train(ElasticState(model, optimizer, extras=extras, data={"offset": 0}), steps)


def assert_same(expected: Any, actual: Any, where: str = "state") -> None:
    """Equal bit for bit, tensors included; dict keys must match in type too (0 is not '0')."""
    assert type(expected) is type(actual), f"{where}: {type(expected)} vs {type(actual)}"
    if isinstance(expected, torch.Tensor):
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, where
        assert torch.equal(expected, actual), f"{where}: values differ"
    elif isinstance(expected, dict):
        assert list(expected) == list(actual), f"{where}: keys {list(expected)} vs {list(actual)}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), where
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: {expected!r} vs {actual!r}"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return str(tmp_path / "ckpt")


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A fresh ``memory://`` location (the in-memory filesystem is shared by the process)."""
    url = f"memory://checkpoint-tests/{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url.removeprefix("memory:/")
    if fs.exists(path):
        fs.rm(path, recursive=True)


@pytest.fixture(params=["read", "mapped"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Restores read local files into memory, or map them (as files of 4 MiB and more are)."""
    if request.param == "mapped":
        monkeypatch.setattr("tidemill.checkpoint._files.MAP_MIN_BYTES", 0)
    return str(request.param)
