"""The digits DDP example trains to >= 90% test accuracy with real worker processes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits_ddp"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) loss ([0-9.]+) accuracy ([0-9.]+)$", re.MULTILINE)
FINAL_LINE = re.compile(r"^test accuracy: ([0-9.]+)$", re.MULTILINE)

Launch = Callable[..., list[Any]]


@pytest.mark.parametrize("workers", [2, 1])
def test_digits_ddp_reaches_90_percent_and_only_rank_0_reports(
    launch: Launch, workers: int
) -> None:
    finished = launch(["train.py"], workers, cwd=EXAMPLE, timeout_s=120)

    for replica in finished:
        assert replica.returncode == 0, replica.stderr[-3000:]
    chief, *others = finished
    epochs = EPOCH_LINE.findall(chief.stdout)
    assert [int(epoch) for epoch, *_ in epochs] == list(range(1, int(epochs[0][1]) + 1))
    first_loss, last_loss = float(epochs[0][2]), float(epochs[-1][2])
    assert last_loss < first_loss / 10
    [accuracy] = FINAL_LINE.findall(chief.stdout)
    assert float(accuracy) >= 0.90, chief.stdout
    assert f"training on {workers} worker(s)" in chief.stdout
    assert all(replica.stdout == "" for replica in others)
