"""The master's data side: plans stages, answers lease requests, keeps insight, and
commits Kafka consumer-group offsets once the model holding them has committed (with
durable checkpoints: once a checkpoint holding them is durable).

Planning talks to catalogs, files and brokers, so it runs on a thread; a source that
cannot be planned becomes a Warning event naming it (reason ``DataSourceNotFound``,
``DataSourceUnreachable``, ...), and the worker that asked gets the error (it fails,
and its restart policy decides what happens next).
Every lease is saved before it is answered, so a restarted master never hands out a
shard a second time within an epoch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tidemill.api.data import DataSpec
from tidemill.data._dispatch import Dispatcher, StageChange
from tidemill.data._errors import DataError
from tidemill.data._plan import StagePlan, plan_stage
from tidemill.data._progress import PROGRESS_KEY, DataProgress
from tidemill.data._shards import Shard
from tidemill.master.data_insight import InsightBook
from tidemill.master.persistence import log
from tidemill.wire import Insight, Lease, Leased

EventSink = Callable[[str, str, str, str | None], Awaitable[None]]
Decide = Callable[[Callable[[], Leased]], Awaitable[Leased]]
"""Runs a choice under the server's lock and saves the state before returning."""


class DataService:
    def __init__(
        self,
        spec: DataSpec,
        saved: dict[str, Any] | None,
        event: EventSink,
        offsets_follow_checkpoints: bool = False,
    ) -> None:
        self.dispatcher = Dispatcher.restore(spec, saved) if saved else Dispatcher(spec)
        self.offsets_follow_checkpoints = offsets_follow_checkpoints
        """The job keeps durable checkpoints: Kafka offsets move only with them."""
        self.book = InsightBook()
        self._event = event
        self._plan_lock = asyncio.Lock()
        self._offsets: asyncio.Task[None] | None = None
        self._next_offsets: dict[Shard, int] | None = None
        self._last_offsets: dict[Shard, int] = {}

    async def lease(self, replica: str, pid: int, request: Lease, decide: Decide) -> Leased:
        """The answer to a ``lease`` request of process ``pid``; a request sent again
        (its answer was lost with a master that restarted) gets the same answer."""
        request_id = request.id
        asker = f"{replica}/{pid}"
        last = self.dispatcher.answers.get(asker)
        if last is not None and last[0] == request_id:
            return Leased(request_id, grant=last[1])
        stage, view = request.stage, request.view
        needed = {stage} | ({int(view.get("stage", 0))} if view else set())
        try:
            for index in sorted(needed):
                await self._plan(index)
        except DataError as exc:
            await self._event("Warning", exc.reason, str(exc), replica)
            return Leased(request_id, error=exc.detail, reason=exc.reason, source=exc.source)

        changes: list[StageChange] = []

        def choose() -> Leased:
            grant, found = self.dispatcher.lease(
                replica,
                request.epoch,
                stage,
                request.pass_index,
                request.source,
                view,
                time.time(),
            )
            changes.extend(found)
            granted = grant.to_json()
            self.dispatcher.answers[asker] = (request_id, granted)
            return Leased(request_id, grant=granted)

        answer = await decide(choose)
        stages = len(self.dispatcher.spec.stages)
        for change in changes:
            verb = "started" if change.started else "finished"
            text = f"data stage {change.stage!r} ({change.index + 1} of {stages}) {verb}"
            reason = "StageStarted" if change.started else "StageFinished"
            await self._event("Normal", reason, text, None)
        return answer

    async def _plan(self, index: int) -> None:
        async with self._plan_lock:
            if not self.dispatcher.needs_plan(index):
                return
            spec = self.dispatcher.spec
            plan = await asyncio.to_thread(plan_stage, spec, index)
            self.dispatcher.add_plan(plan)
            await self._event("Normal", "StagePlanned", _describe(plan), None)

    def insight(self, replica: str, report: Insight) -> None:
        self.book.report(replica, report.stage, dict(report.sources), time.time())

    def committed(self, data: Any) -> None:
        """Rank 0 committed: count its view as done, and move Kafka groups up to it
        unless offsets wait for durable checkpoints (see :meth:`durable`)."""
        view = data.get(PROGRESS_KEY) if isinstance(data, dict) else None
        if not view:
            return
        self.dispatcher.commit(view)
        if not self.offsets_follow_checkpoints:
            self._move_groups(self.dispatcher.committed)

    def durable(self, data: Any) -> None:
        """A checkpoint holding ``data`` is durable: Kafka groups may move up to it. Only
        then, so that after losing the whole job, restoring that checkpoint replays from
        where the groups stand, and a group never claims records no checkpoint holds."""
        view = data.get(PROGRESS_KEY) if isinstance(data, dict) else None
        if view and self.offsets_follow_checkpoints:
            self._move_groups(DataProgress.from_json(view))

    def _move_groups(self, view: DataProgress) -> None:
        offsets = _group_offsets(self.dispatcher, view)
        if offsets and offsets != self._last_offsets:
            self._next_offsets = self._last_offsets = offsets
            if self._offsets is None or self._offsets.done():
                self._offsets = asyncio.create_task(self._commit_offsets())

    async def _commit_offsets(self) -> None:
        from tidemill.data._kafka import commit_offsets

        while self._next_offsets is not None:
            offsets, self._next_offsets = self._next_offsets, None
            try:
                await asyncio.to_thread(commit_offsets, offsets)
            except DataError as exc:
                log(f"could not commit consumer-group offsets: {exc}")

    def snapshot(self) -> dict[str, Any]:
        return self.dispatcher.snapshot()

    def insight_view(self) -> dict[str, Any]:
        return self.book.view(self.dispatcher, time.time()).model_dump(mode="json")


def _describe(plan: StagePlan) -> str:
    parts = [
        f"{source.name} ({source.kind.value}): {len(source.shards)} "
        + ("partition leases" if source.is_stream else "shards")
        for source in plan.sources
    ]
    return f"data stage {plan.name!r} planned: " + "; ".join(parts)


def _group_offsets(dispatcher: Dispatcher, view: DataProgress) -> dict[Shard, int]:
    """Per lease of a source with a groupId: the first offset not yet trained (a lease
    of a stage already finished: its end)."""
    offsets: dict[Shard, int] = {}
    for index, plan in sorted(dispatcher.plans.items()):
        if index > view.stage:
            break
        for source in plan.sources:
            done = view.done.get(source.name, set()) if index == view.stage else None
            for number, shard in enumerate(source.shards):
                lease = shard.lease
                if lease is None or not lease.group_id:
                    continue
                cursor = view.cursor(source.name, shard.id) if done is not None else None
                if cursor is not None:
                    offsets[shard] = cursor.start if cursor.in_window else cursor.next_position
                elif (done is None or number in done) and lease.end_offset is not None:
                    offsets[shard] = lease.end_offset
    return offsets
