"""Shard dispatch: which worker reads which shard, from the committed data progress.

Pure shard-lease logic (no I/O), so it lives with the data plane: the job master's
server feeds it lease requests and commits and it answers with shards; a loader
running alone (:class:`~tidemill.data._session.AloneSession`) drives one in-process.
Workers pull: a worker asks for the next shard of a source when it needs one, so a
faster worker reads more.

What counts as read is never decided here. Every membership epoch starts from the
view the group committed with its model (the first lease request of the epoch carries
it): shards finished in that view stay finished, shards started resume at their
cursor, everything else is pending again. Leases handed out in an epoch that ended
without a commit are simply forgotten, which is what makes a rewind exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tidemill.api.data import DataSpec
from tidemill.data._plan import SourcePlan, StagePlan
from tidemill.data._progress import Cursor, DataProgress
from tidemill.data._shards import Shard


@dataclass(frozen=True)
class Grant:
    """The answer to a lease request: a shard and where to start in it, or none left.

    ``stale`` means the request belongs to an epoch that is over (its worker is about
    to re-form and ask again).
    """

    shard: Shard | None
    cursor: Cursor | None = None
    stale: bool = False
    index: int = -1
    """The shard's place in its source's plan (what the progress view records)."""
    total: int = 0
    """Shards of the source (for a stream: its partitions, to be shared among ranks)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": None if self.shard is None else self.shard.to_dict(),
            "cursor": None if self.cursor is None else self.cursor.to_json(),
            "stale": self.stale,
            "index": self.index,
            "total": self.total,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grant:
        shard, cursor = data.get("shard"), data.get("cursor")
        return cls(
            shard=None if shard is None else Shard.from_dict(shard),
            cursor=None if cursor is None else Cursor.from_json(cursor),
            stale=bool(data.get("stale")),
            index=int(data.get("index", -1)),
            total=int(data.get("total", 0)),
        )


@dataclass(frozen=True)
class StageChange:
    """A stage began or ended: the server turns it into an event."""

    stage: str
    index: int
    started: bool


