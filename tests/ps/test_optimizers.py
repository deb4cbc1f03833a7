"""Server-side optimizers against torch.optim on a dense nn.Embedding, and FTRL against the paper.

Both sides train on their own forward pass (the table from its pulls, torch with
autograd) toward the same targets, so a wrong pull, a wrong gradient sum or a wrong
update shows up as a difference in the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from tidemill.ps._config import TableConfig, init_rows
from tidemill.ps._hashing import dedupe, segment_sum
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable

VOCAB = 400
DIM = 8
STEPS = 200

TorchOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def train_both(
    optimizer: OptimizerConfig, make_torch: TorchOptimizer, batches: list[np.ndarray]
) -> tuple[ShardTable, torch.nn.Embedding]:
    """Train a table and a dense embedding on ``batches`` toward the same targets.

    Targets lie far from the start, so gradients stay large: near an optimum Adam's
    update is about lr times the sign of a vanishing gradient, which would amplify
    float rounding differences between any two implementations.
    """
    config = TableConfig("t", dim=DIM, optimizer=optimizer, init_scale=0.1, seed=11)
    table = ShardTable(config, capacity=16)
    dense = torch.nn.Embedding(VOCAB, DIM)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(init_rows(config, np.arange(VOCAB))))
    reference = make_torch([dense.weight])
    targets = np.random.default_rng(5).standard_normal((VOCAB, DIM)).astype(np.float32)
    for step, batch in enumerate(batches):
        pulled = table.pull(batch, step=step)
        grads = 2 * (pulled - targets[batch])
        unique, inverse = dedupe(batch)
        table.push(unique, segment_sum(grads, inverse, unique.size), step=step)

        reference.zero_grad()
        out = dense(torch.from_numpy(batch))
        ((out - torch.from_numpy(targets[batch])) ** 2).sum().backward()
        reference.step()
    return table, dense


def random_batches(hot: int = 0) -> list[np.ndarray]:
    """Batches with repeated ids, ids new to the table, and ``hot`` ids in every batch."""
    rng = np.random.default_rng(7)
    batches = []
    for step in range(STEPS):
        seen = min(VOCAB, 40 + 2 * step)  # new ids keep arriving
        batch = rng.integers(hot, seen, size=48)
        batches.append(np.concatenate([np.arange(hot), batch, batch[:8]]).astype(np.int64))
    return batches


def max_diff(table: ShardTable, dense: torch.nn.Embedding, ids: np.ndarray) -> float:
    """Largest weight difference over the ``ids`` that have a row in the table."""
    ids = ids[table.has_rows(ids)]
    return float(np.abs(table.peek(ids) - dense.weight.detach().numpy()[ids]).max())


@pytest.mark.parametrize(
    ("optimizer", "make_torch"),
    [
        (OptimizerConfig("sgd", lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
        (OptimizerConfig("adagrad", lr=0.05), lambda p: torch.optim.Adagrad(p, lr=0.05)),
        (
            OptimizerConfig("adagrad", lr=0.05, initial_accumulator=0.1),
            lambda p: torch.optim.Adagrad(p, lr=0.05, initial_accumulator_value=0.1),
        ),
    ],
    ids=["sgd", "adagrad", "adagrad-initial-accumulator"],
)
def test_sgd_and_adagrad_match_torch_on_every_row_over_200_steps(
    optimizer: OptimizerConfig, make_torch: TorchOptimizer
) -> None:
    batches = random_batches()
    table, dense = train_both(optimizer, make_torch, batches)
    ids = np.arange(VOCAB)
    assert table.has_rows(ids).tolist() == np.isin(ids, np.concatenate(batches)).tolist()
    assert table.rows > 0.95 * VOCAB
    moved = np.abs(table.peek(np.arange(VOCAB)) - init_rows(table.config, np.arange(VOCAB)))
    assert moved.max() > 0.05  # training did something
    assert max_diff(table, dense, np.arange(VOCAB)) <= 1e-6


@pytest.mark.parametrize(
    ("optimizer", "make_torch"),
    [
        (OptimizerConfig("adam", lr=0.002), lambda p: torch.optim.Adam(p, lr=0.002)),
        (
            OptimizerConfig("adam", lr=0.002, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
            lambda p: torch.optim.Adam(p, lr=0.002, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        ),
        (
            OptimizerConfig("sgd", lr=0.05, weight_decay=0.2),
            lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.2),
        ),
        (
            OptimizerConfig("adagrad", lr=0.05, weight_decay=0.2),
            lambda p: torch.optim.Adagrad(p, lr=0.05, weight_decay=0.2),
        ),
    ],
    ids=["adam", "adam-options-and-weight-decay", "sgd-weight-decay", "adagrad-weight-decay"],
)
def test_rows_touched_at_every_step_match_torch_for_step_counting_and_decaying_optimizers(
    optimizer: OptimizerConfig, make_torch: TorchOptimizer
) -> None:
    hot = 24
    table, dense = train_both(optimizer, make_torch, random_batches(hot=hot))
    assert table.has_rows(np.arange(hot)).all()
    assert max_diff(table, dense, np.arange(hot)) <= 1e-6
    # rows skipped at some step are not decayed by the table, so they differ from dense torch
    assert max_diff(table, dense, np.arange(hot, VOCAB)) > 1e-3


def ftrl_reference(
    weights: list[float], grads: list[list[float]], alpha: float, beta: float, l1: float, l2: float
) -> tuple[list[float], list[float], list[float]]:
    """McMahan et al. 2013, Algorithm 1, per coordinate; z, n and w stored as float32."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    w, z, n = list(weights), [0.0] * len(weights), [0.0] * len(weights)
    for g_t in grads:
        for i, g in enumerate(g_t):
            sigma = (math.sqrt(n[i] + g * g) - math.sqrt(n[i])) / alpha
            z[i] = f32(z[i] + g - sigma * w[i])
            n[i] = f32(n[i] + g * g)
            if abs(z[i]) <= l1:
                w[i] = 0.0
            else:
                sign = 1.0 if z[i] > 0 else -1.0
                w[i] = f32(-(z[i] - sign * l1) / ((beta + math.sqrt(n[i])) / alpha + l2))
    return w, z, n


