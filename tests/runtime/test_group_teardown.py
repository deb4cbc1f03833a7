"""A gloo group ends without a deadlock, and a process with one exits without an abort.

torch 2.13 deadlocks when the wrapper frees a destroyed gloo group with the GIL held
while a gloo thread, holding the group's mutex, waits for the GIL to drop its last
finished gradient all-reduce (``runtime/_group_release.py``). Without the runtime's
hold on the group, two processes cycling groups like the script below hung within
five cycles in every try. The same gloo thread, still waiting for the GIL when the
interpreter finalizes, aborts the process ("terminate called without an active
exception"): without the runtime's hand-off at exit, every rank of the second script
below aborted.
"""

from __future__ import annotations

from pathlib import Path

from tests.runtime.conftest import Launch, free_port

CYCLES = 20

CYCLE_GROUPS = """
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

import tidemill

for port in sys.argv[1:]:
    os.environ["MASTER_PORT"] = port  # a fresh store each cycle: no stale keys
    ctx = tidemill.init(backend="gloo", timeout_s=30)
    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(8)])
    net = DistributedDataParallel(model, bucket_cap_mb=0.01)  # an all-reduce per layer
    for _ in range(3):
        net(torch.randn(8, 64)).sum().backward()
    ctx.shutdown()
    del net  # the wrapper goes last, as at the end of a training script
print("cycled", len(sys.argv) - 1, flush=True)
"""


def test_ddp_freed_after_shutdown_never_deadlocks_the_gloo_teardown(
    launch: Launch, tmp_path: Path
) -> None:
    (tmp_path / "cycle_groups.py").write_text(CYCLE_GROUPS)
    ports = sorted({free_port() for _ in range(CYCLES)})

    finished = launch(["cycle_groups.py", *map(str, ports)], 2, cwd=tmp_path, timeout_s=90)

    for replica in finished:
        assert replica.returncode == 0, replica.stderr[-3000:]
        assert replica.stdout.strip() == f"cycled {len(ports)}"


EXIT_RIGHT_AFTER_A_COLLECTIVE = """
import contextvars
import sys

import torch
import torch.distributed as dist

import tidemill

ctx = tidemill.init(backend="gloo", timeout_s=30)
# Pin the race that aborted examples/digits_ddp in 3 of 10 runs: the last gradient
# all-reduce finishes just before exit, and its gloo thread still waits for the GIL.
sys.setswitchinterval(30)  # this thread keeps the GIL while it runs Python
torch._C._stash_obj_in_tls("context", contextvars.copy_context())  # as backward() does
future = dist.all_reduce(torch.ones(2), async_op=True).get_future()
torch._C._remove_obj_from_tls("context")
while not future.done():  # no print here either: its write would yield the GIL
    pass
"""


def test_a_gloo_thread_still_freeing_a_collective_at_exit_does_not_abort_the_process(
    launch: Launch, tmp_path: Path
) -> None:
    (tmp_path / "exit_after_collective.py").write_text(EXIT_RIGHT_AFTER_A_COLLECTIVE)

    finished = launch(["exit_after_collective.py"], 2, cwd=tmp_path, timeout_s=60)

    for replica in finished:
        assert replica.returncode == 0, replica.stderr[-3000:]
