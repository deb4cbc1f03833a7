"""The lifecycle step decides; these tables pin what it decides.

Each case is a job snapshot, its spec and what the engine saw; the step's actions are
shown as short lines (``Backoff worker-1``, ``Transition Restarting``) in the order the
step emits them. No store, no engine, no clock.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.actions import (
    Action,
    Backoff,
    Event,
    Exited,
    Finishing,
    Kill,
    Launch,
    Relocate,
    ReplicaAction,
    Terminate,
    Transition,
    Unplace,
)
from tidemill.controller.broken import fail_broken
from tidemill.controller.conditions import ALLOWED, IllegalTransition, check_transition
from tidemill.controller.lifecycle import LifecycleConfig, step
from tidemill.controller.model import Adoption, JobSnapshot, Outcome, ReplicaSnapshot, Seen
from tidemill.engines._supervise import CONTROL_PLANE_ENDED
from tidemill.engines.base import Observation, ReplicaHandle

NOW = 1000.0
R = ReplicaPhase
CONFIG = LifecycleConfig(stop_grace_s=5, drain_grace_s=30)
SUSPENDING = Outcome(JobPhase.SUSPENDED, "Suspended", "suspended by alice")


def handle(name: str) -> ReplicaHandle:
    return ReplicaHandle("test", {"replica": name})


def replica(name: str, phase: ReplicaPhase = R.RUNNING, **fields: Any) -> ReplicaSnapshot:
    """``worker-1`` in ``phase``; running and stopping replicas have a handle."""
    role, index = name.rsplit("-", 1)
    defaults: dict[str, Any] = {"pid": 100 + int(index), "starts": 1}
    if phase in (R.RUNNING, R.STOPPING):
        defaults["handle"] = handle(name)
    return ReplicaSnapshot(role, int(index), phase, "n1", **{**defaults, **fields})


def job(*replicas: ReplicaSnapshot, **fields: Any) -> JobSnapshot:
    defaults: dict[str, Any] = {"phase": JobPhase.RUNNING, "started_at": NOW - 10}
    return JobSnapshot(1, "uid-1", "ads", "ctr", replicas=replicas, **{**defaults, **fields})


def spec(
    workers: int = 2,
    *,
    mode: str = "allreduce",
    restart: str = "OnFailure",
    max_restarts: int = 3,
    elastic: tuple[int, int] | None = None,
    ps: int = 0,
    deadline_s: int | None = None,
) -> TrainingJob:
    worker: dict[str, Any] = {
        "replicas": workers,
        "command": ["python", "train.py"],
        "restartPolicy": restart,
        "maxRestarts": max_restarts,
    }
    if elastic is not None:
        worker.update(minReplicas=elastic[0], maxReplicas=elastic[1])
    roles: dict[str, Any] = {"worker": worker}
    if ps:
        roles["ps"] = {"replicas": ps, "command": ["python", "ps.py"]}
    document: dict[str, Any] = {"mode": mode, "roles": roles, "restartBackoffSeconds": 1}
    if deadline_s is not None:
        document["activeDeadlineSeconds"] = deadline_s
    return TrainingJob.model_validate({"metadata": {"name": "ctr"}, "spec": document})


ALIVE = Observation(running=True)


def exited(code: int | None) -> Observation:
    return Observation(running=False, exit_code=code, message=f"exited with code {code}")


def shown(action: Action) -> str:
    """One action as a short line: its kind, then what it is about."""
    kind = type(action).__name__
    if isinstance(action, Exited):
        return f"{kind} {action.replica} {action.phase}"
    if isinstance(action, Launch) and action.launch_id is not None:
        return f"{kind} {action.replica} {action.launch_id}"
    if isinstance(action, ReplicaAction):
        return f"{kind} {action.replica}"
    if isinstance(action, Transition):
        return f"{kind} {action.phase}"
    if isinstance(action, Event):
        return f"{kind} {action.reason}"
    if isinstance(action, Finishing):
        return f"{kind} {action.outcome.phase} {action.outcome.reason}"
    return kind


@dataclass(frozen=True)
class Case:
    job: JobSnapshot
    seen: dict[str, Seen]
    expected: list[str]
    spec: TrainingJob = field(default_factory=spec)


CASES = [
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1")),
            {"worker-0": ALIVE, "worker-1": exited(1)},
            [
                "Exited worker-1 Failed",
                "Event ReplicaFailed",
                "Terminate worker-0",
                "Backoff worker-1",
                "GangRestarted",
                "Transition Restarting",
            ],
        ),
        id="a failed AllReduce worker restarts the whole gang: the others are asked to stop",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1"), replica("master-0")),
            {"worker-0": ALIVE, "worker-1": exited(1), "master-0": ALIVE},
            [
                "Exited worker-1 Failed",
                "Event ReplicaFailed",
                "Backoff worker-1",
                "Transition Restarting",
            ],
            spec(elastic=(1, 2)),
        ),
        id="a failed elastic worker restarts alone while the others train on",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1")),
            {"worker-0": ALIVE, "worker-1": exited(1)},
            [
                "Exited worker-1 Failed",
                "Event ReplicaFailed",
                "Finishing Failed ReplicaFailed",
                "Terminate worker-0",
            ],
            spec(restart="Never"),
        ),
        id="under restartPolicy Never a failure fails the job, which first stops the rest",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1", restarts=3)),
            {"worker-0": ALIVE, "worker-1": exited(1)},
            [
                "Exited worker-1 Failed",
                "Event ReplicaFailed",
                "Finishing Failed ReplicaFailed",
                "Terminate worker-0",
            ],
        ),
        id="a replica that has used up maxRestarts fails the job",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1")),
            {"worker-0": exited(0), "worker-1": exited(0)},
            [
                "Exited worker-0 Succeeded",
                "Event ReplicaSucceeded",
                "Exited worker-1 Succeeded",
                "Event ReplicaSucceeded",
                "Finishing Succeeded JobSucceeded",
                "Transition Succeeded",
                "ExpireAt",
            ],
        ),
        id="a job whose workers all succeeded and nothing else runs succeeds at once",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("ps-0")),
            {"worker-0": exited(0), "ps-0": ALIVE},
            [
                "Exited worker-0 Succeeded",
                "Event ReplicaSucceeded",
                "Finishing Succeeded JobSucceeded",
                "Terminate ps-0",
            ],
            spec(1, mode="ps", ps=1),
        ),
        id="parameter servers are asked to stop when the workers succeed; the job waits",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.SUCCEEDED),
                replica("ps-0", R.STOPPING, kill_at=NOW + 3),
                outcome=Outcome(JobPhase.SUCCEEDED, "JobSucceeded", "succeeded"),
            ),
            {"ps-0": exited(143)},
            ["Exited ps-0 Stopped", "Transition Succeeded", "ExpireAt"],
            spec(1, mode="ps", ps=1),
        ),
        id="a finishing job takes its decided phase once its last stopping replica is gone",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.SUCCEEDED),
                replica("ps-0", R.STOPPING, kill_at=NOW),
                outcome=Outcome(JobPhase.SUCCEEDED, "JobSucceeded", "succeeded"),
            ),
            {"ps-0": ALIVE},
            ["Event ReplicaKilled", "Kill ps-0"],
            spec(1, mode="ps", ps=1),
        ),
        id="a replica that ignores SIGTERM is killed at its deadline",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.SUCCEEDED),
                replica("ps-0", R.STOPPING, kill_at=NOW + 1),
                outcome=Outcome(JobPhase.SUCCEEDED, "JobSucceeded", "succeeded"),
            ),
            {"ps-0": ALIVE},
            [],
            spec(1, mode="ps", ps=1),
        ),
        id="a replica still within its grace is left to stop by itself",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1"), started_at=NOW - 61),
            {"worker-0": ALIVE, "worker-1": ALIVE},
            ["Finishing Failed DeadlineExceeded", "Terminate worker-0", "Terminate worker-1"],
            spec(deadline_s=60),
        ),
        id="a job running past activeDeadlineSeconds fails and stops its replicas",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1"), unresponsive={"worker-1": 101}),
            {"worker-0": ALIVE, "worker-1": ALIVE},
            ["Event ReplicaUnresponsive", "Kill worker-1"],
        ),
        id="a replica the job master gave up on is killed, so its restart policy applies",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.STOPPING, kill_at=NOW + 3, next_start_at=NOW),
                replica("worker-1", R.STOPPING, kill_at=NOW + 3, next_start_at=NOW),
                phase=JobPhase.RESTARTING,
            ),
            {"worker-0": exited(143), "worker-1": ALIVE},
            ["Exited worker-0 BackOff"],
        ),
        id="no gang member starts again while another is still stopping",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.BACKOFF, next_start_at=NOW),
                replica("worker-1", R.BACKOFF, next_start_at=NOW),
                phase=JobPhase.RESTARTING,
            ),
            {},
            ["Launch worker-0", "Event ReplicaStarted", "Launch worker-1", "Event ReplicaStarted"],
        ),
        id="once the whole gang has stopped and its backoff is over, every member launches",
    ),
    pytest.param(
        Case(
            job(replica("worker-0", R.BACKOFF, next_start_at=NOW + 1)),
            {},
            [],
            spec(1),
        ),
        id="a replica in backoff waits for its time",
    ),
    pytest.param(
        Case(
            job(replica("worker-0", R.LAUNCHING, launch_id="L1"), phase=JobPhase.SCHEDULED),
            {"worker-0": Adoption(None)},
            ["Launch worker-0 L1"],
            spec(1),
        ),
        id="a launch recorded but never made is made now, under the same launch id",
    ),
    pytest.param(
        Case(
            job(replica("worker-0", R.LAUNCHING, launch_id="L1"), phase=JobPhase.SCHEDULED),
            {"worker-0": Adoption(handle("worker-0"), pid=7)},
            ["Launched worker-0", "Event ReplicaAdopted", "Transition Running"],
            spec(1),
        ),
        id="a launch made before a crash is adopted, not made again",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1"), phase=JobPhase.SCHEDULED),
            {"worker-0": ALIVE, "worker-1": ALIVE},
            ["Transition Running"],
        ),
        id="a scheduled job whose replicas all run becomes Running",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0"),
                replica("worker-1"),
                replica("worker-2"),
                replica("master-0"),
                desired={"worker": 1},
            ),
            {"worker-0": ALIVE, "worker-1": ALIVE, "worker-2": ALIVE, "master-0": ALIVE},
            ["Drain worker-2", "Drain worker-1", "Event ScalingIn"],
            spec(3, elastic=(1, 3)),
        ),
        id="an elastic role above its desired size asks its highest replicas to leave",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0"),
                replica("worker-1", R.STOPPING, drain_deadline=NOW + 9),
                replica("master-0"),
                desired={"worker": 1},
            ),
            {"worker-0": ALIVE, "worker-1": exited(0), "master-0": ALIVE},
            ["Exited worker-1 Stopped", "Forget worker-1", "Event ScaledIn"],
            spec(2, elastic=(1, 2)),
        ),
        id="a replica that left after a scale-in is forgotten",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0"),
                replica("worker-1", R.STOPPING, drain_deadline=NOW),
                replica("master-0"),
                desired={"worker": 1},
            ),
            {"worker-0": ALIVE, "worker-1": ALIVE, "master-0": ALIVE},
            ["Kill worker-1", "Forget worker-1", "Event ScaledIn"],
            spec(2, elastic=(1, 2)),
        ),
        id="a replica that overstays its drain deadline is killed and forgotten",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("master-0")),
            {"worker-0": ALIVE, "master-0": exited(1)},
            [
                "Exited master-0 Failed",
                "Event ReplicaFailed",
                "Backoff master-0",
                "Event MasterRestarting",
                "Launch master-0",
                "Event ReplicaStarted",
            ],
            spec(1, elastic=(1, 2)),
        ),
        id="a job master that exited is launched again at once",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("master-0", R.FAILED, restarts=10)),
            {"worker-0": ALIVE},
            ["Finishing Failed MasterFailed", "Terminate worker-0"],
            spec(1, elastic=(1, 2)),
        ),
        id="a job master that keeps exiting fails the job",
    ),
    pytest.param(
        Case(
            job(replica("worker-0"), replica("worker-1", R.BACKOFF), deleted=True),
            {"worker-0": ALIVE},
            ["Kill worker-0", "Settle worker-1"],
        ),
        id="a deleted job's replicas are killed, and one waiting to restart never starts",
    ),
    pytest.param(
        Case(
            job(replica("worker-0", kill_at=NOW + 5), replica("worker-1", R.STOPPED), deleted=True),
            {"worker-0": exited(137)},
            ["Exited worker-0 Stopped", "ForgetJob"],
        ),
        id="a deleted job is forgotten once its last process is gone",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0"),
                replica("worker-1", R.BACKOFF),
                replica("master-0"),
                outcome=SUSPENDING,
            ),
            {"worker-0": ALIVE, "master-0": ALIVE},
            ["Terminate worker-0", "Settle worker-1", "Terminate master-0"],
            spec(2, elastic=(1, 2)),
        ),
        id="a job being suspended gets SIGTERM, and a replica waiting to restart never starts",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.STOPPING, kill_at=NOW),
                replica("worker-1", R.STOPPED),
                outcome=SUSPENDING,
            ),
            {"worker-0": ALIVE},
            ["Event ReplicaKilled", "Kill worker-0"],
        ),
        id="a replica that ignores the suspension's SIGTERM is killed after the grace",
    ),
    pytest.param(
        Case(
            job(
                replica("worker-0", R.STOPPING, kill_at=NOW + 5),
                replica("worker-1", R.STOPPED),
                outcome=SUSPENDING,
            ),
            {"worker-0": exited(143)},
            [
                "Exited worker-0 Stopped",
                "Forget worker-0",
                "Forget worker-1",
                "Transition Suspended",
            ],
        ),
        id="a suspended job's replicas are forgotten once its last process is gone",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_the_lifecycle_step(case: Case) -> None:
    actions = step(case.job, case.spec, case.seen, NOW, CONFIG)
    assert [shown(a) for a in actions] == case.expected


def test_restarted_gang_members_are_charged_only_for_their_own_failure() -> None:
    snapshot = job(replica("worker-0", restarts=1), replica("worker-1", restarts=0))
    actions = step(snapshot, spec(), {"worker-0": ALIVE, "worker-1": exited(1)}, NOW, CONFIG)
    charged = {a.replica: a.changes() for a in actions if shown(a).startswith("Backoff")}
    assert charged == {"worker-1": {"phase": R.BACKOFF, "next_start_at": NOW + 1, "restarts": 1}}
    terminate = next(a for a in actions if shown(a) == "Terminate worker-0")
    assert terminate.changes()["next_start_at"] == NOW + 1  # BackOff once it is gone


def test_a_hung_replica_has_its_stacks_taken_at_the_first_kill_only() -> None:
    given_up = {"worker-1": 101}
    first = step(
        job(replica("worker-1"), unresponsive=given_up), spec(), {"worker-1": ALIVE}, NOW, CONFIG
    )
    retry = step(
        job(replica("worker-1", kill_at=NOW - 1), unresponsive=given_up),
        spec(),
        {"worker-1": ALIVE},
        NOW,
        CONFIG,
    )
    assert [a.stacks for a in first if isinstance(a, Kill)] == [True]
    assert [a.stacks for a in retry if isinstance(a, Kill)] == [False]


def test_a_failure_names_the_replica_and_the_restarts_left() -> None:
    snapshot = job(replica("worker-0"), replica("worker-1"))
    actions = step(snapshot, spec(), {"worker-0": ALIVE, "worker-1": exited(1)}, NOW, CONFIG)
    [restarting] = [a for a in actions if isinstance(a, Transition)]
    assert restarting.message == (
        "worker-1 exited with code 1; restart 1/3 in 1s (the whole AllReduce group restarts)"
    )


def test_a_job_the_controller_cannot_process_is_failed_with_the_cause_and_killed() -> None:
    snapshot = job(
        replica("worker-0"),
        replica("worker-1", R.LAUNCHING, launch_id="L1"),
        replica("worker-2", R.BACKOFF),
    )
    seen: dict[str, Seen] = {"worker-1": Adoption(handle("worker-1"))}
    message = "the controller could not process this job: ValueError: boom"

    actions = fail_broken(snapshot, seen, message, NOW, CONFIG)

    assert [shown(a) for a in actions] == [
        "Kill worker-0",
        "Settle worker-0",
        "Kill worker-1",
        "Settle worker-1",
        "Settle worker-2",
        "Transition Failed",
        "ExpireAt",
    ]
    failed = next(a for a in actions if isinstance(a, Transition))
    assert (failed.reason, failed.message, failed.warning) == ("ControllerError", message, True)


P = JobPhase


@pytest.mark.parametrize(
    ("current", "target", "allowed"),
    [
        pytest.param(P.PENDING, P.SCHEDULED, True, id="a pending job is scheduled"),
        pytest.param(P.SCHEDULED, P.RUNNING, True, id="a scheduled job runs"),
        pytest.param(P.RUNNING, P.RESTARTING, True, id="a running job restarts replicas"),
        pytest.param(P.RESTARTING, P.RUNNING, True, id="a restarting job runs again"),
        pytest.param(P.RUNNING, P.PENDING, True, id="a preempted job goes back to its queue"),
        pytest.param(
            P.PENDING, P.FAILED, True, id="a pending job the controller cannot read fails"
        ),
        pytest.param(P.RUNNING, P.SUSPENDED, True, id="a running job is suspended"),
        pytest.param(P.PENDING, P.SUSPENDED, True, id="a queued job is suspended"),
        pytest.param(P.SUSPENDED, P.PENDING, True, id="a suspended job is resumed into its queue"),
        pytest.param(
            P.SUSPENDED, P.SCHEDULED, False, id="a suspended job is never placed before resumed"
        ),
        pytest.param(P.SUCCEEDED, P.SUSPENDED, False, id="a finished job is never suspended"),
        pytest.param(P.PENDING, P.RUNNING, False, id="a job is never Running before Scheduled"),
        pytest.param(P.SUCCEEDED, P.RUNNING, False, id="a succeeded job never runs again"),
        pytest.param(P.FAILED, P.SUCCEEDED, False, id="a failed job stays failed"),
        pytest.param(P.FAILED, P.FAILED, True, id="staying in a phase is always allowed"),
    ],
)
def test_phase_transitions(current: JobPhase, target: JobPhase, allowed: bool) -> None:
    if allowed:
        check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition, match=f"cannot move to {target}"):
            check_transition(current, target)


def test_finished_phases_absorb() -> None:
    assert ALLOWED[P.SUCCEEDED] == ALLOWED[P.FAILED] == frozenset()


def test_an_illegal_transition_in_a_step_raises_so_only_that_job_fails() -> None:
    finished = job(replica("worker-0"), phase=JobPhase.SUCCEEDED)
    with pytest.raises(IllegalTransition, match="Succeeded cannot move to Running"):
        step(finished, spec(1), {"worker-0": ALIVE}, NOW, CONFIG)


def ended_with_control_plane(code: int) -> Observation:
    message = f"killed by SIGTERM; {CONTROL_PLANE_ENDED}" if code else CONTROL_PLANE_ENDED
    return Observation(running=False, exit_code=code, message=message, control_plane_ended=True)


def test_replicas_stopped_with_their_control_plane_start_again_at_once_uncharged() -> None:
    snapshot = job(replica("worker-0", restarts=2), replica("worker-1"))
    seen: dict[str, Seen] = {
        "worker-0": ended_with_control_plane(143),
        "worker-1": ended_with_control_plane(0),  # a SIGTERM handler that exits 0
    }
    actions = step(snapshot, spec(restart="Never"), seen, NOW, CONFIG)
    assert [shown(a) for a in actions] == [
        "Exited worker-0 BackOff",
        "Backoff worker-0",
        "Transition Restarting",
        "Exited worker-1 BackOff",
        "Backoff worker-1",
        "Launch worker-0",
        "Event ReplicaStarted",
        "Launch worker-1",
        "Event ReplicaStarted",
    ]
    charged = {a.replica: a.restarts for a in actions if isinstance(a, Backoff)}
    assert charged == {"worker-0": 2, "worker-1": 0}
    [resuming] = [a for a in actions if isinstance(a, Transition)]
    assert resuming.reason == "Resuming"
    assert resuming.message == (
        "the control plane that ran this job ended and stopped its replicas; starting them "
        "again (not counted against maxRestarts)"
    )


def lost_with_node(node: str) -> Observation:
    return Observation(running=False, message=f"pod lost with its node {node}", node_lost=True)


def test_a_master_lost_with_its_node_restarts_beside_a_surviving_replica() -> None:
    on_n2 = dataclasses.replace(replica("worker-1"), node="n2")
    snapshot = job(replica("master-0"), replica("worker-0"), on_n2)
    seen = {"master-0": lost_with_node("n1"), "worker-0": lost_with_node("n1"), "worker-1": ALIVE}
    actions = step(snapshot, spec(2, elastic=(1, 2)), seen, NOW, CONFIG)
    assert [shown(a) for a in actions] == [
        "Exited master-0 Failed",
        "Event ReplicaFailed",
        "Relocate master-0",
        "Event MasterMoved",
        "Exited worker-0 Failed",
        "Forget worker-0",
        "Event ReplicaLost",
        "Backoff master-0",
        "Event MasterRestarting",
        "Launch master-0",
        "Event ReplicaStarted",
    ]
    assert [a.node for a in actions if isinstance(a, Relocate)] == ["n2"]
    [started] = [a for a in actions if isinstance(a, Event) and a.reason == "ReplicaStarted"]
    assert "master-0 started again on n2" in started.message
    assert not any(isinstance(a, Terminate | Kill) for a in actions), "worker-1 keeps running"


def test_a_master_lost_with_every_replica_stays_where_it_was() -> None:
    snapshot = job(replica("master-0"), replica("worker-0"))
    seen = {"master-0": lost_with_node("n1"), "worker-0": lost_with_node("n1")}
    actions = step(snapshot, spec(1, elastic=(1, 2)), seen, NOW, CONFIG)
    assert not any(isinstance(a, Relocate) for a in actions)
    # Its launch there fails (PlacementLost) and the whole job is placed again.
    [started] = [a for a in actions if isinstance(a, Event) and a.reason == "ReplicaStarted"]
    assert "master-0 started again on n1" in started.message


def test_a_ps_shard_lost_with_its_node_waits_unplaced_while_the_others_keep_running() -> None:
    on_n2 = [dataclasses.replace(replica(n), node="n2") for n in ("ps-0", "worker-0")]
    snapshot = job(replica("ps-1", restarts=2), *on_n2)
    seen = {"ps-1": lost_with_node("n1"), "ps-0": ALIVE, "worker-0": ALIVE}
    actions = step(snapshot, spec(1, mode="ps", ps=2), seen, NOW, CONFIG)
    assert [shown(a) for a in actions] == [
        "Exited ps-1 Failed",
        "Unplace ps-1",
        "Event ReplicaLost",
        "Transition Restarting",
    ]
    [lost] = [a for a in actions if isinstance(a, Event)]
    assert lost.message.startswith("ps-1 was lost with its node n1; it is placed again")
    # Unplaced, on no node, with its port and its charged restarts: the scheduler places
    # it again; until then the job is not Running.
    [unplace] = [a for a in actions if isinstance(a, Unplace)]
    changes = unplace.changes()
    assert changes["phase"] is R.PENDING and changes["node"] == "" and changes["handle"] is None
    assert "restarts" not in changes and "port" not in changes
    waiting = job(
        dataclasses.replace(replica("ps-1"), **changes), *on_n2, phase=JobPhase.RESTARTING
    )
    later = step(waiting, spec(1, mode="ps", ps=2), {"ps-0": ALIVE, "worker-0": ALIVE}, NOW, CONFIG)
    assert later == []


def test_a_static_allreduce_member_lost_with_its_node_restarts_its_whole_group() -> None:
    on_n2 = dataclasses.replace(replica("worker-1"), node="n2")
    snapshot = job(replica("worker-0"), on_n2)
    seen = {"worker-0": lost_with_node("n1"), "worker-1": ALIVE}
    actions = step(snapshot, spec(2), seen, NOW, CONFIG)
    assert not any(isinstance(a, Unplace) for a in actions)
    assert "GangRestarted" in [shown(a) for a in actions]
