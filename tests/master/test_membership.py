"""Membership rules, pure: registrations, rounds and deadlines in, messages and events out."""

from __future__ import annotations

import doctest
from typing import TypeVar

import pytest

import tidemill.master.naming
from tidemill.master.effects import Effect, Evict, Notify, Save, Send
from tidemill.master.group import Phase, Rules
from tidemill.master.membership import Membership
from tidemill.wire import Abort, Change, Epoch, Finished, MasterMessage, Registered

M = TypeVar("M", bound=MasterMessage)


def group(low: int = 1, high: int = 4, **rules: float) -> Membership:
    return Membership(Rules(low, high, **rules), "127.0.0.1", 5000, now=0.0)


def sent(effects: list[Effect], kind: type[M]) -> dict[str, M]:
    """Messages of type ``kind`` by replica."""
    return {
        e.replica: e.message for e in effects if isinstance(e, Send) and isinstance(e.message, kind)
    }


def events(effects: list[Effect]) -> list[tuple[str, str, str | None]]:
    return [(e.reason, e.message, e.replica) for e in effects if isinstance(e, Notify)]


def running(names: list[str], high: int = 4, low: int = 1) -> Membership:
    """A group whose first epoch formed with ``names``, all formed."""
    state = group(low, high)
    for name in names:
        state.register(name, 100 + int(name.split("-")[1]), "new", None, None, now=0.0)
    state.tick(now=5.0)
    for name in names:
        state.formed(name, state.epoch)
    assert state.phase is Phase.RUNNING and state.members == names
    return state


def test_the_first_epoch_waits_for_late_starters_then_ranks_by_name() -> None:
    state = group(low=2, high=4, settle_s=1.0)

    state.register("worker-1", 11, "new", None, None, now=0.0)
    early = state.register("worker-0", 10, "new", None, None, now=0.5)
    waiting = state.tick(now=1.2)
    formed = state.tick(now=1.6)

    assert sent(early, Registered) == {"worker-0": Registered("worker-0")}
    assert not sent(waiting, Epoch)
    epochs = sent(formed, Epoch)
    assert [epochs[n].rank for n in ("worker-0", "worker-1")] == [0, 1]
    assert epochs["worker-1"] == Epoch(
        epoch=1,
        rank=1,
        world_size=2,
        members=("worker-0", "worker-1"),
        store_host="127.0.0.1",
        store_port=5000,
        prefix="epoch/1",
        source_rank=0,
        step=0,
        timeout_s=60.0,
        restore=True,
    )
    assert formed[0] == Save(urgent=True), "the epoch is saved before it is announced"
    assert events(formed) == [
        ("EpochStarted", "epoch 1: 2 workers (worker-0, worker-1); from step 0", None)
    ]


def test_the_first_epoch_forms_at_once_when_the_maximum_registered() -> None:
    state = group(low=1, high=2, settle_s=60.0)
    state.register("worker-0", 10, "new", None, None, now=0.0)
    effects = state.register("worker-1", 11, "new", None, None, now=0.1)
    assert set(sent(effects, Epoch)) == {"worker-0", "worker-1"}


def test_a_lost_member_aborts_the_epoch_and_the_survivors_reform_from_the_newest_state() -> None:
    state = running(["worker-0", "worker-1", "worker-2", "worker-3"])

    lost = state.lost("worker-2", "connection closed", now=10.0)
    state.sync("worker-0", 1, 20, failed=True, now=10.1)
    state.sync("worker-3", 1, 30, failed=True, now=10.1, data={"offset": 1800})
    declared = state.sync("worker-1", 1, 20, failed=True, now=10.2)

    assert sent(lost, Abort) == {n: Abort(1) for n in ("worker-0", "worker-1", "worker-3")}
    assert events(lost)[0][0] == "WorkerLost" and events(lost)[0][2] == "worker-2"
    epochs = sent(declared, Epoch)
    assert {n: m.rank for n, m in epochs.items()} == {
        "worker-0": 0,
        "worker-1": 1,
        "worker-3": 2,
    }
    assert {m.source_rank for m in epochs.values()} == {2}, "worker-3 holds step 30, the newest"
    assert {m.step for m in epochs.values()} == {30}
    assert events(declared) == [
        (
            "EpochStarted",
            "epoch 2: 3 workers (worker-0, worker-1, worker-3); left worker-2 (lost); from step 30",
            None,
        )
    ]
    assert state.snapshot()["committed"] == {
        "epoch": 2,
        "step": 30,
        "data": {"offset": 1800},
        "extras": None,
    }


