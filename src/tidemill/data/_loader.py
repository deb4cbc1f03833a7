"""``tidemill.data.loader``: batches from the job's data plan, exactly once, elastically.

Every batch is one step. Before it, the loader takes part in the elastic loop's step
boundary (so the group can change between two batches), fills the batch from the
stage's sources (higher priority first, equal priorities by weight), and all ranks
agree, in one all-reduce, on how many records the step holds and whether a pass or
stage has ended. At every ``state.commit()`` the ranks' progress is gathered into
``state.data``, so it rolls back and is broadcast with the model: after a failure or
a resize, reading resumes exactly after the last committed batch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from tidemill.api.data import DataSpec
from tidemill.data._errors import DataError
from tidemill.data._insight import DataInsight
from tidemill.data._progress import PROGRESS_KEY, DataProgress, RankPart
from tidemill.data._session import AloneSession, GroupSession, Session
from tidemill.data._window import UNSHUFFLED_WINDOW_ROWS, ShardWindows

if TYPE_CHECKING:
    from tidemill.runtime.elastic_state import ElasticState

Output = Literal["torch", "arrow"]
REPORT_EVERY_S = 2.0
"""How often a worker sends its read counters to the job master."""


class _Source:
    """One source of the current stage as this rank sees it."""

    def __init__(self, name: str, is_stream: bool, weight: float, priority: int) -> None:
        self.name = name
        self.is_stream = is_stream
        self.weight = weight
        self.priority = priority
        self.held: list[ShardWindows] = []
        self.pool_empty = False
        self.total = 0
        """Shards of the source (leases: partitions), from the master's grants."""

    @property
    def exhausted(self) -> bool:
        return self.pool_empty and not self.held


