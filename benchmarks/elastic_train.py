"""The training script both sides of benchmarks/elastic.py run: same model, same step.

A small MLP on a synthetic stream: step ``s`` trains the fixed global batch drawn
from seed ``s``, split evenly across the ranks of the moment. Every process appends
JSON lines to ``--log-dir/<pid>.jsonl`` (flushed at once), which is all the
benchmark reads:

- ``{"event": "start", "t"}`` before ``import torch`` (a process's birth), and
  ``{"event": "built", "t"}`` once torch is imported and the model and optimizer are
  built (the first optimizer imports ``torch._dynamo``: 1.5-3 s on a busy CPU),
- ``{"event": "enter", "t", "world", "rank", "gen"}`` when a group is ready to train
  (process group formed, state loaded or broadcast),
- ``{"event": "step", "t", "step", "world", "rank", "gen"}`` after every completed step.

``gen`` names the group a line belongs to: the membership epoch under tidemill, the
agent's restart count under torchrun (each restart is new processes anyway).

Two modes, one step:

- ``--mode tidemill``: the elastic runtime (``ElasticState`` + ``@elastic``); state is
  committed in memory every ``--commit-every`` steps and survivors keep their process.
- ``--mode torchrun``: plain ``env://`` DDP as a torchrun script is written: rank 0
  saves step, model and optimizer to ``--checkpoint`` every ``--commit-every`` steps
  (write, then rename), and every (re)started worker group resumes from that file.

    python benchmarks/elastic_train.py --mode tidemill --log-dir /tmp/log   # alone
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

START_T = time.time()

import argparse  # noqa: E402 - after START_T: the process's birth is taken first

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

FEATURES = 256
HIDDEN = 512
CLASSES = 10


class EventLog:
    """Appends one JSON line per event to this process's file, flushed at once."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._file = (folder / f"{os.getpid()}.jsonl").open("a", buffering=1)

    def write(self, event: str, t: float | None = None, **fields: Any) -> None:
        line = {"event": event, "t": time.time() if t is None else t, "pid": os.getpid()}
        self._file.write(json.dumps({**line, **fields}) + "\n")
        self._file.flush()


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def shard(step: int, batch: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of step ``step``'s global batch (the same bytes at any world size)."""
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(batch, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (batch,), generator=generator)
    low, high = rank * batch // world, (rank + 1) * batch // world
    return x[low:high], y[low:high]


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    batch: int,
    rank: int,
    world: int,
) -> None:
    x, y = shard(step, batch, rank, world)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def run_tidemill(args: argparse.Namespace, events: EventLog) -> None:
    from tidemill.runtime import ElasticContext, ElasticState, elastic

    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    events.write("built")
    state = ElasticState(model, optimizer)

    @elastic(state)
    def train(ctx: ElasticContext) -> None:
        gen = {"world": ctx.world_size, "rank": ctx.rank, "gen": ctx.epoch}
        events.write("enter", **gen)
        for step in ctx.steps(until=args.steps):
            train_step(ctx.model, optimizer, step, args.batch, ctx.rank, ctx.world_size)
            state.step += 1
            if state.step % args.commit_every == 0:
                state.commit()
            events.write("step", step=state.step, **gen)

    train()


def run_torchrun(args: argparse.Namespace, events: EventLog) -> None:
    from torch.nn.parallel import DistributedDataParallel

    model = build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    events.write("built")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    step = 0
    checkpoint = Path(args.checkpoint)
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        step = int(saved["step"])
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    ddp = DistributedDataParallel(model)
    gen = {"world": world, "rank": rank, "gen": int(os.environ["TORCHELASTIC_RESTART_COUNT"])}
    events.write("enter", **gen)
    while step < args.steps:
        train_step(ddp, optimizer, step, args.batch, rank, world)
        step += 1
        if rank == 0 and step % args.commit_every == 0:
            saved = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
            partial = checkpoint.with_suffix(".partial")
            torch.save(saved, partial)
            os.replace(partial, checkpoint)
        events.write("step", step=step, **gen)
    dist.destroy_process_group()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("tidemill", "torchrun"), required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--steps", type=int, default=1_000_000, help="stop after this step")
    parser.add_argument("--batch", type=int, default=512, help="global batch size")
    parser.add_argument("--commit-every", type=int, default=10)
    parser.add_argument("--checkpoint", default="", help="torchrun mode: the checkpoint file")
    args = parser.parse_args(argv)
    if args.mode == "torchrun" and not args.checkpoint:
        parser.error("--mode torchrun needs --checkpoint FILE (where restarts resume from)")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    events = EventLog(Path(args.log_dir))
    events.write("start", t=START_T)
    if args.mode == "tidemill":
        run_tidemill(args, events)
    else:
        run_torchrun(args, events)


if __name__ == "__main__":
    main(sys.argv[1:])
