"""TorchRec's side of ``benchmarks/ps.py``: one embedding training step per batch, in process.

:func:`run_torchrec` (imported by ``ps.py``) runs this file as a script in its own venv,
``benchmarks/.venv-torchrec`` (made on first use), because ``fbgemm-gpu-cpu`` and
``torchrec`` pin their own torch; torch and torchrec are imported there only. The table is an
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
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).parent
TORCHREC_SCRIPT = Path(__file__)
TORCHREC_VENV = HERE / ".venv-torchrec"
# fbgemm_gpu 1.8's own compat table (fbgemm_gpu/__init__.py) pairs it with torch 2.13;
# torchrec declares "fbgemm-gpu" (the CUDA build), hence --no-deps and its runtime imports.
TORCHREC_DEPS = (
    "torch==2.13.0",
    "fbgemm-gpu-cpu==1.8.0",
    "tensordict==0.15.3",
    "torchmetrics==1.0.3",
    "pyre-extensions==0.0.32",
    "tqdm",
)
TORCHREC_NO_DEPS = ("torchrec==1.8.0",)


def torchrec_python() -> Path:
    """The TorchRec venv's python, creating the venv (pip from PyPI) when it is missing."""
    python = TORCHREC_VENV / "bin" / "python"
    ready = TORCHREC_VENV / "tidemill-ready"
    wanted = " ".join(TORCHREC_DEPS + TORCHREC_NO_DEPS)
    if ready.exists() and ready.read_text() == wanted:
        return python
    print(f"making {TORCHREC_VENV} ({wanted}) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(TORCHREC_VENV)],
        [str(python), "-m", "pip", "install", "-q", *TORCHREC_DEPS],
        [str(python), "-m", "pip", "install", "-q", "--no-deps", *TORCHREC_NO_DEPS],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}: {tail(done)}")
    ready.write_text(wanted)
    return python


def tail(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return " | ".join(lines[-3:])


def run_torchrec(
    batches: npt.NDArray[np.int64], rows: int, dim: int, threads: int, adagrad: tuple[float, float]
) -> dict[str, Any]:
    """ps_torchrec.py in the TorchRec venv; its JSON, or ``{"error": why}``."""
    try:
        python = torchrec_python()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"TorchRec venv could not be made: {exc}"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "batches.npy"
        np.save(path, batches)
        argv = [str(python), str(TORCHREC_SCRIPT), "--batches", str(path)]
        argv += ["--rows", str(rows), "--dim", str(dim)]
        argv += ["--lr", str(adagrad[0]), "--eps", str(adagrad[1])]
        argv += ["--threads", str(threads)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"error": f"ps_torchrec.py exited {done.returncode}: {tail(done)}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def fused_table(rows: int, dim: int, lr: float, eps: float) -> Any:
    """A 1-table EmbeddingBagCollection with Adagrad fused into its backward (FBGEMM)."""
    import torch
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig  # type: ignore[import-not-found]
    from torchrec.modules.fused_embedding_modules import fuse_embedding_optimizer  # type: ignore[import-not-found]

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
    """The step loop, inside the TorchRec venv; prints one JSON object."""
    import torch
    from torchrec import KeyedJaggedTensor

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