class Loader(Iterator[Any]):
    """Iterate it for batches; see :func:`loader`."""

    def __init__(
        self,
        spec: DataSpec,
        batch_size: int,
        columns: Sequence[str] | None,
        output: Output,
        poll_s: float,
        from_job: bool = False,
        name: str | None = None,
    ) -> None:
        self.spec = spec
        self.key = PROGRESS_KEY if name is None else f"{PROGRESS_KEY}:{name}"
        """Where in ``state.data`` this loader commits its reading position."""
        self.from_job = from_job
        """The job's plan (not one passed in): only a group may share it out."""
        self.batch_size = batch_size
        self.columns = list(columns) if columns is not None else None
        self.output = output
        self.poll_s = poll_s
        self.step_rows = 0
        """Records in the last step across all ranks: divide a summed loss by it."""
        self.insight = DataInsight()
        self._session: Session | None = None
        self._epoch: int | None = None
        self._view: dict[str, Any] | None = None
        self._asked = False
        self._base = DataProgress()
        self._part = RankPart()
        self._sources: list[_Source] = []
        self._idle = False
        self._reported_at = 0.0
        self._schema: pa.Schema | None = None
        """The last non-empty batch's columns: an empty step keeps their types."""
        self._told_done = False

    @property
    def stage(self) -> str | None:
        """The name of the stage being read (None once every stage is done)."""
        index = self._base.stage
        return self.spec.stages[index].name if index < len(self.spec.stages) else None

    # --- the iterator -----------------------------------------------------------------

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> Any:
        session = self._bind()
        while True:
            session.boundary()
            if self._base.stage >= len(self.spec.stages):
                self._finish(session)
                raise StopIteration
            try:
                local = self._fill()
            except DataError as error:
                session.report_error(error)
                raise
            rows, batch_out, stream_out = session.vote(
                [
                    local.num_rows,
                    int(all(s.exhausted for s in self._sources if not s.is_stream)),
                    int(all(s.exhausted for s in self._sources if s.is_stream)),
                ]
            )
            self._transition(batch_out == session.world_size, stream_out == session.world_size)
            self._report()
            self._idle = rows == 0
            if rows:
                self.step_rows = rows
                if self.spec.shuffle.exchange and session.world_size > 1:
                    step = session.state.step if session.state is not None else 0
                    local = session.exchange(local, [self.spec.shuffle.seed, step, rows])
                return self._convert(local)

    def close(self) -> None:
        """Release readers and connections (also done when the epoch changes)."""
        for source in self._sources:
            for held in source.held:
                held.close()
            source.held = []

    # --- epochs -------------------------------------------------------------------------

    def _bind(self) -> Session:
        """The session of the running epoch; a new epoch starts from the committed view."""
        from tidemill.runtime._active import current

        active = current()
        epoch = 0 if active is None else active.ctx.epoch
        if self._session is not None and epoch == self._epoch:
            return self._session
        self.close()
        state = None if active is None else active.ctx.state
        if active is None and self.from_job and int(os.environ.get("WORLD_SIZE") or 1) > 1:
            raise RuntimeError(
                f"tidemill.data.loader is read outside an @elastic training function in a "
                f"job of {os.environ['WORLD_SIZE']} workers: each would read every record. "
                "Iterate it inside the function decorated with tidemill.runtime.elastic, "
                "which shares the shards among the workers and commits the reading position"
            )
        if active is None or active.client is None:
            session: Session = AloneSession(self.spec, epoch, state)
        else:
            session = GroupSession(active)
        view = None if state is None else state.data.get(self.key)
        self._session, self._epoch, self._view, self._asked = session, epoch, view, False
        self._base, self._part = DataProgress.from_json(view), RankPart()
        self._told_done = False
        self._enter_stage()
        if active is not None:
            active.hook_commits(self._on_commit)
        return session

    def _on_commit(self, state: ElasticState) -> None:
        if self._session is None:
            return
        for source in self._sources:
            for held in source.held:
                self._part.hold(source.name, held.shard.id, held.cursor)
        parts = self._session.gather(self._part)
        state.data[self.key] = self._base.merged(parts).to_json()

    def _enter_stage(self) -> None:
        self.close()
        stage = self._base.stage
        if stage >= len(self.spec.stages):
            self._sources = []
            return
        self._sources = [
            _Source(s.display_name, s.kafka is not None, s.weight, s.priority)
            for s in self.spec.stages[stage].sources
        ]
        if self._base.batch_ended:
            for source in self._sources:
                source.pool_empty = source.pool_empty or not source.is_stream

    def _transition(self, batch_out: bool, stream_out: bool) -> None:
        """Every rank calls this with the same votes, so all move on together."""
        base = self._base
        if batch_out and not base.batch_ended:
            stage = self.spec.stages[base.stage]
            batch = [s.name for s in self._sources if not s.is_stream]
            self._base = base.next_pass(batch, stage.epochs)
            self._part.drop(batch)
            for source in self._sources:
                if not source.is_stream:
                    source.pool_empty = self._base.batch_ended
        if self._base.batch_ended and stream_out:
            self._report(force=True)
            self._base = self._base.next_stage()
            self._part = RankPart()
            self._enter_stage()

    def _finish(self, session: Session) -> None:
        if not self._told_done:
            self._told_done = True
            self._report(force=True)
            session.lease(self._base.stage, 0, None, self._first_view())
            _save_the_final_commit()

    # --- filling a batch ----------------------------------------------------------------

    def _fill(self) -> pa.RecordBatch:
        parts: list[pa.RecordBatch] = []

        def take(source: _Source, rows: int) -> int:
            got = self._take(source, rows)
            parts.extend(got)
            return sum(batch.num_rows for batch in got)

        remaining = self.batch_size
        for priority in sorted({s.priority for s in self._sources}, reverse=True):
            group = [s for s in self._sources if s.priority == priority]
            total_weight = sum(s.weight for s in group)
            quotas = _shares(remaining, [s.weight / total_weight for s in group])
            remaining -= sum(take(s, quota) for s, quota in zip(group, quotas, strict=True))
            for source in group:  # what a source could not fill, the others may
                if remaining <= 0:
                    break
                remaining -= take(source, remaining)
        batch = _one_batch(parts, self.columns, self._schema)
        if batch.num_rows:
            self._schema = batch.schema
        return batch

    def _take(self, source: _Source, rows: int) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        if source.is_stream:
            self._hold_streams(source)
            for held in list(source.held):
                if rows <= 0:
                    break
                wait = self.poll_s if self._idle and not out else 0.0
                while rows > 0 and (batch := held.take(rows, wait)) is not None:
                    out.append(batch)
                    rows -= batch.num_rows
                    wait = 0.0
                if held.finished:
                    self._release(source, held)
            return out
        while rows > 0:
            if not source.held and not self._acquire(source):
                break
            held = source.held[0]
            if len(source.held) == 1:
                self._acquire(source)  # the next shard decodes while this one is handed out
            batch = held.take(rows)
            if batch is not None:
                out.append(batch)
                rows -= batch.num_rows
            if held.finished:
                self._release(source, held)
        return out

    def _hold_streams(self, source: _Source) -> None:
        """Hold this rank's share of the partitions: one partition feeds one worker."""
        world = self._session.world_size if self._session is not None else 1
        while not source.pool_empty:
            share = math.ceil(source.total / world) if source.total else 1
            if len(source.held) >= share or not self._acquire(source):
                break

    def _acquire(self, source: _Source) -> bool:
        if source.pool_empty or self._session is None:
            return False
        base = self._base
        grant = self._session.lease(base.stage, base.pass_index, source.name, self._first_view())
        if grant.stale:
            return False
        if grant.shard is None or grant.cursor is None:
            source.pool_empty = True
            return False
        source.total = max(source.total, grant.total)
        shuffle = self.spec.shuffle
        source.held.append(
            ShardWindows(
                grant.shard,
                grant.index,
                grant.cursor,
                window_rows=self._window_rows(source),
                seed=shuffle.seed if shuffle.buffer_rows else None,
                columns=self.columns,
                stats=self.insight.source(source.name),
            )
        )
        return True

    def _window_rows(self, source: _Source) -> int:
        """Files: the shuffle buffer, or large windows that are only sliced. Streams:
        the most one poll returns."""
        buffer_rows = self.spec.shuffle.buffer_rows
        if source.is_stream:
            return max(buffer_rows, self.batch_size)
        return buffer_rows or UNSHUFFLED_WINDOW_ROWS

    def _release(self, source: _Source, held: ShardWindows) -> None:
        held.close()
        source.held.remove(held)
        self._part.finish(source.name, held.index, held.shard.id)

    def _first_view(self) -> dict[str, Any] | None:
        """The epoch's committed view travels with the first request of the epoch."""
        if self._asked:
            return None
        self._asked = True
        return self._view if self._view is not None else DataProgress().to_json()

    # --- output -------------------------------------------------------------------------

    def _convert(self, batch: pa.RecordBatch) -> Any:
        if self.output == "arrow":
            return batch
        from tidemill.data._tensors import to_tensors

        return to_tensors(batch)

    def _report(self, force: bool = False) -> None:
        """Send this worker's read counters of the stage (at most every few seconds,
        and always at the end of a stage so the last ones are not lost)."""
        now = time.monotonic()
        if self._session is None or (not force and now - self._reported_at < REPORT_EVERY_S):
            return
        self._reported_at = now
        snapshot = self.insight.snapshot()
        self._session.report(self._base.stage, {name: asdict(s) for name, s in snapshot.items()})