def test_joiners_wait_for_the_settle_time_then_the_members_are_asked_to_change() -> None:
    state = running(["worker-0", "worker-1"])

    state.register("worker-2", 12, "new", None, None, now=10.0)
    too_soon = state.register("worker-3", 13, "new", None, None, now=10.5)
    asked = state.tick(now=11.6)
    state.sync("worker-0", 1, 40, failed=False, now=11.7)
    declared = state.sync("worker-1", 1, 40, failed=False, now=11.7)

    assert not sent(too_soon, Change)
    assert sent(asked, Change) == {n: Change(1) for n in ("worker-0", "worker-1")}
    epochs = sent(declared, Epoch)
    assert [epochs[f"worker-{i}"].rank for i in range(4)] == [0, 1, 2, 3]
    assert (
        events(declared)[0][1]
        == "epoch 2: 4 workers (worker-0..worker-3), joined worker-2, worker-3; from step 40"
    )


def test_a_joiner_beyond_the_maximum_waits_with_an_event() -> None:
    state = running(["worker-0", "worker-1"], high=2)
    effects = state.register("worker-2", 12, "new", None, None, now=10.0) + state.tick(now=20.0)
    assert not sent(effects, Change)
    assert events(effects) == [
        (
            "AtMaxReplicas",
            "worker-2 waits: the group already has 2 workers (maxReplicas)",
            "worker-2",
        )
    ]


def test_a_leaver_is_dropped_cleanly_at_the_boundary() -> None:
    state = running(["worker-0", "worker-1", "worker-2"])

    state.sync("worker-0", 1, 50, failed=False, now=10.0)
    state.leave("worker-1", now=10.0)
    declared = state.sync("worker-2", 1, 50, failed=False, now=10.1)

    assert sent(declared, Epoch)["worker-2"].rank == 1
    assert (
        events(declared)[0][1]
        == "epoch 2: 2 workers (worker-0, worker-2); left worker-1 (left); from step 50"
    )


def test_a_member_that_never_reaches_the_boundary_is_evicted_by_name() -> None:
    state = running(["worker-0", "worker-1"])
    state.register("worker-2", 12, "new", None, None, now=10.0)
    state.tick(now=12.0)
    state.sync("worker-0", 1, 7, failed=False, now=12.1)

    effects = state.tick(now=73.0)

    assert Evict("worker-1", events(effects)[0][1]) in effects
    assert events(effects)[0] == (
        "RendezvousTimeout",
        "worker-1 (pid 101) did not reach a step boundary to leave epoch 1 within 60 s; "
        "removed it from the group",
        "worker-1",
    )
    assert set(sent(effects, Epoch)) == {"worker-0", "worker-2"}


def test_a_member_that_never_forms_the_group_is_evicted_and_the_others_reform() -> None:
    state = group(low=1, high=3)
    for name in ("worker-0", "worker-1"):
        state.register(name, 1, "new", None, None, now=0.0)
    state.tick(now=2.0)
    state.formed("worker-0", 1)

    effects = state.tick(now=63.0)

    assert events(effects)[0][0] == "RendezvousTimeout" and events(effects)[0][2] == "worker-1"
    assert sent(effects, Abort) == {"worker-0": Abort(1)}


