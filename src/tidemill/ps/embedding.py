"""torch front end: embedding modules whose rows live on the parameter servers.

Forward pulls the rows of the batch's unique ids (one round trip per shard, however
many features and tables); torch's embedding backward segment-sums the gradient per
unique id, and a custom autograd function pushes those sums back. The dense layers
train with DDP as usual (a Persia-style hybrid): these modules hold no parameters.

**Gradient scale.** DDP averages the dense gradients over ``world`` ranks. To train the
sparse rows the same way, each rank's row gradients are multiplied by ``grad_scale``
(default ``1 / client.world``) and the server sums the ranks' pushes, so W ranks each
with its own batch of a mean loss give what one process gets on the combined batch.

**Steps.** Every pull and push is tagged with ``client.step``; call
``client.advance()`` once per training step, after ``backward()``. ``prefetch(next)``
(after this step's forward) starts the next step's pull so it overlaps this step.

Example (one PS replica in this process; a job runs them as the ``ps`` role)::

    >>> import torch
    >>> from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
    >>> config = PSConfig((TableConfig("item", 4, OptimizerConfig("sgd", lr=0.1)),))
    >>> server = PSServer(config, index=0).start()
    >>> client = PSClient(config, [server.address])
    >>> bag = PSEmbeddingBag(client, "item", mode="mean")
    >>> batches = [torch.tensor([[1, 2], [3, -1]]), torch.tensor([[2, 5], [1, 1]])]
    >>> for ids, next_ids in zip(batches, [*batches[1:], None]):
    ...     loss = bag(ids).sum()
    ...     if next_ids is not None:
    ...         bag.prefetch(next_ids)
    ...     loss.backward()
    ...     step = client.advance()
    >>> step
    2
    >>> client.close(); server.stop()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from tidemill.ps._client import PSClient
from tidemill.ps._errors import PSConfigError
from tidemill.ps._pulls import PulledRows, PullHandle

Pooling = Literal["sum", "mean"]
FeatureInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
Requests = dict[str, npt.NDArray[np.int64]]


class _RemoteRows(torch.autograd.Function):
    """Pulled rows in, the same rows out; backward hands their gradients to ``push``."""

    @staticmethod
    def forward(
        ctx: Any,
        anchor: torch.Tensor,
        push: Callable[[Sequence[torch.Tensor | None]], None],
        rows: list[npt.NDArray[np.float32]],
    ) -> tuple[torch.Tensor, ...]:
        ctx.push = push
        return tuple(torch.from_numpy(block) for block in rows)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[None, None, None]:
        ctx.push(grads)
        return None, None, None


@dataclass
class _Pusher:
    client: PSClient
    pulled: dict[str, PulledRows]
    step: int
    scale: float

    def __call__(self, grads: Sequence[torch.Tensor | None]) -> None:
        nobody = (0,) * (len(self.pulled[next(iter(self.pulled))].bounds))
        items: dict[str, tuple[Any, Any, tuple[int, ...]]] = {}
        for (name, pulled), grad in zip(self.pulled.items(), grads, strict=True):
            if grad is None:
                dim = pulled.rows.shape[1]
                items[name] = (np.empty(0, np.int64), np.empty((0, dim), np.float32), nobody)
                continue
            values = grad.detach().to("cpu", torch.float32).numpy()
            items[name] = (
                pulled.ids,
                np.multiply(values, self.scale, dtype=np.float32),
                pulled.bounds,
            )
        self.client.push_many(items, self.step)


@dataclass
class _Prefetch:
    requests: Requests
    handle: PullHandle


class _PSLookup(nn.Module):
    """Pulls, prefetch matching and the autograd hook, shared by the three modules."""

    def __init__(self, client: PSClient, tables: Sequence[str], grad_scale: float | None) -> None:
        super().__init__()
        for table in tables:
            client.dim(table)
        self.client = client
        self.grad_scale = grad_scale
        self._prefetched: _Prefetch | None = None

    def _rows(self, requests: Requests) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per table: the unique rows (differentiable) and each id's index into them."""
        step = self.client.step
        pulled = self._take_prefetch(requests, step)
        if pulled is None:
            pulled = self.client.pull_many(requests, step)
        blocks = [entry.rows for entry in pulled.values()]
        if torch.is_grad_enabled():
            scale = 1.0 / self.client.world if self.grad_scale is None else self.grad_scale
            anchor = torch.zeros(0, requires_grad=True)
            pusher = _Pusher(self.client, pulled, step, scale)
            tensors = _RemoteRows.apply(anchor, pusher, blocks)  # type: ignore[no-untyped-call]
        else:
            tensors = tuple(torch.from_numpy(block) for block in blocks)
        return {
            name: (tensor, torch.from_numpy(entry.inverse))
            for (name, entry), tensor in zip(pulled.items(), tensors, strict=True)
        }

    def _prefetch(self, requests: Requests) -> None:
        step = self.client.step + 1
        self._prefetched = _Prefetch(requests, self.client.pull_async(requests, step))

    def _take_prefetch(self, requests: Requests, step: int) -> dict[str, PulledRows] | None:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is None or prefetched.handle.step < step:
            return None
        same = prefetched.requests.keys() == requests.keys() and all(
            np.array_equal(prefetched.requests[name], ids) for name, ids in requests.items()
        )
        if prefetched.handle.step > step or not same:
            raise PSConfigError(
                f"prefetch was for step {prefetched.handle.step} but forward runs step {step}"
                f" with {'the same' if same else 'other'} ids; call prefetch(next_batch) after"
                " this step's forward and client.advance() after backward"
            )
        return prefetched.handle.result()