@dataclass
class Dispatcher:
    spec: DataSpec
    plans: dict[int, StagePlan] = field(default_factory=dict)
    epoch: int = -1
    progress: DataProgress = field(default_factory=DataProgress)
    queues: dict[str, list[int]] = field(default_factory=dict)
    """Source -> plan indexes not handed out in this epoch, in reading order."""
    leased: dict[str, str] = field(default_factory=dict)
    """Shard id -> replica reading it in this epoch."""
    committed: DataProgress = field(default_factory=DataProgress)
    times: dict[int, list[float | None]] = field(default_factory=dict)
    """Stage index -> [started_at, finished_at]."""
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    """``replica/pid`` -> its last request id and the grant it got, saved with the
    state: a request resent to a restarted master gets the same shard, not a second."""

    @property
    def finished(self) -> bool:
        return self.progress.stage >= len(self.spec.stages)

    def needs_plan(self, stage: int) -> bool:
        return stage < len(self.spec.stages) and stage not in self.plans

    def add_plan(self, plan: StagePlan) -> None:
        self.plans.setdefault(plan.index, plan)

    def lease(
        self,
        replica: str,
        epoch: int,
        stage: int,
        pass_index: int,
        source: str | None,
        view: dict[str, Any] | None,
        now: float,
    ) -> tuple[Grant, list[StageChange]]:
        """The next shard of ``source`` for ``replica``; plans of the stages involved
        must have been added (see :meth:`needs_plan`)."""
        if epoch < self.epoch:
            return Grant(None, stale=True), []
        changes: list[StageChange] = []
        if epoch > self.epoch:
            if view is None:
                raise ValueError(
                    f"the first lease request of epoch {epoch} from {replica} carries no "
                    "data progress"
                )
            changes += self._reset(epoch, DataProgress.from_json(view), now)
        here = (self.progress.stage, self.progress.pass_index)
        if (stage, pass_index) < here:
            return Grant(None, stale=True), changes
        if (stage, pass_index) > here:
            changes += self._advance(stage, pass_index, now)
        if self.finished or source is None:
            return Grant(None), changes
        queue = self.queues.get(source)
        if queue is None:
            raise ValueError(f"stage {stage} has no source {source!r}")
        shards = self.plans[self.progress.stage].source(source).shards
        if not queue:
            return Grant(None, total=len(shards)), changes
        index = queue.pop(0)
        shard = shards[index]
        self.leased[shard.id] = replica
        # Each shard is handed out once per epoch, so the epoch's view says where it stands.
        cursor = self.progress.cursor(source, shard.id) or Cursor.at(shard.start_position)
        return Grant(shard, cursor, index=index, total=len(shards)), changes

    def commit(self, view: dict[str, Any] | None) -> None:
        """Rank 0 committed this view: what insight counts as done."""
        if view:
            self.committed = DataProgress.from_json(view)

    # --- epochs, passes and stages ------------------------------------------------------

    def _reset(self, epoch: int, view: DataProgress, now: float) -> list[StageChange]:
        changes = self._enter_stage(view.stage, now)
        self.epoch, self.progress, self.committed = epoch, view, view
        self.leased, self.answers = {}, {}
        self._fill_queues(streams=True)
        return changes

    def _advance(self, stage: int, pass_index: int, now: float) -> list[StageChange]:
        if stage == self.progress.stage:
            batch = self.plans[stage].batch_sources
            self.progress = self.progress.with_pass(pass_index, batch)
            self._fill_queues(streams=False)
            return []
        changes = self._enter_stage(stage, now)
        self.progress = DataProgress(stage)
        self.leased = {}
        self._fill_queues(streams=True)
        return changes

    def _enter_stage(self, stage: int, now: float) -> list[StageChange]:
        changes: list[StageChange] = []
        old = self.progress.stage
        # A rollback can cross a stage boundary again: each stage starts and ends once.
        if (
            old < len(self.spec.stages)
            and stage > old
            and self.times.get(old, [0, None])[1] is None
        ):
            self.times.setdefault(old, [None, None])[1] = now
            changes.append(StageChange(self.spec.stages[old].name, old, started=False))
            for skipped in range(old + 1, min(stage, len(self.spec.stages))):
                self.times[skipped] = [now, now]
        if stage < len(self.spec.stages) and self.times.get(stage, [None])[0] is None:
            self.times[stage] = [now, None]
            changes.append(StageChange(self.spec.stages[stage].name, stage, started=True))
        return changes

    def _fill_queues(self, streams: bool) -> None:
        if self.finished:
            self.queues = {}
            return
        plan = self.plans[self.progress.stage]
        for source in plan.sources:
            if source.is_stream and not streams:
                continue
            self.queues[source.name] = self._order(plan, source)

    def _order(self, plan: StagePlan, source: SourcePlan) -> list[int]:
        """Pending indexes: started shards first (finish what is open), the rest shuffled."""
        progress = self.progress
        if not source.is_stream and progress.batch_ended:
            return []
        order = list(range(len(source.shards)))
        shuffle = self.spec.shuffle
        if shuffle.shards and not source.is_stream:
            key = f"{shuffle.seed}:{plan.index}:{progress.pass_index}:{source.name}"
            random.Random(key).shuffle(order)  # all of them: the order must not depend on
            # how far the pass got, so a resumed pass goes on in the same order
        done = progress.done.get(source.name, set())
        pending = [i for i in order if i not in done]
        open_ = progress.cursors.get(source.name, {})
        started = [i for i in pending if source.shards[i].id in open_]
        return started + [i for i in pending if source.shards[i].id not in open_]

    # --- what the master saves -------------------------------------------------------

    def counts(self, stage: int, source: str) -> tuple[int, int, int]:
        """Shards done (committed), in flight (leased) and pending of a source."""
        plan = self.plans.get(stage)
        if plan is None:
            return 0, 0, 0
        shards = plan.source(source).shards
        passed = max(self.committed.stage, self.progress.stage)  # the group agreed it ended
        batch_ended = stage == self.committed.stage and self.committed.batch_ended
        if stage < passed or (batch_ended and not plan.source(source).is_stream):
            return len(shards), 0, 0
        if stage > self.progress.stage:
            return 0, 0, len(shards)
        done = len(self.committed.done.get(source, set())) if stage == self.committed.stage else 0
        ids = {shard.id for shard in shards}
        flight = sum(1 for shard in self.leased if shard in ids)
        pending = len(self.queues.get(source, [])) if stage == self.progress.stage else 0
        return done, flight, pending

    def snapshot(self) -> dict[str, Any]:
        return {
            "plans": {str(i): plan.to_json() for i, plan in self.plans.items()},
            "epoch": self.epoch,
            "progress": self.progress.to_json(),
            "committed": self.committed.to_json(),
            "queues": self.queues,
            "leased": self.leased,
            "times": {str(i): t for i, t in self.times.items()},
            "answers": {k: [i, grant] for k, (i, grant) in self.answers.items()},
        }

    @classmethod
    def restore(cls, spec: DataSpec, saved: dict[str, Any]) -> Dispatcher:
        return cls(
            spec=spec,
            plans={int(i): StagePlan.from_json(p) for i, p in saved["plans"].items()},
            epoch=int(saved["epoch"]),
            progress=DataProgress.from_json(saved["progress"]),
            committed=DataProgress.from_json(saved["committed"]),
            queues={k: [int(i) for i in v] for k, v in saved["queues"].items()},
            leased=dict(saved["leased"]),
            times={int(i): list(t) for i, t in saved["times"].items()},
            answers={k: (int(i), dict(grant)) for k, (i, grant) in saved["answers"].items()},
        )
