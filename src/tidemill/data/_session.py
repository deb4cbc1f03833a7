"""Where a loader gets shards and agrees with its peers: alone, or in an elastic group.

:class:`AloneSession` plans and dispatches in the process itself (a laptop run, a test,
a benchmark). :class:`GroupSession` asks the job master for shards over the elastic
loop's connection and uses the epoch's process group for the per-step agreement, the
gathering of progress at a commit and the optional exchange of records.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from tidemill.api.data import DataSpec
from tidemill.data._dispatch import Dispatcher, Grant
from tidemill.data._errors import (
    CorruptData,
    DataError,
    SchemaChanged,
    SourceNotFound,
    SourceUnreachable,
    UnsupportedData,
)
from tidemill.data._plan import plan_stage
from tidemill.data._progress import RankPart
from tidemill.wire import DataErrorReport, Insight, Lease

if TYPE_CHECKING:
    from tidemill.runtime._active import ActiveEpoch
    from tidemill.runtime.elastic_state import ElasticState


_ERRORS: dict[str, type[DataError]] = {
    kind.reason: kind
    for kind in (SourceNotFound, SourceUnreachable, CorruptData, SchemaChanged, UnsupportedData)
}


class Session(Protocol):
    rank: int
    world_size: int
    epoch: int
    state: ElasticState | None

    def boundary(self) -> None: ...

    def lease(
        self, stage: int, pass_index: int, source: str | None, view: dict[str, Any] | None
    ) -> Grant: ...

    def vote(self, counts: list[int]) -> list[int]: ...

    def gather(self, part: RankPart) -> list[RankPart]: ...

    def exchange(self, batch: pa.RecordBatch, key: list[int]) -> pa.RecordBatch: ...

    def report(self, stage: int, sources: dict[str, Any]) -> None: ...

    def report_error(self, error: DataError) -> None: ...


class AloneSession:
    """One process reads everything; the dispatcher lives here."""

    def __init__(self, spec: DataSpec, epoch: int, state: ElasticState | None) -> None:
        self.rank, self.world_size, self.epoch, self.state = 0, 1, epoch, state
        self.dispatcher = Dispatcher(spec)

    def boundary(self) -> None:
        return None

    def lease(
        self, stage: int, pass_index: int, source: str | None, view: dict[str, Any] | None
    ) -> Grant:
        dispatcher = self.dispatcher
        for index in {stage, int((view or {}).get("stage", stage))}:
            if dispatcher.needs_plan(index):
                dispatcher.add_plan(plan_stage(dispatcher.spec, index))
        grant, _ = dispatcher.lease(
            "local", self.epoch, stage, pass_index, source, view, time.time()
        )
        return grant

    def vote(self, counts: list[int]) -> list[int]:
        return counts

    def gather(self, part: RankPart) -> list[RankPart]:
        return [part]

    def exchange(self, batch: pa.RecordBatch, key: list[int]) -> pa.RecordBatch:
        return batch

    def report(self, stage: int, sources: dict[str, Any]) -> None:
        return None

    def report_error(self, error: DataError) -> None:
        return None


class GroupSession:
    """A rank of an elastic epoch: shards from the job master, agreement by collectives."""

    def __init__(self, active: ActiveEpoch) -> None:
        import torch

        if active.client is None:
            raise ValueError("a group session needs the job master's connection")
        self._torch = torch
        self.ctx = active.ctx
        self.client = active.client
        self.rank, self.world_size = active.ctx.rank, active.ctx.world_size
        self.epoch = active.ctx.epoch
        self.state: ElasticState | None = active.ctx.state

    def boundary(self) -> None:
        self.ctx.boundary()

    def lease(
        self, stage: int, pass_index: int, source: str | None, view: dict[str, Any] | None
    ) -> Grant:
        from tidemill.runtime.elastic_group import GroupAborted

        message = Lease(self.epoch, stage, pass_index, source, view)
        reply = self.client.request(message, give_up=lambda: self.client.aborted(self.epoch))
        if reply is None:
            raise GroupAborted(f"epoch {self.epoch} was aborted while asking for a shard")
        if reply.grant is not None:
            return Grant.from_json(reply.grant)
        error = _ERRORS.get(reply.reason or "", DataError)(
            str(reply.source or source), str(reply.error)
        )
        error.reported = True  # the master posted the event when planning failed
        raise error

    def vote(self, counts: list[int]) -> list[int]:
        """Every rank's counts summed (one small all-reduce)."""
        import torch.distributed as dist

        # On the model's device: nccl reduces only CUDA tensors.
        tensor = self._torch.tensor(counts, dtype=self._torch.int64, device=self.ctx.device)
        dist.all_reduce(tensor)
        return [int(v) for v in tensor.tolist()]

    def gather(self, part: RankPart) -> list[RankPart]:
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, part.to_json())
        return [RankPart.from_json(p) for p in parts]

    def exchange(self, batch: pa.RecordBatch, key: list[int]) -> pa.RecordBatch:
        """All ranks' records, shuffled by ``key`` and dealt out evenly (global shuffle)."""
        import torch.distributed as dist

        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        blobs: list[Any] = [None] * self.world_size
        dist.all_gather_object(blobs, sink.getvalue())
        tables = [pa.ipc.open_stream(blob).read_all() for blob in blobs]
        everything = pa.concat_tables([t for t in tables if t.num_rows], promote_options="default")
        order = np.random.default_rng(key).permutation(everything.num_rows)
        low = everything.num_rows * self.rank // self.world_size
        high = everything.num_rows * (self.rank + 1) // self.world_size
        mine = everything.take(pa.array(order[low:high])).combine_chunks().to_batches()
        return mine[0] if mine else pa.RecordBatch.from_pylist([], schema=everything.schema)

    def report(self, stage: int, sources: dict[str, Any]) -> None:
        self.client.notify(Insight(stage, sources))

    def report_error(self, error: DataError) -> None:
        """Tell the master (it posts the job event) before this worker fails."""
        if not error.reported:
            error.reported = True
            self.client.notify(DataErrorReport(error.reason, str(error)))