def test_missing_replicas_are_named_after_the_registration_timeout_and_do_not_block_others() -> (
    None
):
    state = group(low=2, high=4, register_timeout_s=30.0)
    state.register("worker-0", 10, "new", None, None, now=0.0)

    assert not events(state.tick(now=29.0))
    named = state.tick(now=31.0)
    assert [(reason, replica) for reason, _, replica in events(named)] == [
        ("RegistrationTimeout", "worker-1")
    ]
    assert "worker-1 has not registered with the job master within 30 s" in events(named)[0][1]
    assert not events(state.tick(now=40.0)), "each missing replica is named once"
    late = state.register("worker-1", 11, "new", None, None, now=50.0) + state.tick(now=52.0)
    assert set(sent(late, Epoch)) == {"worker-0", "worker-1"}


def test_a_group_below_its_minimum_waits_with_its_state_for_a_replacement() -> None:
    state = running(["worker-0", "worker-1"], low=2)
    state.lost("worker-1", "connection closed", now=10.0)
    waiting = state.sync("worker-0", 1, 90, failed=True, now=10.1)
    assert state.phase is Phase.FORMING
    assert events(waiting)[0][0] == "WaitingForWorkers"

    back = state.register("worker-1", 21, "new", None, None, now=15.0)

    epochs = sent(back, Epoch)
    assert epochs["worker-0"].source_rank == 0 and epochs["worker-0"].step == 90


def test_a_restored_master_resumes_when_every_member_reconnects_in_its_epoch() -> None:
    old = running(["worker-0", "worker-1"])
    old.commit("worker-0", 1, 70, {"offset": 4200}, {"lr": 0.1})
    state = Membership.restore(old.rules, "127.0.0.1", 6000, 100.0, old.snapshot())
    assert state.phase is Phase.RESUMING

    first = state.register("worker-1", 31, "member", 1, None, now=101.0)
    second = state.register("worker-0", 30, "member", 1, None, now=101.5)

    assert not sent(first + second, Epoch) and not sent(first + second, Abort)
    assert state.phase is Phase.RUNNING and state.epoch == 1
    assert events(second) == [
        (
            "MasterResumed",
            "resumed epoch 1: worker-0, worker-1 reconnected and train on; last committed step 70",
            None,
        )
    ]


def test_a_restored_master_reforms_without_a_member_that_does_not_come_back() -> None:
    old = running(["worker-0", "worker-1"])
    state = Membership.restore(old.rules, "127.0.0.1", 6000, 100.0, old.snapshot())
    state.register("worker-0", 30, "member", 1, None, now=101.0)

    timed_out = state.tick(now=116.0)
    declared = state.sync("worker-0", 1, 60, failed=True, now=116.1)

    assert (
        events(timed_out)[0][0] == "RegistrationTimeout" and events(timed_out)[0][2] == "worker-1"
    )
    assert sent(timed_out, Abort) == {"worker-0": Abort(1)}
    assert sent(declared, Epoch)["worker-0"].store_port == 6000
    assert state.epoch == 2


def test_a_claim_from_an_epoch_the_master_never_saved_forces_a_new_epoch_numbered_above_it() -> (
    None
):
    old = running(["worker-0"])
    state = Membership.restore(old.rules, "127.0.0.1", 6000, 100.0, old.snapshot())

    claim = state.register("worker-0", 30, "member", 3, None, now=101.0)
    declared = state.sync("worker-0", 3, 12, failed=True, now=101.1)

    assert sent(claim, Abort) == {"worker-0": Abort(3)}
    assert sent(declared, Epoch)["worker-0"].epoch == 4


def test_when_every_member_is_done_training_is_finished_and_late_joiners_are_told() -> None:
    state = running(["worker-0", "worker-1"])
    state.register("worker-2", 12, "new", None, None, now=9.0)
    state.done("worker-0", 100, now=10.0)
    effects = state.done("worker-1", 100, now=10.0)
    assert state.phase is Phase.FINISHED
    assert sent(effects, Finished) == {"worker-2": Finished(100)}
    late = Membership.restore(state.rules, "h", 1, 20.0, state.snapshot())
    assert late.register("worker-5", 15, "new", None, None, now=21.0) == [
        Send("worker-5", Finished(100))
    ]


