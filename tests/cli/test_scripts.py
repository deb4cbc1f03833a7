"""Which file a command runs, for the missing-script warning."""

from __future__ import annotations

import pytest

from tidemill.cli.scripts import script_of


@pytest.mark.parametrize(
    ("argv", "script"),
    [
        (["python", "train.py", "--epochs", "3"], "train.py"),
        (["python3.11", "-u", "-X", "dev", "src/train.py"], "src/train.py"),
        (["/usr/bin/python3", "-O", "train.py"], "train.py"),
        (["python", "-m", "pkg.train"], None),
        (["python", "-c", "print(1)"], None),
        (["python"], None),
        (["bash", "run.sh"], "run.sh"),
        (["sh", "-c", "echo hi"], None),
        (["./bin/train", "--fast"], "./bin/train"),
        (["torchrun", "--nproc-per-node", "2", "train.py"], None),
        (["sleep", "600"], None),
    ],
)
def test_the_script_of_a_command(argv: list[str], script: str | None) -> None:
    assert script_of(argv) == script