def test_ftrl_follows_the_papers_per_coordinate_update_and_zeroes_weak_coordinates() -> None:
    alpha, beta, l1, l2 = 0.1, 1.0, 0.05, 0.3
    optimizer = OptimizerConfig("ftrl", lr=alpha, beta=beta, l1=l1, l2=l2)
    table = ShardTable(TableConfig("t", dim=6, optimizer=optimizer, init_scale=0.2))
    rng = np.random.default_rng(9)
    grads = rng.standard_normal((30, 6)).astype(np.float32)
    grads[:, 0] *= 0.001  # a coordinate whose |z| stays under l1
    start = table.pull([42], step=0)[0]
    for step, g in enumerate(grads):
        assert table.push([42], g[None, :], step=step) == 1
    expected_w, expected_z, expected_n = ftrl_reference(
        start.tolist(), grads.tolist(), alpha, beta, l1, l2
    )
    exported = table.export()
    assert np.abs(exported.weights[0] - expected_w).max() <= 1e-6
    assert np.abs(exported.state[0, :6] - expected_z).max() <= 1e-6
    assert np.abs(exported.state[0, 6:] - expected_n).max() <= 1e-6
    assert exported.weights[0, 0] == 0.0


def test_state_widths_are_those_the_table_stores() -> None:
    widths = {
        kind: OptimizerConfig(kind).state_width(64) for kind in ("sgd", "adagrad", "adam", "ftrl")
    }
    assert widths == {"sgd": 0, "adagrad": 64, "adam": 128, "ftrl": 128}


def test_defaults_are_torchs() -> None:
    adagrad, adam, sgd = OptimizerConfig("adagrad"), OptimizerConfig("adam"), OptimizerConfig("sgd")
    assert (adagrad.lr, adagrad.eps, adagrad.initial_accumulator) == (0.01, 1e-10, 0.0)
    assert (adam.lr, adam.eps, adam.beta1, adam.beta2) == (0.001, 1e-8, 0.9, 0.999)
    assert sgd.lr == 0.001


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "rmsprop"}, "kind: 'rmsprop' is not one of sgd, adagrad, adam, ftrl"),
        ({"kind": "sgd", "lr": -1.0}, r"lr: -1.0 is not valid; expected a finite number > 0"),
        ({"kind": "adam", "beta1": 1.0}, r"beta1: 1.0 is not valid; expected a number in \[0, 1\)"),
        ({"kind": "adam", "eps": float("nan")}, "eps: nan is not valid"),
        (
            {"kind": "ftrl", "lr_power": 0.5},
            "lr_power: 0.5 is not valid; expected a finite number <= 0",
        ),
        ({"kind": "ftrl", "weight_decay": 0.1}, "weight_decay: not used by ftrl; set l2"),
        ({"kind": "adagrad", "l1": "0.1"}, "l1: '0.1' is not valid"),
    ],
)
def test_bad_optimizer_settings_name_the_field_and_what_is_allowed(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**fields)  # type: ignore[arg-type]
