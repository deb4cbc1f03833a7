"""TorchRec's side of ``benchmarks/ps.py``: one embedding training step per batch, in process.

Runs in its own venv (``benchmarks/.venv-torchrec``, made by ``ps.py``) because
``fbgemm-gpu-cpu`` and ``torchrec`` pin their own torch. The table is an
``EmbeddingBagCollection`` (1 feature, sum pooling, bags of one id) turned by TorchRec's
``fuse_embedding_optimizer`` into a ``FusedEmbeddingBagCollection`` whose FBGEMM CPU
kernel applies EXACT_ADAGRAD inside backward. A step is forward over the batch's unique
ids plus backward (which updates the touched rows); rows/s = unique ids per second.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib.metadata import version

import numpy as np
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.fused_embedding_modules import fuse_embedding_optimizer


def fused_table(rows: int, dim: int, lr: float, eps: float) -> torch.nn.Module:
    """A 1-table EmbeddingBagCollection with Adagrad fused into its backward (FBGEMM)."""
    config = EmbeddingBagConfig(
        name="table", embedding_dim=dim, num_embeddings=rows, feature_names=["ids"]
    )
    plain = EmbeddingBagCollection(tables=[config], device=torch.device("meta"))
    return fuse_embedding_optimizer(
        plain,
        optimizer_type=torch.optim.Adagrad,
        optimizer_kwargs={"lr": lr, "eps": eps},
        device=torch.device("cpu"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", required=True, help=".npy file: int64 [steps, batch] ids")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batches = np.load(args.batches)
    table = fused_table(args.rows, args.dim, args.lr, args.eps)
    kernel = table._emb_modules[0]._emb_module
    grads = torch.from_numpy(
        np.random.default_rng(2).standard_normal((batches.shape[1], args.dim)).astype(np.float32)
    )
    lengths = torch.ones(batches.shape[1], dtype=torch.int32)
    inputs = [
        KeyedJaggedTensor.from_lengths_sync(
            keys=["ids"], values=torch.from_numpy(ids), lengths=lengths
        )
        for ids in batches
    ]
    probe = int(batches[0][0])
    before = table.embedding_bags["table"].weight[probe].detach().clone()
    step_s = []
    for step, features in enumerate([*inputs[: args.warmup], *inputs]):
        started = time.perf_counter()
        pooled = table(features).values()
        pooled.backward(grads)
        if step >= args.warmup:
            step_s.append(time.perf_counter() - started)
    after = table.embedding_bags["table"].weight[probe].detach()
    median = statistics.median(step_s)
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "torchrec": version("torchrec"),
                "fbgemm_gpu_cpu": version("fbgemm-gpu-cpu"),
                "module": type(table).__name__,
                "optimizer": str(kernel.optimizer),
                "threads": torch.get_num_threads(),
                "steps": len(step_s),
                "step_ms": round(median * 1e3, 3),
                "rows_per_s": round(batches.shape[1] / median),
                "rows_updated": bool((after != before).any()),
            }
        )
    )


if __name__ == "__main__":
    main()
