"""A DLRM-style click-through model: sparse embeddings on the parameter servers, a dense
tower under DDP, trained on a Parquet backfill then a Kafka stream.

The four sparse features (user, item, category, and the bag of tags) are rows of the
job's PS tables, pulled for each batch's ids in one round trip per PS replica; their
gradients go back to the servers, which apply Adagrad. The dense part (a bottom MLP
over the dense features, the pairwise dot products of all five vectors, a top MLP) is
an ordinary torch model that the elastic runtime wraps in DDP.

The job's ``spec.data`` is the data pipeline; this script iterates
``tidemill.data.loader``. ``state.commit()`` commits the reading position, the dense
model and (through ``JobPS``) a cut of the tables together, so a lost worker costs no
click and trains none twice. At the end rank 0 prints the AUC on ``DATA/holdout.parquet``
and writes ``DATA/result.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

import tidemill.data
from tidemill.ps import PSClient, PSEmbeddingCollection
from tidemill.ps.elastic import JobPS
from tidemill.runtime import ElasticContext, ElasticState, elastic

SPARSE = {"user": "user", "item": "item", "category": "category", "tags": "tag"}
"""Feature -> the PS table holding its rows."""
TAG_COLUMNS = ["tag_0", "tag_1", "tag_2", "tag_3"]
DENSE_COLUMNS = ["dense_0", "dense_1", "dense_2", "dense_3"]
COLUMNS = ["user", "item", "category", *TAG_COLUMNS, *DENSE_COLUMNS, "label"]
NO_TAG = -1
"""Fills the tag columns past a click's bag (one to four tags)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepare.py's folder")
    parser.add_argument("--batch-size", type=int, default=256, help="clicks per worker")
    parser.add_argument("--lr", type=float, default=3e-3, help="of the dense tower (Adam)")
    parser.add_argument("--commit-every", type=int, default=10, help="steps between commits")
    parser.add_argument("--log-every", type=int, default=25, help="steps between lines")
    return parser.parse_args()


class DenseTower(nn.Module):
    """DLRM's dense part: bottom MLP, pairwise dots with the embeddings, top MLP."""

    def __init__(self, dense_features: int, dim: int, sparse_features: int) -> None:
        super().__init__()
        self.bottom = nn.Sequential(
            nn.Linear(dense_features, 16), nn.ReLU(), nn.Linear(16, dim), nn.ReLU()
        )
        vectors = sparse_features + 1
        pairs = vectors * (vectors - 1) // 2
        self.top = nn.Sequential(nn.Linear(dim + pairs, 32), nn.ReLU(), nn.Linear(32, 1))
        self.pairs = torch.triu_indices(vectors, vectors, offset=1)

    def forward(self, dense: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        bottom = self.bottom(dense)
        vectors = torch.stack([bottom, *embedded], dim=1)
        dots = vectors @ vectors.transpose(1, 2)
        interactions = dots[:, self.pairs[0], self.pairs[1]]
        logits: torch.Tensor = self.top(torch.cat([bottom, interactions], dim=1))
        return logits.squeeze(1)


def bags(columns: list[torch.Tensor]) -> torch.Tensor:
    """One bag per row: the id columns side by side, padded with ``NO_TAG``."""
    return torch.stack(columns, dim=1)


def inputs(
    batch: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sparse inputs as bags (a single id is a bag of one) and the dense matrix."""
    sparse = {name: bags([batch[name]]) for name in ("user", "item", "category")}
    sparse["tags"] = bags([batch[name] for name in TAG_COLUMNS])
    dense = torch.stack([batch[name] for name in DENSE_COLUMNS], dim=1).float()
    return sparse, dense


def logits(
    tower: nn.Module, sparse: PSEmbeddingCollection, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    ids, dense = inputs(batch)
    embedded = sparse(ids)
    out: torch.Tensor = tower(dense, [embedded[name] for name in SPARSE])
    return out


@torch.no_grad()
def holdout_auc(tower: nn.Module, sparse: PSEmbeddingCollection, path: Path) -> tuple[float, int]:
    """AUC over the held-out clicks (rank 0 alone: pulls only, nothing is pushed)."""
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for record_batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=COLUMNS):
        batch = columns_as_tensors(record_batch)
        scores.append(logits(tower, sparse, batch).numpy())
        labels.append(batch["label"].numpy())
    label = np.concatenate(labels)
    return float(roc_auc_score(label, np.concatenate(scores))), len(label)


def columns_as_tensors(record_batch: pa.RecordBatch) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(record_batch.column(name).to_numpy())
        for name in record_batch.schema.names
    }


def table_rows(client: PSClient) -> str:
    """Rows per table, summed over the PS replicas, with each replica's share."""
    shards = client.stats()
    parts = []
    for table in SPARSE.values():
        counts = [shard["tables"][table]["rows"] for shard in shards]
        parts.append(f"{table} {sum(counts):,} ({' + '.join(f'{c:,}' for c in counts)})")
    return ", ".join(parts)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tower = DenseTower(len(DENSE_COLUMNS), dim=8, sparse_features=len(SPARSE))
    optimizer = torch.optim.Adam(tower.parameters(), lr=args.lr)
    state = ElasticState(tower, optimizer)
    batches = tidemill.data.loader(args.batch_size, COLUMNS, output="torch")
    ps = JobPS()
    result: dict[str, object] = {}

    @elastic(state)
    def train(ctx: ElasticContext) -> None:
        client = ps.join(ctx)
        sparse = PSEmbeddingCollection(client, SPARSE, mode="mean", padding_id=NO_TAG)
        since, loss_total, rows_total, job_rows = time.monotonic(), 0.0, 0, 0
        for batch in batches:
            loss_sum = F.binary_cross_entropy_with_logits(
                logits(ctx.model, sparse, batch), batch["label"].float(), reduction="sum"
            )
            # Ranks' batches differ in size (a stage's end, a quiet partition), so divide
            # the summed loss by the step's records on all ranks; DDP averages the dense
            # gradients over ranks and the sparse ones are scaled by 1 / world before the
            # servers sum them, so multiply by world: each update is the step's mean.
            loss = loss_sum * ctx.world_size / max(batches.step_rows, 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            client.advance()
            state.step += 1
            if state.step % args.commit_every == 0:
                state.commit()
            loss_total += loss_sum.item()
            rows_total += len(batch["label"])
            job_rows += batches.step_rows
            if ctx.is_chief and state.step % args.log_every == 0:
                rate = job_rows / (time.monotonic() - since)
                print(
                    f"stage {batches.stage} step {state.step} loss "
                    f"{loss_total / max(rows_total, 1):.4f} clicks/s {rate:,.0f}",
                    flush=True,
                )
                since, loss_total, rows_total, job_rows = time.monotonic(), 0.0, 0, 0
        state.commit()
        if ctx.is_chief:
            print(f"PS table rows: {table_rows(client)}", flush=True)
            auc, rows = holdout_auc(tower, sparse, args.data / "holdout.parquet")
            result.update(steps=state.step, holdout_auc=auc, holdout_rows=rows)

    train()
    ps.close()
    if result:
        print(
            f"trained {result['steps']} steps; held-out AUC: {result['holdout_auc']:.4f} "
            f"on {result['holdout_rows']:,} clicks",
            flush=True,
        )
        (args.data / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
