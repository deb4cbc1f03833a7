"""Engines by name: created on demand, imported only then, an unknown name refused with
the known ones (``tidemill server --engine``, ``tidemill run --engine``: exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tidemill.engines import UnknownEngine, create_engine, engine_names
from tidemill.engines.local import LocalEngine
from tidemill.server.runner import ServerRunner

REFUSAL = "unknown engine 'slurm'; known engines: kubernetes, local"


def test_the_local_engine_is_created_by_name_with_its_options(tmp_path: Path) -> None:
    assert engine_names() == ["kubernetes", "local"]
    engine = create_engine("local", tmp_path, warm_start=False)
    assert isinstance(engine, LocalEngine)
    assert (engine.state_dir, engine.fork_server) == (tmp_path.resolve(), None)


def test_an_unknown_engine_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownEngine, match=f"^engine: {REFUSAL}$"):
        create_engine("slurm", tmp_path)


def test_importing_the_package_imports_no_engine() -> None:
    code = "import sys, tidemill.engines; print('tidemill.engines.local' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_server_runs_the_engine_it_is_given(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path / "state", port=0, engine="local")
    try:
        assert isinstance(runner.engine, LocalEngine)
        assert runner.engine.state_dir == runner.state_dir
    finally:
        runner.stop()
    with pytest.raises(UnknownEngine, match=REFUSAL):
        ServerRunner(tmp_path / "other", port=0, engine="slurm")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("command", ["server", "run"])
def test_the_cli_refuses_an_unknown_engine_before_starting_anything(
    command: str, tmp_path: Path
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("not read: the option is checked first\n")
    state = tmp_path / "state"
    args = ["--state-dir", str(state), "--engine", "slurm"]
    if command == "run":
        args.append(str(job))
    done = subprocess.run(
        [sys.executable, "-m", "tidemill", command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert done.returncode == 2
    assert REFUSAL in done.stderr
    assert not state.exists()
