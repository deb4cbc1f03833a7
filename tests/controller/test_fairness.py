"""Reclaim and reservations through the real controller: a SQLite store, replicas as
real processes through the local engine, and a clock the test moves.

What these pin: a queue taking back its guarantee stops the other queue's job with a
``Reclaimed`` event that names the guarantee; a job that waited past its bound shows
``Reserved`` with its expected start, the room stays held across passes (a newcomer
with no deadline does not take it, one with a short deadline does), and the gang
starts once the room frees; and what the scheduler is told of time: a running job's
expected end and a pending job's wait start.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidemill.api.cluster import ClusterSpec, NodeSpec, QueueSpec
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.controller.snapshot import running_job, waiting_since
from tidemill.engines.local import LocalEngine
from tidemill.scheduler.reasons import timestamp
from tidemill.store.store import Store
from tidemill.store.tables import EventRow, JobRow

SLEEP = "import time\nwhile True:\n    time.sleep(0.2)\n"


class Clock:
    """The controller's time: real time plus what the test skipped ahead."""

    def __init__(self) -> None:
        self.skipped_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.skipped_s


def job(
    name: str, queue: str, cpu: float, workers: int = 1, deadline_s: int | None = None
) -> TrainingJob:
    spec: dict[str, Any] = {
        "queue": queue,
        "roles": {
            "worker": {
                "replicas": workers,
                "resources": {"cpu": cpu, "memory": "32Mi"},
                "command": [sys.executable, "-c", SLEEP],
            }
        },
    }
    if deadline_s is not None:
        spec["activeDeadlineSeconds"] = deadline_s
    return TrainingJob.model_validate(
        {"metadata": {"name": name, "namespace": "ads"}, "spec": spec}
    )


@pytest.fixture
def make_controller(tmp_path: Path) -> Iterator[Callable[..., tuple[Controller, Clock]]]:
    made: list[tuple[Controller, LocalEngine]] = []

    def make(queues: list[QueueSpec]) -> tuple[Controller, Clock]:
        store = Store.in_folder(tmp_path / "state")
        engine = LocalEngine(tmp_path / "engine", warm_start=False)
        cluster = ClusterSpec(nodes=[NodeSpec(name="n", cpu=2, memory="8Gi")], queues=queues)
        settings = ControllerConfig(stop_grace_s=1.0, resync_s=0.0, schedule_pacing=0.0)
        clock = Clock()
        controller = Controller(store, engine, cluster, settings, clock=clock)
        made.append((controller, engine))
        return controller, clock

    yield make
    for controller, engine in made:
        with controller.store.read() as tx:
            jobs = [(row.namespace, row.name) for row in tx.jobs()]
        for namespace, name in jobs:
            controller.delete(namespace, name)
        engine.close()


def row_of(controller: Controller, name: str) -> JobRow:
    with controller.store.read() as tx:
        row = tx.job("ads", name)
    assert row is not None
    return row


def until(controller: Controller, name: str, check: Callable[[JobRow], object]) -> JobRow:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        controller.reconcile_once()
        row = row_of(controller, name)
        if check(row):
            return row
        time.sleep(0.05)
    pytest.fail(f"timed out waiting on {name}")


def running(row: JobRow) -> bool:
    return row.phase == "Running" and all(r.pid for r in row.replicas)


def events(controller: Controller, name: str) -> list[EventRow]:
    with controller.store.read() as tx:
        return tx.events(f"ads/{name}")


def test_a_queue_below_its_guarantee_reclaims_and_the_event_names_the_guarantee(
    make_controller: Callable[..., tuple[Controller, Clock]],
) -> None:
    controller, _ = make_controller(
        [
            QueueSpec.model_validate({"name": "ads", "guaranteed": {"cpu": 1}}),
            QueueSpec(name="search"),
        ]
    )
    controller.submit(job("borrower", "search", cpu=1, workers=2))
    until(controller, "borrower", running)
    controller.submit(job("owner", "ads", cpu=1))

    until(controller, "owner", running)
    borrower = row_of(controller, "borrower")
    assert borrower.phase == "Pending"
    (reclaimed,) = [e for e in events(controller, "borrower") if e.reason == "Reclaimed"]
    assert reclaimed.message.startswith(
        "preempted for ads/owner: queue ads reclaims its guarantee of 1 cpu (it held nothing); "
        "queue search is over its own"
    )
    preempted = next(c for c in borrower.conditions if c["type"] == "Preempted")
    assert (preempted["status"], preempted["reason"]) == (True, "Reclaimed")


