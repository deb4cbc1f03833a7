"""Restart and success policies: pure functions that return decisions.

The reconciler applies what these return; nothing here touches the store or a process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tidemill.api.job import RestartPolicy, SuccessPolicy
from tidemill.api.status import ReplicaPhase

MAX_BACKOFF_S = 300.0


class RestartAction(StrEnum):
    NONE = "none"
    RESTART = "restart"
    FAIL_JOB = "fail"


@dataclass(frozen=True)
class RestartDecision:
    action: RestartAction
    delay_s: float = 0.0
    message: str = ""


def backoff_s(base_s: float, restarts: int) -> float:
    """Exponential backoff: base, 2x base, 4x base ... capped at five minutes."""
    return float(min(base_s * (2 ** min(restarts, 32)), MAX_BACKOFF_S))


def is_retryable_exit(exit_code: int | None) -> bool:
    """Under ``ExitCode``: signals and lost processes (128+ or unknown) are retried."""
    return exit_code is None or exit_code >= 128 or exit_code < 0


def decide_restart(
    replica: str,
    policy: RestartPolicy,
    exit_code: int | None,
    restarts: int,
    max_restarts: int,
    base_backoff_s: float,
) -> RestartDecision:
    """What to do about a replica that has exited with ``exit_code`` (None: lost)."""
    if exit_code == 0:
        if policy is RestartPolicy.ALWAYS:
            return _restart_or_fail(replica, exit_code, restarts, max_restarts, base_backoff_s)
        return RestartDecision(RestartAction.NONE)
    shown = "was lost" if exit_code is None else f"exited with code {exit_code}"
    if policy is RestartPolicy.NEVER:
        return RestartDecision(
            RestartAction.FAIL_JOB, message=f"{replica} {shown}; restartPolicy is Never"
        )
    if policy is RestartPolicy.EXIT_CODE and not is_retryable_exit(exit_code):
        return RestartDecision(
            RestartAction.FAIL_JOB,
            message=(
                f"{replica} {shown}, a permanent error under restartPolicy ExitCode "
                "(only codes 128 and above, i.e. signals, are retried)"
            ),
        )
    return _restart_or_fail(replica, exit_code, restarts, max_restarts, base_backoff_s)


def _restart_or_fail(
    replica: str, exit_code: int | None, restarts: int, max_restarts: int, base_backoff_s: float
) -> RestartDecision:
    shown = "was lost" if exit_code is None else f"exited with code {exit_code}"
    if restarts >= max_restarts:
        return RestartDecision(
            RestartAction.FAIL_JOB,
            message=(
                f"{replica} {shown} after {restarts} restart(s); maxRestarts is "
                f"{max_restarts} (raise it in the role's spec to allow more)"
            ),
        )
    delay = backoff_s(base_backoff_s, restarts)
    return RestartDecision(
        RestartAction.RESTART,
        delay_s=delay,
        message=f"{replica} {shown}; restart {restarts + 1}/{max_restarts} in {delay:g}s",
    )


@dataclass(frozen=True)
class ReplicaState:
    role: str
    index: int
    phase: ReplicaPhase


def job_succeeded(policy: SuccessPolicy, replicas: Sequence[ReplicaState]) -> bool:
    """Has the job as a whole succeeded? PS, evaluator and master never count."""
    by_role: Mapping[str, list[ReplicaPhase]] = _phases_by_role(replicas)
    chief = by_role.get("chief", [])
    workers = by_role.get("worker", [])
    done = ReplicaPhase.SUCCEEDED
    if policy is SuccessPolicy.ANY_WORKER:
        return any(p is done for p in [*chief, *workers])
    if policy is SuccessPolicy.ALL_WORKERS:
        counted = [*chief, *workers]
        return bool(counted) and all(p is done for p in counted)
    if chief:
        return all(p is done for p in chief)
    return bool(workers) and all(p is done for p in workers)


def counts_for_success(role: str) -> bool:
    return role in ("chief", "worker")


def _phases_by_role(replicas: Sequence[ReplicaState]) -> dict[str, list[ReplicaPhase]]:
    out: dict[str, list[ReplicaPhase]] = {}
    for r in replicas:
        out.setdefault(r.role, []).append(r.phase)
    return out
