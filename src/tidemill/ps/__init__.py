"""Parameter servers for huge sparse embeddings: tables sharded over PS replicas.

Workers pull the rows of a batch's unique ids and push their gradients back; the
optimizer runs on the server. ``python -m tidemill.ps`` runs one replica (the ``ps``
role of a job without a ``command``). Everything but the errors is imported on first
use: the server process never imports torch, the job master never numba.

Example::

    >>> from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
    >>> config = PSConfig((TableConfig("item", 4, OptimizerConfig("sgd", lr=0.1)),))
    >>> with PSServer(config, index=0) as server, PSClient(config, [server.address]) as client:
    ...     client.pull("item", [[1, 2], [2, 3]]).shape
    (2, 2, 4)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tidemill.ps._errors import (
    PSBadIds,
    PSConfigError,
    PSCutMissing,
    PSError,
    PSProtocolError,
    PSServerError,
    PSTimeout,
    PSUnavailable,
    PSUnknownTable,
)

if TYPE_CHECKING:
    from tidemill.ps._client import PSClient
    from tidemill.ps._config import TableConfig
    from tidemill.ps._optimizers import OptimizerConfig
    from tidemill.ps._psconfig import PSConfig
    from tidemill.ps._pulls import PulledRows, PullHandle
    from tidemill.ps._routing import ShardMap
    from tidemill.ps._server import PSServer
    from tidemill.ps.embedding import PSEmbedding, PSEmbeddingBag, PSEmbeddingCollection

__all__ = [
    "OptimizerConfig",
    "PSBadIds",
    "PSClient",
    "PSConfig",
    "PSConfigError",
    "PSCutMissing",
    "PSEmbedding",
    "PSEmbeddingBag",
    "PSEmbeddingCollection",
    "PSError",
    "PSProtocolError",
    "PSServer",
    "PSServerError",
    "PSTimeout",
    "PSUnavailable",
    "PSUnknownTable",
    "PullHandle",
    "PulledRows",
    "ShardMap",
    "TableConfig",
]

_LAZY = {
    "OptimizerConfig": "tidemill.ps._optimizers",
    "PSClient": "tidemill.ps._client",
    "PSConfig": "tidemill.ps._psconfig",
    "PSEmbedding": "tidemill.ps.embedding",
    "PSEmbeddingBag": "tidemill.ps.embedding",
    "PSEmbeddingCollection": "tidemill.ps.embedding",
    "PSServer": "tidemill.ps._server",
    "PullHandle": "tidemill.ps._pulls",
    "PulledRows": "tidemill.ps._pulls",
    "ShardMap": "tidemill.ps._routing",
    "TableConfig": "tidemill.ps._config",
}
"""Imported on first use: the job master reads the wire format without the compiled
kernels (numba), and the server never imports torch."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tidemill.ps' has no attribute {name!r}")