def test_a_job_past_its_bound_holds_room_until_it_frees_and_only_short_jobs_backfill(
    make_controller: Callable[..., tuple[Controller, Clock]],
) -> None:
    controller, clock = make_controller([QueueSpec.model_validate({"name": "ads"})])
    controller.submit(job("first", "ads", cpu=1, deadline_s=7200))
    first = until(controller, "first", running)
    controller.submit(job("big", "ads", cpu=1, workers=2))
    until(controller, "big", lambda r: r.pending_code == "GangDoesNotFit")

    clock.skipped_s = 3700  # past the one-hour bound
    big = until(controller, "big", lambda r: r.pending_code == "Reserved")
    assert first.started_at is not None
    assert f"expected to start at {timestamp(first.started_at + 7200)}" in str(big.pending_message)

    controller.submit(job("no-deadline", "ads", cpu=1))
    controller.submit(job("short", "ads", cpu=1, deadline_s=600))
    until(controller, "short", running)
    for _ in range(3):
        controller.reconcile_once()
    assert row_of(controller, "no-deadline").phase == "Pending"
    assert row_of(controller, "big").pending_code == "Reserved"

    controller.delete("ads", "first")
    controller.delete("ads", "short")
    until(controller, "big", running)
    assert row_of(controller, "no-deadline").phase == "Pending"


def row(scheduled_at: float | None = None, started_at: float | None = None) -> JobRow:
    return JobRow(
        namespace="ads",
        name="j",
        queue="ads",
        priority=0,
        phase="Pending",
        created_at=10.0,
        scheduled_at=scheduled_at,
        started_at=started_at,
        conditions=[],
        replicas=[],
        desired={},
    )


EXPECTED_END_CASES = [
    pytest.param(600, None, 700.0, id="a job with a deadline ends a deadline after it first ran"),
    pytest.param(
        None, 1800.0, 1890.0, id="a job without one ends its queue's estimate after it was bound"
    ),
    pytest.param(600, 1800.0, 700.0, id="a deadline wins over the queue's estimate"),
    pytest.param(None, None, None, id="a job with neither has no expected end"),
]


@pytest.mark.parametrize(("deadline_s", "estimate_s", "expected"), EXPECTED_END_CASES)
def test_a_running_job_is_expected_to_end_at_its_deadline_or_its_queues_estimate(
    deadline_s: int | None, estimate_s: float | None, expected: float | None
) -> None:
    spec = job("j", "ads", cpu=1, deadline_s=deadline_s)
    built = running_job(row(scheduled_at=90.0, started_at=100.0), spec, estimate_s)
    assert (built.started_at, built.expected_end) == (90.0, expected)


def test_a_pending_job_waits_since_submission_or_since_it_was_last_preempted() -> None:
    assert waiting_since(row()) == 10.0
    preempted = row(scheduled_at=90.0, started_at=100.0)
    preempted.conditions = [
        {
            "type": "Running",
            "status": False,
            "reason": "Preempted",
            "message": "",
            "last_transition_time": 500.0,
        },
        {
            "type": "Pending",
            "status": True,
            "reason": "Preempted",
            "message": "",
            "last_transition_time": 500.0,
        },
    ]
    assert waiting_since(preempted) == 500.0


def test_a_queue_that_ran_while_nothing_waited_has_its_use_counted(
    make_controller: Callable[[list[QueueSpec]], tuple[Controller, Clock]],
) -> None:
    """Recent use counts while nothing waits too (a queue that filled the cluster alone
    for an hour goes after one that used nothing when both next hold the same), and
    stops counting once the queue's job is gone."""
    controller, clock = make_controller([QueueSpec(name="batch"), QueueSpec(name="adhoc")])
    controller.submit(job("alone", "batch", cpu=2))
    until(controller, "alone", running)
    clock.skipped_s += 3600
    stats = controller.reconcile_once()
    assert stats.recent_use is not None
    used = stats.recent_use.get("batch", 0.0)
    assert 2000 < used < 3600, "an hour of the whole cluster, halving every hour"
    assert stats.recent_use.get("adhoc", 0.0) == 0.0
    controller.delete("ads", "alone")
    controller.reconcile_once()
    clock.skipped_s += 3600
    later = controller.reconcile_once().recent_use
    assert later is not None
    assert later["batch"] == pytest.approx(used / 2, rel=0.01), "it decays, nothing is added"
