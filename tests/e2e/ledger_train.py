"""A worker whose model is its own ledger: ``counts[id]`` is how often record ``id`` trained.

Each rank's loss is ``-world_size * counts[ids of its batch].sum()``; DDP averages
gradients over ranks, so SGD with lr=1 adds exactly +1 to the count of every record a
step trained, and a rollback takes it back with the rest of the model. At the end,
rank 0 writes the counts and the world size of every epoch to ``LEDGER_RESULT``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

import tidemill.data
from tidemill.runtime import ElasticContext, ElasticState, elastic


class Counter(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.counts = nn.Parameter(torch.zeros(size, dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.counts[ids].sum()


model = Counter(int(os.environ["LEDGER_SIZE"]))
if ballast_mb := int(os.environ.get("LEDGER_BALLAST_MB", "0")):
    # State that only travels: checkpoints of 16 MiB and more go through the writer process.
    model.register_buffer("ballast", torch.arange(ballast_mb << 18, dtype=torch.float32))
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
state = ElasticState(model, optimizer, extras={"epochs": []})
batches = tidemill.data.loader(int(os.environ.get("LEDGER_BATCH", "64")), ["id"])
step_s = float(os.environ.get("LEDGER_STEP_S", "0.01"))
trace = os.environ.get("LEDGER_TRACE")
"""A folder: each replica appends the ids of every batch it trained (a debugging aid that
also shows which records a cross-worker exchange brought)."""
marks = os.environ.get("LEDGER_MARKS")
"""A folder: rank 0 touches ``committed-world-N`` after each commit in a group of N, so a
test knows a group of N trained and kept it (a commit is never rolled back)."""


@elastic(state)
def train(ctx: ElasticContext) -> int:
    state.extras["epochs"].append({"world_size": ctx.world_size, "members": list(ctx.members)})
    for batch in batches:
        loss = -ctx.world_size * ctx.model(batch["id"].long())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step += 1
        if trace:
            replica = f"{os.environ.get('TIDEMILL_ROLE')}-{os.environ.get('TIDEMILL_INDEX')}"
            with open(Path(trace) / f"{replica}.jsonl", "a") as out:
                out.write(json.dumps({"step": state.step, "ids": batch["id"].tolist()}) + "\n")
        if state.step % 4 == 0:
            state.commit()
            if marks and ctx.rank == 0:
                (Path(marks) / f"committed-world-{ctx.world_size}").touch()
        time.sleep(step_s)
    state.commit()
    return ctx.rank


if train() == 0:
    counts = model.counts.detach()
    Path(os.environ["LEDGER_RESULT"]).write_text(
        json.dumps(
            {
                "counts": [int(c) for c in counts.tolist()],
                "steps": state.step,
                "epochs": state.extras["epochs"],
            }
        )
    )
