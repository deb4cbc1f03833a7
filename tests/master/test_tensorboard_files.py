"""The job master's TensorBoard event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tidemill.master import tensorboard
from tidemill.master.tensorboard import EventFiles


def test_each_replica_is_a_run_whose_scalars_tensorboard_reads(tmp_path: Path) -> None:
    files = EventFiles(tmp_path / "tb")
    for step in range(1, 51):
        for replica in ("worker-0", "worker-1"):
            files.write(replica, step, 1000.0 + step, {"loss": 1 / step, "step_time_s": 0.02})
    files.close()

    for replica in ("worker-0", "worker-1"):
        board = EventAccumulator(str(tmp_path / "tb" / replica))
        board.Reload()
        assert sorted(board.Tags()["scalars"]) == ["loss", "step_time_s"]
        losses = board.Scalars("loss")
        assert [e.step for e in losses] == list(range(1, 51))
        assert losses[9].value == pytest.approx(0.1)
        assert losses[9].wall_time == pytest.approx(1010.0)


def test_a_folder_that_cannot_be_written_is_said_once_and_training_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "tb"
    blocker.write_text("a file where the folder should be")
    files = EventFiles(blocker)
    for step in range(3):
        files.write("worker-0", step, 1.0, {"loss": 1.0})
    files.close()

    said = capsys.readouterr().err
    assert said.count("cannot write TensorBoard event files under") == 1, said


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(tensorboard)
    assert result.attempted > 0 and result.failed == 0
