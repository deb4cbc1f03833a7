"""``tidemill.init()`` as training code uses it: alone, misconfigured, and with real peers."""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import tidemill
import tidemill.runtime
from tidemill.runtime import RuntimeConfigError, RuntimeContext, _context

Launch = Callable[..., list[Any]]

ALL_REDUCE = """
import json
import torch
import torch.distributed as dist
import tidemill

ctx = tidemill.init(timeout_s=30)
value = torch.tensor([float(ctx.rank + 1)])
dist.all_reduce(value)
print(json.dumps({
    "job": ctx.job, "role": ctx.role, "index": ctx.index, "rank": ctx.rank,
    "world_size": ctx.world_size, "is_chief": ctx.is_chief, "backend": ctx.backend,
    "device": str(ctx.device), "sum": value.item(), "group": dist.get_world_size(),
}))
ctx.shutdown()
print(json.dumps({"still_joined": dist.is_initialized()}))
"""


def test_the_public_runtime_surface_is_pinned() -> None:
    assert tidemill.runtime.__all__ == [
        "CommitChangedError",
        "ElasticContext",
        "ElasticState",
        "Left",
        "RendezvousError",
        "RuntimeConfigError",
        "RuntimeContext",
        "elastic",
        "init",
        "report",
    ]
    assert tidemill.init is tidemill.runtime.init


def test_without_launch_variables_a_script_runs_alone(clean_env: pytest.MonkeyPatch) -> None:
    ctx = tidemill.init(backend="gloo")

    assert ctx == RuntimeContext(
        job="local",
        role="worker",
        index=0,
        rank=0,
        world_size=1,
        local_rank=0,
        device=torch.device("cpu"),
        backend=None,
    )
    assert ctx.is_chief
    assert not dist.is_initialized()
    ctx.shutdown()
    ctx.shutdown()


def test_world_size_one_is_standalone_and_keeps_tidemills_names(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "TIDEMILL_JOB": "ads/ctr",
        "TIDEMILL_ROLE": "chief",
        "TIDEMILL_INDEX": "0",
    }.items():
        clean_env.setenv(name, value)

    with tidemill.init(backend="gloo") as ctx:
        assert (ctx.job, ctx.role, ctx.world_size, ctx.backend) == ("ads/ctr", "chief", 1, None)
        assert not dist.is_initialized()


INCONSISTENT = {
    "a rank beyond the world": (
        {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
        ["RANK=2 must be below WORLD_SIZE=2 (ranks run 0..1)"],
    ),
    "a port that is not a number": (
        {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"},
        ["MASTER_PORT='http' is not a TCP port number (1..65535)"],
    ),
    "a port out of range": (
        {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"},
        ["MASTER_PORT='70000' is not a TCP port number (1..65535)"],
    ),
    "a world without a rendezvous address": (
        {"RANK": "1", "WORLD_SIZE": "2"},
        [
            "MASTER_ADDR is not set but WORLD_SIZE=2; set it to rank 0's host (e.g. 127.0.0.1)",
            "MASTER_PORT is not set but WORLD_SIZE=2; set it to a free TCP port on rank 0's "
            "host (e.g. 29500)",
        ],
    ),
    "a world without a rank": (
        {"WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
        ["RANK is not set but WORLD_SIZE=4; each replica needs its own RANK in 0..3"],
    ),
    "words where numbers belong": (
        {"RANK": "one", "WORLD_SIZE": "0", "LOCAL_RANK": "-1"},
        [
            "WORLD_SIZE=0 must be at least 1",
            "RANK='one' is not a whole number",
            "LOCAL_RANK=-1 must be at least 0",
        ],
    ),
    "a rank without a world": (
        {"RANK": "1"},
        ["RANK=1 must be below WORLD_SIZE=1 (ranks run 0..0)"],
    ),
}


@pytest.mark.parametrize(("env", "problems"), INCONSISTENT.values(), ids=INCONSISTENT.keys())
def test_an_inconsistent_environment_is_refused_naming_each_variable(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], problems: list[str]
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)

    with pytest.raises(RuntimeConfigError) as caught:
        tidemill.init()

    assert str(caught.value).splitlines() == [
        "cannot join the job, the environment is inconsistent:",
        *(f"  {problem}" for problem in problems),
    ]
    assert not dist.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_nccl_without_cuda_says_to_use_gloo(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeConfigError, match="backend='gloo'"):
        tidemill.init(backend="nccl")


def test_the_docstring_examples_run(clean_env: pytest.MonkeyPatch) -> None:
    for module in (tidemill.runtime, _context):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_two_processes_rendezvous_and_all_reduce_over_gloo(launch: Launch, tmp_path: Path) -> None:
    (tmp_path / "all_reduce.py").write_text(ALL_REDUCE)

    finished = launch(["all_reduce.py"], 2, cwd=tmp_path)

    reports = []
    for replica in finished:
        assert replica.returncode == 0, replica.stderr
        joined, left = (json.loads(line) for line in replica.stdout.splitlines())
        reports.append(joined)
        assert left == {"still_joined": False}
    assert reports == [
        {
            "job": "tests/ddp",
            "role": "worker",
            "index": rank,
            "rank": rank,
            "world_size": 2,
            "is_chief": rank == 0,
            "backend": "gloo",
            "device": "cpu",
            "sum": 3.0,
            "group": 2,
        }
        for rank in (0, 1)
    ]


def test_a_missing_peer_ends_in_a_rendezvous_error_within_the_timeout(
    launch: Launch, tmp_path: Path
) -> None:
    (tmp_path / "alone.py").write_text("import tidemill\ntidemill.init(timeout_s=1)\n")

    [rank0] = launch(["alone.py"], 2, cwd=tmp_path, ranks=[0], timeout_s=30)

    assert rank0.returncode != 0
    assert "RendezvousError: rank 0 of 2 (worker 0 of job tests/ddp) could not form the gloo " in (
        rank0.stderr
    )
    assert "within 1 s" in rank0.stderr
    assert "Check that all 2 replicas started" in rank0.stderr
