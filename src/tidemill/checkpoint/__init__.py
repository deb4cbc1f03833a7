"""Durable checkpoints: committed elastic state saved with PyTorch DCP to a path or fsspec URL.

Rank 0 hands each due ``Committed`` (see ``ElasticState.commit``) to a
:class:`CheckpointWriter`, whose thread saves it through a :class:`CheckpointStore`
while training goes on. After the whole job is lost, the first epoch calls
:meth:`CheckpointStore.load_newest` and adopts what it returns::

    >>> import tempfile, torch
    >>> folder = tempfile.TemporaryDirectory()
    >>> from tidemill.checkpoint import CheckpointStore, CheckpointWriter
    >>> from tidemill.runtime import ElasticState
    >>> model = torch.nn.Linear(2, 1)
    >>> state = ElasticState(model, torch.optim.Adam(model.parameters()))
    >>> store = CheckpointStore(folder.name)
    >>> writer = CheckpointWriter(
    ...     store, "demo", on_saved=lambda m: print("saved step", m.step), on_failed=print)
    >>> state.step = 1
    >>> state.commit()
    >>> writer.submit(state.committed)  # returns at once
    >>> writer.close(timeout_s=60)
    saved step 1
    True
    >>> state.adopt(store.load_newest(model, state.optimizer).committed)
    >>> folder.cleanup()

The URL helpers and error types import without torch, for submit-time checks; the store
and the writer load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidemill.checkpoint._errors import CheckpointError, CheckpointMismatch
from tidemill.checkpoint._listing import Listing
from tidemill.checkpoint._manifest import Manifest
from tidemill.checkpoint._sources import list_checkpoints, resumable_problem, single_checkpoint
from tidemill.checkpoint._url import parse_checkpoint_url, writable_problem

if TYPE_CHECKING:
    from tidemill.checkpoint._load import Loaded, Skipped
    from tidemill.checkpoint._store import CheckpointStore
    from tidemill.checkpoint._writer import CheckpointWriter

__all__ = [
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointStore",
    "CheckpointWriter",
    "Listing",
    "Loaded",
    "Manifest",
    "Skipped",
    "list_checkpoints",
    "parse_checkpoint_url",
    "resumable_problem",
    "single_checkpoint",
    "writable_problem",
]

_LAZY = {
    "CheckpointStore": "tidemill.checkpoint._store",
    "CheckpointWriter": "tidemill.checkpoint._writer",
    "Loaded": "tidemill.checkpoint._load",
    "Skipped": "tidemill.checkpoint._load",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tidemill.checkpoint' has no attribute {name!r}")
