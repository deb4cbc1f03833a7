"""How a committed state is laid out inside a DCP checkpoint, and how it is put back.

Every tensor is a top-level DCP entry: ``model.<key>`` for the model (the names
``dcp.load({"model": model.state_dict()})`` expects, so other DCP tools can read the
model), ``optimizer.<path>`` for optimizer state (``optimizer.state.0.exp_avg``).
Everything else is pickled into a few byte entries: step, world size, data, extras,
and the optimizer's structure with its tensors replaced by their entry names. DCP's
own nesting would turn integer keys into strings and drop empty dicts; the pickled
structure gives back exactly what ``optimizer.state_dict()`` returned.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from tidemill.runtime.elastic_state import Committed

MODEL = "model."
OPTIMIZER = "optimizer."
STEP = "tidemill.step"
WORLD_SIZE = "tidemill.world_size"
DATA = "tidemill.data"
EXTRAS = "tidemill.extras"
OPTIMIZER_LAYOUT = "tidemill.optimizer"
_TENSOR = "tidemill.tensor"
"""Tag of a ``(_TENSOR, entry)`` pair standing for a tensor in the pickled structure."""


def to_entries(committed: Committed) -> dict[str, Any]:
    """The flat dict handed to DCP for ``committed``."""
    entries: dict[str, Any] = {MODEL + key: value for key, value in committed.model.items()}
    entries[STEP] = committed.step
    entries[WORLD_SIZE] = committed.world_size
    entries[DATA] = pickle.dumps(committed.data)
    entries[EXTRAS] = pickle.dumps(committed.extras)
    if committed.optimizer is not None:
        layout = _lift(committed.optimizer, OPTIMIZER.rstrip("."), entries)
        entries[OPTIMIZER_LAYOUT] = pickle.dumps(layout)
    return entries


def from_entries(entries: dict[str, Any], model_keys: list[str]) -> Committed:
    """Rebuild the committed state from what DCP loaded; model keys in ``model_keys`` order."""
    layout = entries.get(OPTIMIZER_LAYOUT)
    return Committed(
        step=int(entries[STEP]),
        world_size=int(entries[WORLD_SIZE]),
        extras=pickle.loads(entries[EXTRAS]),
        data=pickle.loads(entries[DATA]),
        model={key: entries[MODEL + key] for key in model_keys},
        optimizer=None if layout is None else _lower(pickle.loads(layout), entries),
    )


def model_entries(entries: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model tensors among loaded entries, under their model keys."""
    return {
        name[len(MODEL) :]: value
        for name, value in entries.items()
        if name.startswith(MODEL) and isinstance(value, torch.Tensor)
    }


def _lift(value: Any, path: str, entries: dict[str, Any]) -> Any:
    """``value`` with each tensor moved into ``entries`` and replaced by its entry name."""
    if isinstance(value, torch.Tensor):
        name = path
        while name in entries:
            name += "_"
        entries[name] = value
        return (_TENSOR, name)
    if isinstance(value, dict):
        return {key: _lift(item, f"{path}.{key}", entries) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_lift(item, f"{path}.{i}", entries) for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    return value


def _lower(value: Any, entries: dict[str, Any]) -> Any:
    if _is_reference(value):
        return entries[value[1]]
    if isinstance(value, dict):
        return {key: _lower(item, entries) for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_lower(item, entries) for item in value]
        return items if isinstance(value, list) else tuple(items)
    return value


def _is_reference(value: Any) -> bool:
    """A ``(_TENSOR, entry)`` pair; the str check keeps ``==`` away from array-likes."""
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0] == _TENSOR
    )
