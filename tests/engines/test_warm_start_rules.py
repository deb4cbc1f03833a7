"""Which replicas may be forked warm: pure rules, no processes."""

from __future__ import annotations

import sys

import pytest

from tidemill.engines.warm_start import (
    ForkRequest,
    PythonEntry,
    python_entry,
    startup_conflict,
    warm_start_enabled,
)

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "entry"),
    [
        ((PY, "train.py", "--lr", "1"), PythonEntry("script", "train.py", ("--lr", "1"))),
        ((PY, "sub/train"), PythonEntry("script", "sub/train", ())),
        ((PY, "-m", "pkg.mod", "-v"), PythonEntry("module", "pkg.mod", ("-v",))),
        ((PY, "-mpkg.mod", "-v"), PythonEntry("module", "pkg.mod", ("-v",))),
        ((PY, "-c", "print(1)"), None),
        ((PY, "-u", "train.py"), None),
        ((PY, "-I", "-m", "pkg"), None),
        ((PY, "-", "x"), None),
        ((PY, "-m"), None),
        ((PY,), None),
        (("/usr/bin/python3.9", "train.py"), None),
        (("sh", "-c", "python train.py"), None),
    ],
    ids=[
        "a script with arguments",
        "a script without .py",
        "a module",
        "a module glued to -m",
        "-c code starts cold",
        "an interpreter option starts cold",
        "isolated mode starts cold",
        "a script from stdin starts cold",
        "-m without a module starts cold",
        "an interactive interpreter starts cold",
        "another interpreter starts cold",
        "a shell starts cold",
    ],
)
def test_python_entry(argv: tuple[str, ...], entry: PythonEntry | None) -> None:
    assert python_entry(argv) == entry


def test_sys_argv_is_what_the_interpreter_sets_before_running() -> None:
    assert PythonEntry("script", "t.py", ("a",)).sys_argv() == ["t.py", "a"]
    assert PythonEntry("module", "pkg", ("a",)).sys_argv() == ["-m", "a"]


@pytest.mark.parametrize(
    ("env", "server_env", "conflict"),
    [
        ({"PATH": "/a", "RANK": "3", "CUDA_VISIBLE_DEVICES": "1"}, {"PATH": "/b"}, None),
        ({"OMP_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "4"}, None),
        ({"OMP_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "8"},
         "OMP_NUM_THREADS is '4' for this replica but '8' in the fork server"),
        ({"MKL_NUM_THREADS": "2"}, {},
         "MKL_NUM_THREADS is '2' for this replica but unset in the fork server"),
        ({}, {"PYTHONHASHSEED": "0"},
         "PYTHONHASHSEED is unset for this replica but '0' in the fork server"),
        ({"PYTHONPATH": "/abs/src:/abs/lib"}, {"PYTHONPATH": "/abs/src:/abs/lib"}, None),
        ({"PYTHONPATH": "src:/abs"}, {"PYTHONPATH": "src:/abs"},
         "PYTHONPATH has relative entries ['src']"),
    ],
    ids=[
        "variables read later may differ",
        "same thread counts",
        "another OMP_NUM_THREADS",
        "a thread count the server lacks",
        "a hash seed only the server has",
        "same absolute PYTHONPATH",
        "relative PYTHONPATH",
    ],
)  # fmt: skip
def test_startup_conflict(
    env: dict[str, str], server_env: dict[str, str], conflict: str | None
) -> None:
    found = startup_conflict(env, server_env)
    if conflict is None:
        assert found is None
    else:
        assert found is not None and found.startswith(conflict)


@pytest.mark.parametrize(
    ("requested", "setting", "enabled"),
    [
        (True, None, True),
        (True, "1", True),
        (True, "0", False),
        (True, " OFF ", False),
        (True, "false", False),
        (False, "1", False),
    ],
)
def test_warm_start_switch(requested: bool, setting: str | None, enabled: bool) -> None:
    environ = {} if setting is None else {"TIDEMILL_WARM_START": setting}
    assert warm_start_enabled(requested, environ) is enabled


def test_a_fork_request_survives_its_json_round_trip() -> None:
    request = ForkRequest(
        argv=(PY, "-m", "pkg", "a"),
        entry=PythonEntry("module", "pkg", ("a",)),
        working_dir="/w",
        env={"A": "1"},
        uid="u" * 32,
        supervisor_file="/r/x.sup",
        pid_file="/r/x.pid",
        exit_file="/r/x.exit",
        log_file="/l/x.log",
    )
    assert ForkRequest.from_json(request.to_json()) == request
