"""Suspend and resume on the controller: real processes on the local engine, a real store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.controller.test_applier import (
    alive,
    events,
    gone,
    job,
    row_of,
    running,
    starts,
    until,
)
from tidemill.api.errors import ConflictError, NotFoundError
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller
from tidemill.store.tables import JobRow


def suspended(row: JobRow) -> bool:
    return row.phase == "Suspended"


def reasons(controller: Controller, name: str) -> list[str]:
    return [e.reason for e in events(controller, name)]


def test_a_suspended_job_stops_frees_its_room_and_runs_again_when_resumed(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller(cpu=1)
    stubborn = {"IGNORE_SIGTERM": "1"}
    controller.submit(job("low", tmp_path, workers=2, cpu=0.5, env=stubborn))
    until(controller, "low", lambda r: len(starts(tmp_path, "low")) == 2, "low to run")
    first = [pid for _, pid in starts(tmp_path, "low")]
    controller.submit(job("other", tmp_path, cpu=1))

    controller.suspend("ads", "low", actor="alice")
    row = until(controller, "low", suspended, "low to be suspended")
    assert row.replicas == [] and row.outcome is None and row.started_at is None
    assert row.message.startswith("suspended by alice")
    assert all(gone(pid) for pid in first)  # SIGTERM ignored: killed after the grace
    stops = [
        r for r in reasons(controller, "low") if r in ("Suspending", "ReplicaKilled", "Suspended")
    ]
    assert stops == ["Suspending", "ReplicaKilled", "ReplicaKilled", "Suspended"]
    until(controller, "other", running, "the waiting job to take the room")

    for _ in range(5):  # a suspended job is not placed, even once room is free
        controller.reconcile_once()
    controller.delete("ads", "other")
    for _ in range(5):
        controller.reconcile_once()
    assert suspended(row_of_job(controller, "low"))

    controller.resume("ads", "low", actor="alice")
    assert row_of_job(controller, "low").phase in ("Pending", "Scheduled", "Running")
    until(controller, "low", lambda r: len(starts(tmp_path, "low")) == 4, "low to run again")
    again = [pid for _, pid in starts(tmp_path, "low")][2:]
    assert len(again) == 2 and all(alive(pid) for pid in again)
    assert reasons(controller, "low").count("Resumed") == 1


def test_a_queued_job_is_suspended_at_once_and_stays_so_across_a_restart(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller(cpu=1)
    controller.submit(job("big", tmp_path, cpu=1))
    until(controller, "big", running, "big to run")
    controller.submit(job("queued", tmp_path, cpu=1))
    controller.reconcile_once()
    assert row_of_job(controller, "queued").phase == "Pending"

    controller.suspend("ads", "queued")
    assert suspended(row_of_job(controller, "queued"))
    controller.delete("ads", "big")

    restarted = make_controller(cpu=1)  # a new control plane on the same store
    for _ in range(5):
        restarted.reconcile_once()
    assert suspended(row_of_job(restarted, "queued"))
    assert starts(tmp_path, "queued") == []

    restarted.resume("ads", "queued")
    until(restarted, "queued", running, "the resumed job to run")


def test_a_job_submitted_suspended_waits_for_its_resume(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    document = job("later", tmp_path).to_document()
    document["spec"]["suspend"] = True
    controller.submit(TrainingJob.model_validate(document), actor="bob")
    for _ in range(5):
        controller.reconcile_once()
    row = row_of_job(controller, "later")
    assert (row.phase, row.replicas, starts(tmp_path, "later")) == ("Suspended", [], [])
    assert row.message == "suspended (spec.suspend): `tidemill resume later` queues it"
    submitted = next(e.message for e in events(controller, "later") if e.reason == "Submitted")
    assert submitted.startswith("submitted in ads at priority 0 by bob; suspended")

    controller.resume("ads", "later")
    until(controller, "later", running, "the resumed job to run")


def test_suspend_and_resume_refuse_what_cannot_be_done_and_name_why(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("live", tmp_path))
    until(controller, "live", running, "live to run")
    with pytest.raises(ConflictError, match=r"ads/live is not suspended \(Running\)"):
        controller.resume("ads", "live")
    with pytest.raises(NotFoundError, match="job 'nope' not found in namespace 'ads'"):
        controller.suspend("ads", "nope")

    controller.suspend("ads", "live")
    controller.suspend("ads", "live")  # asked twice: one suspension
    assert reasons(controller, "live").count("Suspending") == 1
    with pytest.raises(ConflictError, match="still stopping for its suspension"):
        controller.resume("ads", "live")
    until(controller, "live", suspended, "live to be suspended")
    controller.suspend("ads", "live")
    assert reasons(controller, "live").count("Suspended") == 1

    controller.submit(job("done", tmp_path, env={"EXIT_AFTER_S": "0"}))
    until(controller, "done", lambda r: r.phase == "Succeeded", "done to succeed")
    with pytest.raises(ConflictError, match=r"ads/done has finished \(Succeeded\)"):
        controller.suspend("ads", "done")
    with pytest.raises(ConflictError, match=r"ads/done has finished \(Succeeded\)"):
        controller.resume("ads", "done")

    controller.delete("ads", "live")  # a suspended job runs nothing: it goes at once
    assert row_of(controller, "live") is None


def row_of_job(controller: Controller, name: str) -> JobRow:
    row = row_of(controller, name)
    assert row is not None, f"job {name} is gone"
    return row
