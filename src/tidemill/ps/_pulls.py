"""A pull's pieces on the client: the rows it returns, its handle, its frames and the
held pull of the next step that rides behind this step's pushes (``PSClient.pull_async``)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from tidemill.ps._errors import PSProtocolError
from tidemill.ps._wire import Header, Op, recv_exact

Frame = tuple[Header, list[Any]]
Ids = npt.NDArray[np.int64]
Rows = npt.NDArray[np.float32]


class PulledRows(NamedTuple):
    """The rows of one table for one batch, deduplicated and grouped by shard.

    ``rows[inverse]`` are the batch's rows in request order; ``ids[bounds[s]:bounds[s+1]]``
    live on shard ``s``, so the gradients of ``rows`` go back without regrouping.
    """

    ids: Ids
    inverse: npt.NDArray[np.intp]
    rows: Rows
    bounds: tuple[int, ...]
    shape: tuple[int, ...]

    def gather(self) -> Rows:
        """One row per requested id, shaped ``request shape + (dim,)``."""
        return self.rows[self.inverse].reshape(*self.shape, self.rows.shape[1])


class PullHandle:
    """A pull in flight (from :meth:`PSClient.pull_async`); :meth:`result` waits for it."""

    def __init__(
        self,
        future: Future[dict[str, PulledRows]],
        step: int,
        settle: Callable[[], None] | None = None,
    ) -> None:
        self._future = future
        self._settle = settle
        self.step = step

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout_s: float | None = None) -> dict[str, PulledRows]:
        if self._settle is not None and not self._future.done():
            self._settle()
        return self._future.result(timeout_s)


class PullPlan(NamedTuple):
    """A pull's frames per shard, the row blocks their answers fill, and the result."""

    frames: dict[int, list[Frame]]
    targets: dict[int, Rows]
    pulled: dict[str, PulledRows]

    def into_rows(self, header: Header, sock: socket.socket) -> None:
        target = self.targets[header.request_id]
        if header.op != Op.ROWS or header.rows * header.dim != target.size:
            raise PSProtocolError(
                f"PULL answer has {header.rows}x{header.dim} rows; expected {target.shape}"
            )
        recv_exact(sock, target.data.cast("B"), "rows")


@dataclass(eq=False)
class NextPull:
    """A sync-mode pull of the next step, planned at once (frames and row buffers) but held
    until this rank's pushes of its tables are out; it then rides behind them on the push
    connections (see :meth:`PSClient.pull_async`)."""

    step: int
    plan: PullPlan
    future: Future[dict[str, PulledRows]] = field(default_factory=Future)
