"""Does a checkpoint fit the model and optimizer it is about to be loaded into?

Decided from the manifest alone, before any tensor is read: a wrong ``--resume-from``
or a changed model fails in milliseconds with every difference listed, not after
gigabytes were read, and never by falling back to an older checkpoint.
"""

from __future__ import annotations

import torch

from tidemill.checkpoint._errors import CheckpointMismatch
from tidemill.checkpoint._manifest import Manifest, TensorInfo


def tensor_info(tensor: torch.Tensor) -> TensorInfo:
    return TensorInfo(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


def check_model(url: str, manifest: Manifest, model: torch.nn.Module) -> None:
    """CheckpointMismatch naming missing, unexpected and differing keys, if any."""
    ours = {key: tensor_info(value) for key, value in model.state_dict().items()}
    theirs = manifest.model
    missing = [key for key in ours if key not in theirs]
    unexpected = [key for key in theirs if key not in ours]
    different = [
        f"{key}: checkpoint {_shown(theirs[key])}, model {_shown(ours[key])}"
        for key in ours
        if key in theirs and ours[key] != theirs[key]
    ]
    if missing or unexpected or different:
        raise CheckpointMismatch(
            url, "model", missing=missing, unexpected=unexpected, different=different
        )


def check_optimizer(url: str, manifest: Manifest, optimizer: torch.optim.Optimizer | None) -> None:
    """CheckpointMismatch when the parameter groups differ in number or size.

    No optimizer, or no optimizer state in the checkpoint, fits: the first keeps
    training without one, the second starts the optimizer fresh.
    """
    if optimizer is None or manifest.optimizer_groups is None:
        return
    stored = manifest.optimizer_groups
    ours = group_sizes(optimizer)
    if len(stored) != len(ours):
        different = [f"parameter groups: checkpoint {len(stored)}, optimizer {len(ours)}"]
    else:
        different = [
            f"parameter group {i}: checkpoint {theirs} parameters, optimizer {mine}"
            for i, (theirs, mine) in enumerate(zip(stored, ours, strict=True))
            if theirs != mine
        ]
    if different:
        raise CheckpointMismatch(url, "optimizer", different=different)


def group_sizes(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    return tuple(len(group["params"]) for group in optimizer.param_groups)


def _shown(info: TensorInfo) -> str:
    return f"{list(info.shape)} {info.dtype}"
