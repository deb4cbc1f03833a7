"""Elastic training that proves its own bookkeeping: every sample is trained exactly once.

The data is a deterministic global stream: step ``s`` trains sample ids
``[s*B, (s+1)*B)``, split across whatever ranks the group has at that step. The model
is one float64 vector ``counts`` with an entry per sample, and each rank's loss is
``-world_size * counts[its ids].sum()``: DDP averages gradients over the ranks, so the
gradient is exactly -1 for every id trained in the step and SGD with lr=1 adds exactly
+1 to it. Kill workers, add some, scale in, kill the job master: at the end every
trained id must read 1. A 2 would mean a sample trained twice (a rollback that did
not undo a step), a 0 a sample lost (a step counted that no rank trained).

Rank 0 prints one ``progress {...}`` JSON line every ``--log-every`` steps and, at the
end, a ``result {...}`` line: the committed step and the counts summary. ``--result
FILE`` (or ``$ELASTIC_RESULT``) also writes it as JSON with the pid of every rank and
the world size of every epoch; nothing is written by default, so a run leaves the
source tree as it was.

    python train.py --steps 100                 # alone
    tidemill run job.yaml                       # elastic, under tidemill
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tidemill.runtime import ElasticContext, ElasticState, elastic, report


class Counter(nn.Module):
    """``counts[id]`` is how many times sample ``id`` was trained."""

    def __init__(self, samples: int) -> None:
        super().__init__()
        self.counts = nn.Parameter(torch.zeros(samples, dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.counts[ids].sum()


def sample_ids(step: int, batch: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the global batch of ``step`` (shares differ by at most 1)."""
    start = step * batch
    return torch.arange(
        start + rank * batch // world_size, start + (rank + 1) * batch // world_size
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=60, help="global batch size")
    parser.add_argument("--commit-every", type=int, default=10)
    parser.add_argument("--step-time", type=float, default=0.0, help="seconds of fake compute")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument(
        "--fast-when", type=Path, help="skip the fake compute once this file exists (ends demos)"
    )
    parser.add_argument(
        "--result",
        type=Path,
        default=os.environ.get("ELASTIC_RESULT"),
        help="also write the result here as JSON",
    )
    return parser.parse_args()


def summary(state: ElasticState, batch: int) -> dict[str, Any]:
    trained = state.committed_step * batch
    counts = state.model.get_parameter("counts").detach()[:trained]
    untouched = state.model.get_parameter("counts").detach()[trained:]
    return {
        "committed_step": state.committed_step,
        "samples_trained": trained,
        "counts_min": float(counts.min()) if trained else None,
        "counts_max": float(counts.max()) if trained else None,
        "ids_trained_once": int((counts == 1).sum()),
        "ids_beyond_commit_nonzero": int((untouched != 0).sum()),
        "epochs": state.extras["epochs"],
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    model = Counter(args.steps * args.batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    state = ElasticState(model, optimizer, extras={"epochs": []}, data={"next_sample": 0})

    @elastic(state)
    def train(ctx: ElasticContext) -> dict[str, Any] | None:
        pids: list[Any] = [None] * ctx.world_size
        if dist.is_initialized():
            dist.all_gather_object(pids, [ctx.replica, os.getpid()])
        else:
            pids = [[ctx.replica, os.getpid()]]
        state.extras["epochs"].append(
            {
                "epoch": ctx.epoch,
                "from_step": state.step,
                "world_size": ctx.world_size,
                "pids": pids,
            }
        )
        share = len(sample_ids(0, args.batch, ctx.rank, ctx.world_size))
        for step in ctx.steps(until=args.steps, samples_per_step=share):
            ids = sample_ids(step, args.batch, ctx.rank, ctx.world_size)
            loss = -ctx.world_size * ctx.model(ids)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if args.fast_when is None or not args.fast_when.exists():
                time.sleep(args.step_time)
            state.step += 1
            state.data["next_sample"] = state.step * args.batch
            report(state.step, loss=loss.item())  # with step_time_s and samples_per_s
            if state.step % args.commit_every == 0 or state.step == args.steps:
                state.commit()
            if ctx.is_chief and state.step % args.log_every == 0:
                line = {
                    "step": state.step,
                    "world": ctx.world_size,
                    "epoch": ctx.epoch,
                    "pid": os.getpid(),
                    "t": time.time(),
                }
                print(f"progress {json.dumps(line)}", flush=True)
        return summary(state, args.batch) if ctx.is_chief else None

    result = train()
    if result is not None:
        if args.result is not None:
            args.result.write_text(json.dumps(result, indent=2))
        print(f"result {json.dumps({k: v for k, v in result.items() if k != 'epochs'})}")


if __name__ == "__main__":
    main()