def _ids_array(ids: torch.Tensor) -> npt.NDArray[Any]:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        from tidemill.ps._errors import PSBadIds

        raise PSBadIds(f"ids have dtype {ids.dtype}; use torch.int64")
    return ids.detach().to("cpu").numpy()


@dataclass
class _Bags:
    ids: npt.NDArray[Any]
    offsets: torch.Tensor


def _bags(ids: torch.Tensor, offsets: torch.Tensor | None, padding_id: int) -> _Bags:
    """Flat ids and bag offsets from ``(ids, offsets)`` or a padded 2-D ``ids``."""
    if offsets is not None:
        if ids.dim() != 1 or offsets.dim() != 1:
            raise PSConfigError(
                f"ids {tuple(ids.shape)} with offsets {tuple(offsets.shape)}: both must be 1-D"
            )
        return _Bags(_ids_array(ids), offsets.to("cpu", torch.int64))
    if ids.dim() != 2:
        raise PSConfigError(
            f"ids {tuple(ids.shape)}: a bag lookup needs 2-D ids or 1-D ids with offsets"
        )
    array = _ids_array(ids)
    keep = array != padding_id
    counts = keep.sum(axis=1)
    starts = (np.cumsum(counts) - counts).astype(np.int64)  # one start per bag, [] for none
    return _Bags(array[keep], torch.from_numpy(starts))


def _pool(
    rows: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor, mode: Pooling
) -> torch.Tensor:
    return F.embedding_bag(index, rows, offsets, mode=mode)


class PSEmbedding(_PSLookup):
    """Per-id lookup of ``table``: ids of any shape give ``shape + [dim]`` rows.

    >>> import torch
    >>> from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
    >>> config = PSConfig((TableConfig("user", 3, OptimizerConfig("sgd")),))
    >>> with PSServer(config, 0) as server, PSClient(config, [server.address]) as client:
    ...     PSEmbedding(client, "user")(torch.tensor([[4, 4, 2]])).shape
    torch.Size([1, 3, 3])
    """

    def __init__(self, client: PSClient, table: str, *, grad_scale: float | None = None) -> None:
        super().__init__(client, [table], grad_scale)
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows, index = self._rows({self.table: _ids_array(ids).reshape(-1)})[self.table]
        return F.embedding(index, rows).reshape(*ids.shape, rows.shape[1])

    def prefetch(self, next_ids: torch.Tensor) -> None:
        """Start pulling ``next_ids`` for the next step (call after this step's forward)."""
        self._prefetch({self.table: _ids_array(next_ids).reshape(-1)})


