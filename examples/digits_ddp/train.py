"""Handwritten digits with PyTorch DDP: the smallest real distributed training job.

Runs alone (``python train.py``), under tidemill (``tidemill run job.yaml``), or by hand
with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set for each process. The data is
scikit-learn's bundled digits set (1,797 8x8 images), so nothing is downloaded.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import tidemill

EPOCHS = 30
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
SEED = 0


def load_data() -> tuple[TensorDataset, TensorDataset]:
    """The same seeded split on every rank; the scaler sees only training data."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    scaler = StandardScaler().fit(x_train)

    def dataset(x: object, y: object) -> TensorDataset:
        return TensorDataset(
            torch.tensor(scaler.transform(x), dtype=torch.float32),
            torch.tensor(y, dtype=torch.long),
        )

    return dataset(x_train, y_train), dataset(x_test, y_test)


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, device: torch.device) -> float:
    features, labels = (t.to(device) for t in data.tensors)
    predictions = model(features).argmax(dim=1)
    return float((predictions == labels).float().mean().item())


def main() -> None:
    if "OMP_NUM_THREADS" not in os.environ:
        # A tiny MLP gains nothing from intra-op threads; one per replica keeps the
        # replicas from fighting over the machine's cores.
        torch.set_num_threads(1)
    torch.manual_seed(SEED)
    ctx = tidemill.init()
    train_data, test_data = load_data()
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        train_data, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=SEED
    )
    loader = DataLoader(train_data, batch_size=BATCH_SIZE, sampler=sampler)
    model = build_model().to(ctx.device)
    net: nn.Module = model
    if ctx.backend is not None:
        device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    if ctx.is_chief:
        print(
            f"training on {ctx.world_size} worker(s), {len(train_data)} train / "
            f"{len(test_data)} test samples, device {ctx.device}",
            flush=True,
        )
    for epoch in range(1, EPOCHS + 1):
        sampler.set_epoch(epoch)
        net.train()
        totals = torch.zeros(2, device=ctx.device)
        for features, labels in loader:
            features, labels = features.to(ctx.device), labels.to(ctx.device)
            optimizer.zero_grad()
            loss = loss_fn(net(features), labels)
            loss.backward()
            optimizer.step()
            totals[0] += loss.detach() * len(labels)
            totals[1] += len(labels)
        if ctx.backend is not None:
            dist.all_reduce(totals)
        if ctx.is_chief:
            net.eval()
            print(
                f"epoch {epoch}/{EPOCHS} loss {(totals[0] / totals[1]).item():.4f} "
                f"accuracy {accuracy(model, test_data, ctx.device):.3f}",
                flush=True,
            )
    if ctx.is_chief:
        print(f"test accuracy: {accuracy(model, test_data, ctx.device):.3f}", flush=True)
    ctx.shutdown()


if __name__ == "__main__":
    main()