def _shares(rows: int, fractions: Sequence[float]) -> list[int]:
    """``rows`` split by ``fractions`` in whole rows (largest remainders get the rest)."""
    exact = [rows * f for f in fractions]
    whole = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - whole[i], reverse=True)
    for i in order[: rows - sum(whole)]:
        whole[i] += 1
    return whole


def _one_batch(
    parts: list[pa.RecordBatch], columns: Sequence[str] | None, schema: pa.Schema | None
) -> pa.RecordBatch:
    """The step's records as one batch (no copy when they came from one window); an
    empty step has the columns of ``schema`` (the last batch's) so ids stay integers."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        if schema is not None:
            return pa.RecordBatch.from_pylist([], schema=schema)
        names = list(columns or [])
        return pa.RecordBatch.from_arrays([pa.array([], pa.null()) for _ in names], names=names)
    schemas = {batch.schema for batch in parts}
    if len(schemas) == 1:
        table = pa.Table.from_batches(parts)
    else:  # sources of one stage may type a column differently (int32 vs int64)
        tables = [pa.Table.from_batches([batch]) for batch in parts]
        table = pa.concat_tables(tables, promote_options="permissive")
    return table.combine_chunks().to_batches()[0]


def loader(
    batch_size: int,
    columns: Sequence[str] | None = None,
    *,
    output: Output = "torch",
    spec: DataSpec | Mapping[str, Any] | None = None,
    poll_s: float = 0.1,
    name: str | None = None,
) -> Loader:
    """Batches of ``batch_size`` records per worker from the job's ``spec.data``.

    Yields a dict of column name to ``torch.Tensor`` (``output="arrow"``: a
    ``pyarrow.RecordBatch``). Inside an ``@elastic`` training function every batch is a step
    boundary, and ``state.commit()`` commits the reading position with the model, so
    after a lost worker or a resize no record is skipped or trained twice. A step's
    batch can be short (the end of a stage, a quiet stream) or empty on some ranks
    while others still read: ``loader.step_rows`` holds the step's records across all
    ranks, so weigh a summed loss by it. The plan comes from ``spec`` or, under
    tidemill, from the job file (``TIDEMILL_DATA``); a plan passed in may be read by one
    process alone, outside the elastic loop (an evaluation on rank 0, say). Each loader
    commits its position under its own key of ``state.data``: give a second loader of
    one training function a ``name`` (``"tidemill.data:<name>"``; the job's loader
    keeps ``"tidemill.data"``), so both commit and both resume.

    Example::

        >>> import tidemill.data
        >>> plan = {"stages": [{"name": "all", "sources": [{"parquet": {"path": "clicks/"}}]}]}
        >>> for batch in tidemill.data.loader(256, ["x", "label"], spec=plan):
        ...     loss = model(batch["x"]).sub(batch["label"]).pow(2).sum() / 256
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output not in ("torch", "arrow"):
        raise ValueError(f"output must be 'torch' or 'arrow', got {output!r}")
    if name is not None and not name:
        raise ValueError("name must be a non-empty string (or None for the job's loader)")
    return Loader(_resolve_spec(spec), batch_size, columns, output, poll_s, spec is None, name)


def _resolve_spec(spec: DataSpec | Mapping[str, Any] | None) -> DataSpec:
    if isinstance(spec, DataSpec):
        return spec
    if spec is not None:
        return DataSpec.model_validate(spec)
    text = os.environ.get("TIDEMILL_DATA")
    if not text:
        raise ValueError(
            "no data plan: give the job file a spec.data section (tidemill passes it to "
            "replicas as TIDEMILL_DATA), or pass spec={'stages': [...]} to loader()"
        )
    return DataSpec.model_validate_json(text)


def _save_the_final_commit() -> None:
    """The data is read to its end: the commit that follows holds the final positions
    (a Kafka stage's last offsets, committed to its group only once a checkpoint holds
    them), so rank 0 saves it whether due or not."""
    from tidemill.runtime._active import current

    active = current()
    if active is not None and active.checkpointing is not None and active.ctx.rank == 0:
        active.checkpointing.save_next()
