"""Restart and success policies decide; these tables pin what they decide."""

from __future__ import annotations

import pytest

from tidemill.api.job import RestartPolicy, SuccessPolicy
from tidemill.api.status import ReplicaPhase
from tidemill.controller.policies import (
    ReplicaState,
    RestartAction,
    backoff_s,
    decide_restart,
    job_succeeded,
)

P = RestartPolicy
RESTART, FAIL, NONE = RestartAction.RESTART, RestartAction.FAIL_JOB, RestartAction.NONE


@pytest.mark.parametrize(
    ("policy", "exit_code", "restarts", "expected"),
    [
        pytest.param(P.ON_FAILURE, 1, 0, RESTART, id="OnFailure restarts a failed replica"),
        pytest.param(P.ON_FAILURE, 0, 0, NONE, id="OnFailure leaves a succeeded replica alone"),
        pytest.param(P.ON_FAILURE, 1, 3, FAIL, id="OnFailure fails once restarts are spent"),
        pytest.param(P.NEVER, 1, 0, FAIL, id="Never fails the job on the first failure"),
        pytest.param(P.NEVER, 0, 0, NONE, id="Never leaves a succeeded replica alone"),
        pytest.param(P.ALWAYS, 0, 0, RESTART, id="Always restarts even a clean exit"),
        pytest.param(P.EXIT_CODE, 137, 0, RESTART, id="ExitCode retries a killed replica"),
        pytest.param(P.EXIT_CODE, None, 0, RESTART, id="ExitCode retries a lost replica"),
        pytest.param(P.EXIT_CODE, 1, 0, FAIL, id="ExitCode treats codes below 128 as permanent"),
        pytest.param(P.ON_FAILURE, None, 0, RESTART, id="a lost replica counts as failed"),
    ],
)
def test_restart_decisions(
    policy: RestartPolicy, exit_code: int | None, restarts: int, expected: RestartAction
) -> None:
    decision = decide_restart("worker-1", policy, exit_code, restarts, 3, 1.0)
    assert decision.action is expected


def test_backoff_doubles_per_restart_and_is_capped() -> None:
    assert [backoff_s(1.0, n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_s(1.0, 40) == 300.0


def test_restart_message_says_which_replica_and_how_many_restarts_remain() -> None:
    decision = decide_restart("worker-1", P.ON_FAILURE, 1, 1, 3, 0.5)
    assert decision.message == "worker-1 exited with code 1; restart 2/3 in 1s"
    failed = decide_restart("worker-1", P.ON_FAILURE, 1, 3, 3, 0.5)
    assert "maxRestarts is 3" in failed.message


S, R, F = ReplicaPhase.SUCCEEDED, ReplicaPhase.RUNNING, ReplicaPhase.FAILED


def replicas(**phases: list[ReplicaPhase]) -> list[ReplicaState]:
    return [ReplicaState(role, i, p) for role, ps in phases.items() for i, p in enumerate(ps)]


@pytest.mark.parametrize(
    ("policy", "states", "expected"),
    [
        pytest.param(SuccessPolicy.DEFAULT, replicas(chief=[S], worker=[R, R]), True,
                     id="by default the chief's success ends the job"),
        pytest.param(SuccessPolicy.DEFAULT, replicas(worker=[S, R]), False,
                     id="without a chief every worker must succeed"),
        pytest.param(SuccessPolicy.DEFAULT, replicas(worker=[S, S], ps=[R]), True,
                     id="parameter servers never keep a finished job alive"),
        pytest.param(SuccessPolicy.ALL_WORKERS, replicas(chief=[S], worker=[S, R]), False,
                     id="AllWorkers waits for the chief and every worker"),
        pytest.param(SuccessPolicy.ANY_WORKER, replicas(worker=[R, S]), True,
                     id="AnyWorker ends the job at the first success"),
        pytest.param(SuccessPolicy.DEFAULT, replicas(ps=[S]), False,
                     id="a job with no workers left has not succeeded"),
        pytest.param(SuccessPolicy.DEFAULT, replicas(worker=[S, F]), False,
                     id="a failed worker is not a success"),
    ],
)
def test_success_policy(
    policy: SuccessPolicy, states: list[ReplicaState], expected: bool
) -> None:
    assert job_succeeded(policy, states) is expected
