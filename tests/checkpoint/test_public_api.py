"""The public surface of ``tidemill.checkpoint`` is pinned, documented and cheap to import."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

import tidemill.checkpoint


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(tidemill.checkpoint.__all__) == [
        "CheckpointError",
        "CheckpointMismatch",
        "CheckpointStore",
        "CheckpointWriter",
        "Listing",
        "Loaded",
        "Manifest",
        "Skipped",
        "list_checkpoints",
        "parse_checkpoint_url",
        "resumable_problem",
        "single_checkpoint",
        "writable_problem",
    ]
    for name in tidemill.checkpoint.__all__:
        assert getattr(tidemill.checkpoint, name).__module__.startswith("tidemill.checkpoint._")


def test_the_url_checks_and_errors_import_without_torch() -> None:
    code = (
        "import sys\n"
        "from tidemill.checkpoint import CheckpointError, parse_checkpoint_url, writable_problem\n"
        "from tidemill.checkpoint import list_checkpoints, resumable_problem\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["", "._url", "._store", "._writer"])
def test_the_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module("tidemill.checkpoint" + module))
    assert result.attempted > 0 and result.failed == 0
