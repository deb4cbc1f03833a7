"""Membership epochs: who trains, at which rank, and when the group changes.

Pure: every input is a method call carrying ``now``, every output a list of effects
(send a message, post an event, evict a connection, save the state) that the server
carries out in order. No sockets, no clock, so each rule is tested on its own.

Life of a group::

    FORMING ──enough ready workers──► RUNNING ──join / leave / loss──► CHANGING
       ▲                                 ▲                                 │
       └──fewer than min after a round───┼──────every member accounted─────┘
    RESUMING (restarted master) ─all members reconnected─┘   (a mismatch: CHANGING)

- A *clean* change (a worker joins or leaves) sends ``change`` to the members; they
  agree on the step boundary among themselves and each sends ``sync``.
- A *failure* (a member's connection closed, a collective broke, a deadline passed)
  sends ``abort``: members drop the process group at once and roll back to their
  last commit before syncing.
- A round ends when every member of the epoch is accounted for (synced, left, lost,
  evicted). The next epoch keeps the survivors in their old order (rank 0 stays rank
  0 when it survives), then adds joiners up to ``max_workers``; its state comes from
  the survivor holding the highest step, or, when no member holds any (a fresh job,
  or every holder was lost), from the newest checkpoint (``restore`` in the epoch).
- Nothing waits forever on one replica: a member that misses a deadline is evicted
  with an event naming it, and the round goes on without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tidemill.master.effects import Effect, Evict, Notify, Save, Send
from tidemill.master.group import Phase, Replica, Rules
from tidemill.master.naming import describe_replicas, epoch_message, index_of, name_key, role_of
from tidemill.wire import Abort, Change, Epoch, Finished, Registered

STATE_VERSION = 1
HISTORY_LIMIT = 100


@dataclass
class Membership:
    rules: Rules
    store_host: str
    store_port: int
    now: float
    epoch: int = 0
    members: list[str] = field(default_factory=list)
    committed: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    phase: Phase = Phase.FORMING
    replicas: dict[str, Replica] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    """Members of a restored epoch that have not reconnected yet."""
    departed: dict[str, str] = field(default_factory=dict)
    """Members gone since the epoch began, with why (for the next epoch's event)."""
    round_failed: bool = False
    warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.phase_since = self.now
        self.last_registration = self.now

    @classmethod
    def restore(
        cls, rules: Rules, store_host: str, store_port: int, now: float, saved: Mapping[str, Any]
    ) -> Membership:
        """Resume from :meth:`snapshot`: wait for the saved members to reconnect."""
        if saved.get("version") != STATE_VERSION:
            raise ValueError(
                f"saved master state has version {saved.get('version')!r}; this master "
                f"reads version {STATE_VERSION}"
            )
        state = cls(
            rules,
            store_host,
            store_port,
            now,
            epoch=int(saved["epoch"]),
            members=[str(name) for name in saved["members"]],
            committed=saved.get("committed"),
            history=list(saved.get("history", [])),
        )
        if saved.get("finished"):
            state.phase = Phase.FINISHED
        elif state.members:
            state.phase = Phase.RESUMING
            state.missing = set(state.members)
        return state

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "members": list(self.members),
            "world_size": len(self.members),
            "phase": self.phase.value,
            "committed": self.committed,
            "history": self.history[-HISTORY_LIMIT:],
            "finished": self.phase is Phase.FINISHED,
        }

    # --- inputs -------------------------------------------------------------------

    def register(
        self,
        name: str,
        pid: int,
        status: str,
        epoch: int | None,
        step: int | None,
        now: float,
        data: Any = None,
    ) -> list[Effect]:
        """A new connection names itself; the server has already refused duplicates."""
        if self.phase is Phase.FINISHED:
            return [Send(name, Finished(self._committed_step()))]
        replica = Replica(name, pid, "ready", since=now)
        self.replicas[name] = replica
        self.last_registration = now
        effects: list[Effect] = [Send(name, Registered(name))]
        resumes = (
            self.phase is Phase.RESUMING
            and status == "member"
            and epoch == self.epoch
            and name in self.missing
        )
        if resumes:
            self.missing.discard(name)
            replica.status, replica.formed = "member", True
            if not self.missing:
                effects += self._resumed(now)
            return effects + self._advance(now)
        if name in self.missing:
            # It synced, or restarted, while the master was down: the saved epoch is over.
            self.missing.discard(name)
            if status == "new":
                self.departed[name] = "restarted"
            effects += self._start_round(failed=True, now=now)
        if status == "member":
            replica.status = "stale"
            self.epoch = max(self.epoch, epoch or 0)
            effects.append(Send(name, Abort(epoch or 0)))
            if self.phase is Phase.RESUMING:
                effects += self._start_round(failed=True, now=now)
        elif status == "ready":
            replica.step, replica.data = step, data
            self.epoch = max(self.epoch, epoch or 0)
        return effects + self._advance(now)

    def sync(
        self,
        name: str,
        epoch: int,
        step: int | None,
        failed: bool,
        now: float,
        data: Any = None,
    ) -> list[Effect]:
        """A member stopped training in ``epoch`` and holds state at ``step`` (None: it
        holds none, e.g. a newcomer whose first epoch broke)."""
        replica = self.replicas.get(name)
        if replica is None:
            return []
        was_member = replica.status == "member" and epoch == self.epoch
        replica.status, replica.step, replica.data = "ready", step, data
        replica.formed = False
        effects: list[Effect] = []
        if was_member:
            effects += self._start_round(failed=failed, now=now)
        return effects + self._advance(now)

    def formed(self, name: str, epoch: int) -> list[Effect]:
        replica = self.replicas.get(name)
        if replica is not None and replica.status == "member" and epoch == self.epoch:
            replica.formed = True
        return []

    def commit(self, name: str, epoch: int, step: int, data: Any, extras: Any) -> list[Effect]:
        """Rank 0 committed; newer commits win (a rolled-back group re-commits lower steps
        only in a later epoch)."""
        replica = self.replicas.get(name)
        if replica is None or epoch != self.epoch or replica.status != "member":
            return []
        self.committed = {"epoch": epoch, "step": step, "data": data, "extras": extras}
        return [Save(urgent=False)]

    def restored(self, name: str, step: int, data: Any) -> list[Effect]:
        """The source of a group with no state adopted a checkpoint at ``step``."""
        replica = self.replicas.get(name)
        if replica is None or replica.status != "member":
            return []
        self.committed = {"epoch": self.epoch, "step": step, "data": data, "extras": None}
        if self.history and self.history[-1]["epoch"] == self.epoch:
            self.history[-1]["step"] = step
        return [Save(urgent=False)]

    def leave(self, name: str, now: float) -> list[Effect]:
        """A worker leaves for good (scale-in); the others re-form without it."""
        replica = self.replicas.pop(name, None)
        if replica is None:
            return []
        effects: list[Effect] = []
        if name in self.members and replica.status in ("member", "ready"):
            self.departed[name] = "left"
            if replica.status == "member":
                effects += self._start_round(failed=False, now=now)
        return effects + self._advance(now)

    def done(self, name: str, step: int, now: float) -> list[Effect]:
        """A member's training function returned; when all have, the job's training is over."""
        replica = self.replicas.get(name)
        if replica is None or replica.status != "member":
            return []
        replica.done, replica.step = True, step
        return self._finish_if_done(step)

    def _finish_if_done(self, step: int) -> list[Effect]:
        members = [self.replicas[m] for m in self.members if m in self.replicas]
        if self.phase not in (Phase.RUNNING, Phase.CHANGING) or not all(m.done for m in members):
            return []
        self.phase = Phase.FINISHED
        self.committed = {**(self.committed or {}), "step": step}
        waiting = [r.name for r in self.replicas.values() if r.status != "member"]
        return [
            Save(urgent=True),
            Notify(
                "Normal",
                "TrainingFinished",
                f"training finished at step {step} in epoch {self.epoch} "
                f"({describe_replicas(self.members)})",
            ),
            *(Send(name, Finished(step)) for name in waiting),
        ]

    def lost(self, name: str, why: str, now: float) -> list[Effect]:
        """The connection closed without ``leave`` or ``done``: the process is gone."""
        replica = self.replicas.pop(name, None)
        if replica is None or replica.done:
            return []
        finished = [
            self.replicas[m].step or 0
            for m in self.members
            if m in self.replicas and self.replicas[m].done
        ]
        if name in self.members and replica.status == "member" and finished:
            # The members end training together, at one agreed step: a member lost after
            # another has returned from it had nothing left to train either.
            return self._finish_if_done(max(finished))
        effects: list[Effect] = []
        if name in self.members and replica.status in ("member", "ready"):
            self.departed.setdefault(name, "lost")
            effects.append(
                Notify(
                    "Warning",
                    "WorkerLost",
                    f"{name} (pid {replica.pid}) lost in epoch {self.epoch}: {why}; the "
                    "others roll back to their last commit and continue without it",
                    name,
                )
            )
            if replica.status == "member":
                effects += self._start_round(failed=True, now=now)
        return effects + self._advance(now)

    def tick(self, now: float) -> list[Effect]:
        """Deadlines: evict who does not answer, name who never came."""
        effects: list[Effect] = []
        late = now - self.phase_since > self.rules.timeout_s
        if self.phase is Phase.RUNNING and late:
            slow = [m for m in self._with_status("member") if not m.formed]
            what = f"form the process group of epoch {self.epoch}"
            effects += self._evict(slow, what, now)
        elif self.phase is Phase.CHANGING and late:
            what = f"reach a step boundary to leave epoch {self.epoch}"
            effects += self._evict(self._with_status("member"), what, now)
        if self.missing and now - self.phase_since > self.rules.reconnect_timeout_s:
            for name in sorted(self.missing):
                self.departed[name] = "did not reconnect"
                effects.append(
                    Notify(
                        "Warning",
                        "RegistrationTimeout",
                        f"{name} did not reconnect to the restarted master within "
                        f"{self.rules.reconnect_timeout_s:g} s; continuing without it",
                        name,
                    )
                )
            self.missing.clear()
            effects += self._start_round(failed=True, now=now)
        stale = [r for r in self._with_status("stale") if now - r.since > self.rules.timeout_s]
        effects += self._evict(stale, "drop the process group of a finished epoch", now)
        if self.phase is Phase.FORMING:
            effects += self._name_the_missing(now)
        return effects + self._advance(now)

    # --- transitions --------------------------------------------------------------

    def _advance(self, now: float) -> list[Effect]:
        ready = self._with_status("ready")
        if self.phase is Phase.CHANGING:
            if not self._with_status("member") and not self.missing:
                return self._declare(now)
        elif self.phase is Phase.FORMING:
            settled = now - self.last_registration >= self.rules.settle_s
            holds_state = any(r.step is not None for r in ready)
            enough = len(ready) >= self.rules.min_workers
            if len(ready) >= self.rules.max_workers or (enough and (settled or holds_state)):
                return self._declare(now)
        elif self.phase is Phase.RUNNING:
            room = len(self.members) < self.rules.max_workers
            settled = now - self.last_registration >= self.rules.settle_s
            if ready and room and settled:
                return self._start_round(failed=False, now=now)
            if ready and not room:
                return self._at_capacity(ready)
        return []

    def _start_round(self, failed: bool, now: float) -> list[Effect]:
        if self.phase is Phase.CHANGING and (self.round_failed or not failed):
            return []
        if self.phase in (Phase.FORMING, Phase.FINISHED):
            return []
        if self.phase is not Phase.CHANGING:
            self.phase, self.phase_since = Phase.CHANGING, now
        self.round_failed = failed
        kind = Abort if failed else Change
        return [Send(member.name, kind(self.epoch)) for member in self._with_status("member")]

    def _declare(self, now: float) -> list[Effect]:
        ready = self._with_status("ready")
        rank = {name: i for i, name in enumerate(self.members)}
        ready.sort(
            key=lambda r: (
                rank.get(r.name, len(rank)),
                r.step is None,
                -(r.step or 0),
                name_key(r.name),
            )
        )
        chosen = ready[: self.rules.max_workers]
        if len(chosen) < self.rules.min_workers:
            return self._wait_for_more(len(chosen), now)
        holders = [r for r in chosen if r.step is not None]
        source = max(holders, key=lambda r: r.step or 0) if holders else chosen[0]
        step = source.step or 0
        previous = set(self.members)
        joined = [r.name for r in chosen if r.name not in previous]
        left = dict(self.departed)
        self.epoch += 1
        self.members = [r.name for r in chosen]
        self.phase, self.phase_since = Phase.RUNNING, now
        self.departed, self.round_failed, self.warned = {}, False, set()
        restores = not holders and self.rules.restores_checkpoints
        if not restores:
            same = self._committed_step() == step
            extras = (self.committed or {}).get("extras") if same else None
            self.committed = {
                "epoch": self.epoch,
                "step": step,
                "data": source.data,
                "extras": extras,
            }
        # else: the source restores a checkpoint and reports its step (see restored());
        # until then the last record of a commit stays what the master knows.
        self.history.append(
            {"epoch": self.epoch, "world_size": len(chosen), "step": step, "time": now}
        )
        start = (
            "from the newest checkpoint (if none, from the start)"
            if restores
            else f"from step {step}"
        )
        effects: list[Effect] = [
            Save(urgent=True),
            Notify(
                "Normal",
                "EpochStarted",
                epoch_message(self.epoch, self.members, joined, left, start),
            ),
        ]
        source_rank = self.members.index(source.name)
        members = tuple(self.members)
        for rank_of, replica in enumerate(chosen):
            replica.status, replica.formed, replica.step, replica.data = "member", False, None, None
            effects.append(
                Send(
                    replica.name,
                    Epoch(
                        epoch=self.epoch,
                        rank=rank_of,
                        world_size=len(chosen),
                        members=members,
                        store_host=self.store_host,
                        store_port=self.store_port,
                        prefix=f"epoch/{self.epoch}",
                        source_rank=source_rank,
                        step=step,
                        timeout_s=self.rules.timeout_s,
                        restore=not holders,
                    ),
                )
            )
        return effects

    def _resumed(self, now: float) -> list[Effect]:
        self.phase, self.phase_since = Phase.RUNNING, now
        return [
            Notify(
                "Normal",
                "MasterResumed",
                f"resumed epoch {self.epoch}: {describe_replicas(self.members)} reconnected "
                f"and train on; last committed step {self._committed_step()}",
            )
        ]

    def _wait_for_more(self, have: int, now: float) -> list[Effect]:
        if self.phase is not Phase.FORMING:
            self.phase, self.phase_since = Phase.FORMING, now
        if "below-min" in self.warned:
            return []
        self.warned.add("below-min")
        return [
            Notify(
                "Warning",
                "WaitingForWorkers",
                f"{have} worker(s) ready, the group needs at least {self.rules.min_workers} "
                "(minReplicas); training resumes when more register",
            )
        ]

    def _at_capacity(self, ready: list[Replica]) -> list[Effect]:
        effects: list[Effect] = []
        for replica in ready:
            key = f"full:{replica.name}"
            if key not in self.warned:
                self.warned.add(key)
                effects.append(
                    Notify(
                        "Normal",
                        "AtMaxReplicas",
                        f"{replica.name} waits: the group already has "
                        f"{self.rules.max_workers} workers (maxReplicas)",
                        replica.name,
                    )
                )
        return effects

    def _name_the_missing(self, now: float) -> list[Effect]:
        if now - self.phase_since < self.rules.register_timeout_s:
            return []
        expected = self.members or [f"worker-{i}" for i in range(self.rules.min_workers)]
        effects: list[Effect] = []
        for name in expected:
            if name in self.replicas or f"never:{name}" in self.warned:
                continue
            self.warned.add(f"never:{name}")
            effects.append(
                Notify(
                    "Warning",
                    "RegistrationTimeout",
                    f"{name} has not registered with the job master within "
                    f"{self.rules.register_timeout_s:g} s; {len(self._with_status('ready'))} "
                    f"of at least {self.rules.min_workers} workers are ready. Check its log "
                    f"(tidemill logs JOB --role {role_of(name)} --index {index_of(name)})",
                    name,
                )
            )
        return effects

    def _evict(self, replicas: list[Replica], what: str, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for replica in replicas:
            message = (
                f"{replica.name} (pid {replica.pid}) did not {what} within "
                f"{self.rules.timeout_s:g} s; removed it from the group"
            )
            del self.replicas[replica.name]
            if replica.name in self.members:
                self.departed[replica.name] = "evicted"
            effects += [
                Notify("Warning", "RendezvousTimeout", message, replica.name),
                Evict(replica.name, message),
            ]
        if effects:
            effects += self._start_round(failed=True, now=now)
        return effects

    def _with_status(self, status: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.status == status]

    def _committed_step(self) -> int:
        return int((self.committed or {}).get("step", 0))
