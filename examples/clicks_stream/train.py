"""Click-through logistic regression on an Iceberg backfill, then a live Kafka stream.

The job's ``spec.data`` (written by prepare.py) is the whole data pipeline: stage
``backfill`` reads the table's past days, stage ``online`` the topic. This script only
iterates ``tidemill.data.loader``; every batch is one step of the elastic loop, and
``state.commit()`` commits the reading position with the model, so a worker that is
lost (or added) costs no record and trains none twice.

Rank 0 prints a progress line every ``--log-every`` steps and, at the end, the accuracy
on the held-out day of the table (``--holdout``, a row filter), read alone with the same
loader.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import tidemill.data
from tidemill.runtime import ElasticContext, ElasticState, elastic

FEATURES = ["f0", "f1", "f2", "f3"]
LABEL = "label"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256, help="records per worker")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--commit-every", type=int, default=20, help="steps between commits")
    parser.add_argument("--log-every", type=int, default=20, help="steps between lines")
    parser.add_argument("--holdout", required=True, help='row filter, e.g. "day = 20261107"')
    return parser.parse_args()


def features_and_labels(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.stack([batch[name] for name in FEATURES], dim=1).float()
    return features, batch[LABEL].float()


class StageWatch:
    """The stage this rank reads. The loader reads one stage at a time and counts records
    per source in ``loader.insight``: the source whose count grew names the stage."""

    def __init__(self, loader: tidemill.data.Loader) -> None:
        self.loader = loader
        self.stage_of = {
            source.display_name: stage.name
            for stage in loader.spec.stages
            for source in stage.sources
        }
        self.seen: dict[str, int] = {}
        self.name = loader.spec.stages[0].name

    def update(self) -> str:
        for source, counters in self.loader.insight.snapshot().items():
            if counters.records > self.seen.get(source, 0):
                self.seen[source] = counters.records
                self.name = self.stage_of[source]
        return self.name


class Progress:
    """Rank 0's lines: stage, step, its mean loss and the job's records/s since the last."""

    def __init__(self, loader: tidemill.data.Loader, every: int) -> None:
        self.stage = StageWatch(loader)
        self.every = every
        self.loss_sum = 0.0
        self.local_rows = 0
        self.job_rows = 0
        self.since = time.monotonic()

    def add(self, step: int, loss_sum: float, local_rows: int, job_rows: int) -> None:
        self.loss_sum += loss_sum
        self.local_rows += local_rows
        self.job_rows += job_rows
        if step % self.every:
            return
        now = time.monotonic()
        loss = self.loss_sum / max(self.local_rows, 1)
        rate = self.job_rows / max(now - self.since, 1e-9)
        print(
            f"stage {self.stage.update()} step {step} loss {loss:.4f} records/s {rate:,.0f}",
            flush=True,
        )
        self.loss_sum, self.local_rows, self.job_rows, self.since = 0.0, 0, 0, now


def holdout_plan(loader: tidemill.data.Loader, row_filter: str) -> dict[str, Any]:
    """A one-stage plan reading the backfill's table with ``row_filter`` instead."""
    table = next(
        source.iceberg
        for stage in loader.spec.stages
        for source in stage.sources
        if source.iceberg is not None
    )
    source = table.model_dump(by_alias=True, exclude_none=True) | {"filter": row_filter}
    return {"stages": [{"name": "holdout", "sources": [{"iceberg": source}]}]}


@torch.no_grad()
def accuracy(model: nn.Module, plan: dict[str, Any]) -> tuple[float, int]:
    """Share of correct predictions over the plan's records (read alone, not in a group)."""
    right = rows = 0
    for batch in tidemill.data.loader(8192, [*FEATURES, LABEL], spec=plan):
        features, labels = features_and_labels(batch)
        predicted = (model(features).squeeze(1) > 0).float()
        right += int((predicted == labels).sum())
        rows += len(labels)
    return right / max(rows, 1), rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Linear(len(FEATURES), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    state = ElasticState(model, optimizer)
    batches = tidemill.data.loader(args.batch_size, [*FEATURES, LABEL], output="torch")
    progress = Progress(batches, args.log_every)

    @elastic(state)
    def train(ctx: ElasticContext) -> bool:
        for batch in batches:
            features, labels = features_and_labels(batch)
            loss_sum = F.binary_cross_entropy_with_logits(
                ctx.model(features).squeeze(1), labels, reduction="sum"
            )
            # Batches differ in size (a stage's last records, a quiet partition; some
            # ranks may get none), so a per-rank mean would weigh records unevenly.
            # Sum the loss and divide by the step's records on all ranks instead; DDP
            # averages gradients over the ranks, so multiply by world_size to undo that:
            # the update is then the mean gradient over every record of the step.
            loss = loss_sum * ctx.world_size / max(batches.step_rows, 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            state.step += 1
            if state.step % args.commit_every == 0:
                state.commit()
            if ctx.is_chief:
                progress.add(state.step, loss_sum.item(), len(labels), batches.step_rows)
        state.commit()
        return ctx.is_chief

    if train():
        share, rows = accuracy(model, holdout_plan(batches, args.holdout))
        print(f"trained {state.step} steps; held-out accuracy: {share:.4f} on {rows:,} records")


if __name__ == "__main__":
    main()
