"""A gloo group that a ``DistributedDataParallel`` still holds ends without a deadlock.

torch 2.13 deadlocks when the wrapper frees a destroyed gloo group with the GIL held
while a gloo thread, holding the group's mutex, waits for the GIL to drop its last
finished gradient all-reduce (``runtime/_group_release.py``). Without the runtime's
hold on the group, two processes cycling groups like the script below hung within
five cycles in every try.
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