def test_a_member_lost_after_another_finished_does_not_reopen_the_finished_training() -> None:
    """Members end together; one killed between its last step and its ``done`` had
    nothing left to train, so the survivors are not held at a boundary they never reach."""
    state = running(["worker-0", "worker-1", "worker-2"])
    state.done("worker-0", 61, now=10.0)
    state.done("worker-2", 61, now=10.0)
    effects = state.lost("worker-1", "connection closed", now=10.5)
    assert state.phase is Phase.FINISHED
    assert [e.reason for e in effects if isinstance(e, Notify)] == ["TrainingFinished"]
    assert state.register("worker-1", 30, "new", None, None, now=11.0) == [
        Send("worker-1", Finished(61))
    ]


def test_the_first_epoch_of_fresh_workers_restores_from_the_newest_checkpoint() -> None:
    state = group(low=2, high=2)
    state.register("worker-0", 10, "new", None, None, now=0.0)
    effects = state.register("worker-1", 11, "new", None, None, now=0.1)

    epochs = sent(effects, Epoch)
    assert set(epochs) == {"worker-0", "worker-1"}
    assert all(epoch.restore for epoch in epochs.values()), "no member holds any state"


def test_a_reformation_around_a_survivor_holding_state_does_not_restore() -> None:
    state = running(["worker-0", "worker-1"])
    state.register("worker-2", 12, "new", None, None, now=10.0)
    state.tick(now=11.0)
    state.sync("worker-0", 1, 40, failed=False, now=11.1)
    declared = state.sync("worker-1", 1, 40, failed=False, now=11.1)

    epochs = sent(declared, Epoch)
    assert set(epochs) == {"worker-0", "worker-1", "worker-2"}
    assert not any(epoch.restore for epoch in epochs.values()), "the survivors hold step 40"
    assert {epoch.step for epoch in epochs.values()} == {40}


def test_replacements_for_a_group_that_lost_every_member_restore_from_the_checkpoint() -> None:
    state = running(["worker-0", "worker-1"], high=2)
    state.commit("worker-0", 1, 70, {"offset": 4200}, None)
    state.lost("worker-0", "connection closed", now=10.0)
    gone = state.lost("worker-1", "connection closed", now=10.1)
    assert not sent(gone, Epoch) and state.phase is Phase.FORMING

    state.register("worker-0", 20, "new", None, None, now=15.0)
    back = state.register("worker-1", 21, "new", None, None, now=15.1)

    epochs = sent(back, Epoch)
    assert set(epochs) == {"worker-0", "worker-1"} and state.epoch == 2
    assert all(epoch.restore for epoch in epochs.values()), "the replacements hold nothing"


def test_with_checkpoints_the_last_commit_is_kept_until_the_restored_step_is_reported() -> None:
    state = Membership(Rules(1, 2, restores_checkpoints=True), "127.0.0.1", 5000, now=0.0)
    state.register("worker-0", 10, "new", None, None, now=0.0)
    state.tick(now=5.0)
    state.formed("worker-0", 1)
    state.commit("worker-0", 1, 70, {"offset": 4200}, None)
    state.lost("worker-0", "connection closed", now=10.0)

    back = state.register("worker-0", 20, "new", None, None, now=15.0)
    back += state.tick(now=16.0)
    assert sent(back, Epoch)["worker-0"].restore
    assert (
        "EpochStarted",
        "epoch 2: 1 worker (worker-0); left worker-0 (lost); from the "
        "newest checkpoint (if none, from the start)",
        None,
    ) in events(back)
    assert state.snapshot()["committed"]["step"] == 70, "nothing was restored yet"

    assert state.restored("worker-0", 64, {"offset": 3800}) == [Save(urgent=False)]
    saved = state.snapshot()
    assert saved["committed"] == {"epoch": 2, "step": 64, "data": {"offset": 3800}, "extras": None}
    assert saved["history"][-1]["step"] == 64
    assert state.restored("worker-9", 1, None) == [], "only a member reports a restore"


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="1 <= min <= max, got min=3 max=2"):
        Rules(3, 2)


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(tidemill.master.naming)
    assert result.attempted > 0 and result.failed == 0