class PSEmbeddingBag(_PSLookup):
    """Pooled lookup of ``table``, like ``torch.nn.EmbeddingBag`` (``mode`` sum or mean).

    Bags come as 1-D ``ids`` with ``offsets`` (bag starts) or as 2-D ``ids`` where
    ``padding_id`` (default -1) marks empty slots; an empty bag pools to zeros.
    """

    def __init__(
        self,
        client: PSClient,
        table: str,
        mode: Pooling = "sum",
        *,
        padding_id: int = -1,
        grad_scale: float | None = None,
    ) -> None:
        if mode not in ("sum", "mean"):
            raise PSConfigError(f"mode: {mode!r} is not one of 'sum', 'mean'")
        super().__init__(client, [table], grad_scale)
        self.table, self.mode, self.padding_id = table, mode, padding_id

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        bags = _bags(ids, offsets, self.padding_id)
        rows, index = self._rows({self.table: bags.ids})[self.table]
        return _pool(rows, index, bags.offsets, self.mode)

    def prefetch(self, next_ids: torch.Tensor, next_offsets: torch.Tensor | None = None) -> None:
        self._prefetch({self.table: _bags(next_ids, next_offsets, self.padding_id).ids})


class PSEmbeddingCollection(_PSLookup):
    """Several features, each a lookup of some table, in one pull and one push per shard.

    ``features`` maps a feature name to its table (features may share a table; their
    ids are deduplicated together). ``mode=None`` looks up each id; ``"sum"``/``"mean"``
    pools bags given as 2-D padded ids or ``(ids, offsets)``.

    >>> import torch
    >>> from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
    >>> tables = (TableConfig("user", 2, OptimizerConfig("sgd")), TableConfig("ad", 3))
    >>> config = PSConfig(tables)
    >>> with PSServer(config, 0) as server, PSClient(config, [server.address]) as client:
    ...     features = PSEmbeddingCollection(client, {"uid": "user", "clicked": "ad"}, mode="sum")
    ...     out = features({"uid": torch.tensor([[7]]), "clicked": torch.tensor([[1, 2, -1]])})
    ...     {name: tuple(value.shape) for name, value in out.items()}
    {'uid': (1, 2), 'clicked': (1, 3)}
    """

    def __init__(
        self,
        client: PSClient,
        features: Mapping[str, str],
        mode: Pooling | None = None,
        *,
        padding_id: int = -1,
        grad_scale: float | None = None,
    ) -> None:
        if mode not in (None, "sum", "mean"):
            raise PSConfigError(f"mode: {mode!r} is not one of None, 'sum', 'mean'")
        super().__init__(client, sorted(set(features.values())), grad_scale)
        self.features, self.mode, self.padding_id = dict(features), mode, padding_id

    def forward(self, inputs: Mapping[str, FeatureInput]) -> dict[str, torch.Tensor]:
        flat, shapes, offsets = self._flatten(inputs)
        requests = self._requests(flat)
        looked_up = self._rows(requests)
        out: dict[str, torch.Tensor] = {}
        start = dict.fromkeys(requests, 0)
        for feature, ids in flat.items():
            table = self.features[feature]
            rows, index = looked_up[table]
            mine = index[start[table] : start[table] + len(ids)]
            start[table] += len(ids)
            if self.mode is None:
                out[feature] = F.embedding(mine, rows).reshape(*shapes[feature], rows.shape[1])
            else:
                out[feature] = _pool(rows, mine, offsets[feature], self.mode)
        return out

    def prefetch(self, next_inputs: Mapping[str, FeatureInput]) -> None:
        self._prefetch(self._requests(self._flatten(next_inputs)[0]))

    def _flatten(
        self, inputs: Mapping[str, FeatureInput]
    ) -> tuple[dict[str, npt.NDArray[Any]], dict[str, tuple[int, ...]], dict[str, torch.Tensor]]:
        unknown = sorted(set(inputs) - set(self.features))
        if unknown:
            raise PSConfigError(
                f"features {unknown} are not configured; features: {sorted(self.features)}"
            )
        flat: dict[str, npt.NDArray[Any]] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        offsets: dict[str, torch.Tensor] = {}
        for feature, given in inputs.items():
            ids, bag_offsets = given if isinstance(given, tuple) else (given, None)
            if self.mode is None:
                flat[feature] = _ids_array(ids).reshape(-1)
                shapes[feature] = tuple(ids.shape)
            else:
                bags = _bags(ids, bag_offsets, self.padding_id)
                flat[feature], offsets[feature] = bags.ids, bags.offsets
        return flat, shapes, offsets

    def _requests(self, flat: Mapping[str, npt.NDArray[Any]]) -> Requests:
        grouped: dict[str, list[npt.NDArray[Any]]] = {}
        for feature, ids in flat.items():
            grouped.setdefault(self.features[feature], []).append(ids)
        return {table: np.concatenate(parts) for table, parts in grouped.items()}
