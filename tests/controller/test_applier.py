"""The applier with real parts: a Controller on a SQLite store, replicas as real
processes through the local engine. Each replica appends ``role-index pid`` to a file
when it starts, so a test counts starts and finds the processes.

What these pin: one bad job fails alone while the others carry on in the same cycle;
stopping never holds a cycle or a delete; a launch made before a crash is adopted, one
recorded but never made is made once; a store that cannot write fails no job.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from tidemill.api.cluster import NodeSpec
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller
from tidemill.controller.rows import handle_of
from tidemill.engines.base import (
    LaunchRefused,
    LaunchSpec,
    Observation,
    PlacementLost,
    ReplicaHandle,
)
from tidemill.engines.local import LocalEngine
from tidemill.server.views import job_view
from tidemill.store.store import Store
from tidemill.store.tables import EventRow, JobRow, ReplicaRow

Engine = TypeVar("Engine", bound=LocalEngine)

STARTS = """\
import os, signal, sys, time
with open(os.environ["STARTS"], "a") as f:
    f.write(f"{os.environ['TIDEMILL_ROLE']}-{os.environ['TIDEMILL_INDEX']} {os.getpid()}\\n")
if os.environ.get("IGNORE_SIGTERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
exit_after = float(os.environ.get("EXIT_AFTER_S", "-1"))
if exit_after >= 0:
    time.sleep(exit_after)
    sys.exit(int(os.environ.get("EXIT_CODE", "0")))
while True:
    time.sleep(0.2)
"""


def job(
    name: str,
    folder: Path,
    workers: int = 1,
    *,
    env: dict[str, str] | None = None,
    ps_env: dict[str, str] | None = None,
    elastic: tuple[int, int] | None = None,
    cpu: float = 0.1,
) -> TrainingJob:
    """Replicas that record their start in ``folder/<name>.starts``, then run."""
    common = {"STARTS": str(folder / f"{name}.starts")}
    worker: dict[str, Any] = {
        "replicas": workers,
        "resources": {"cpu": cpu, "memory": "32Mi"},
        "command": [sys.executable, "-c", STARTS],
        "env": {**common, **(env or {})},
        "restartPolicy": "OnFailure",
        "maxRestarts": 3,
    }
    if elastic is not None:
        worker.update(minReplicas=elastic[0], maxReplicas=elastic[1])
    roles: dict[str, Any] = {"worker": worker}
    if ps_env is not None:
        roles["ps"] = {
            "replicas": 1,
            "resources": {"cpu": cpu, "memory": "32Mi"},
            "command": [sys.executable, "-c", STARTS],
            "env": {**common, **ps_env},
        }
    return TrainingJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "ads"},
            "spec": {
                "mode": "ps" if ps_env is not None else "allreduce",
                "restartBackoffSeconds": 0.1,
                "roles": roles,
            },
        }
    )


def starts(folder: Path, name: str) -> list[tuple[str, int]]:
    path = folder / f"{name}.starts"
    lines = path.read_text().split() if path.exists() else []
    return [(lines[i], int(lines[i + 1])) for i in range(0, len(lines), 2)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def row_of(controller: Controller, name: str) -> JobRow | None:
    with controller.store.read() as tx:
        return tx.job("ads", name)


def until(
    controller: Controller, name: str, check: Callable[[JobRow], object], what: str
) -> JobRow:
    """Reconcile until ``check`` holds for the job's row; returns the row."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        controller.reconcile_once()
        row = row_of(controller, name)
        if row is not None and check(row):
            return row
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def running(row: JobRow) -> bool:
    return row.phase == "Running" and all(r.pid for r in row.replicas)


def events(controller: Controller, name: str) -> list[EventRow]:
    with controller.store.read() as tx:
        return tx.events(f"ads/{name}")


def deletions(controller: Controller) -> list[str]:
    """Messages of the cluster events that record a job's removal (its own events go)."""
    with controller.store.read() as tx:
        return [e.message for e in tx.events() if e.reason == "Deleted" and e.job is None]


def replica(row: JobRow, name: str) -> ReplicaRow:
    return next(r for r in row.replicas if r.replica_name == name)


def handle_of_replica(row: JobRow, name: str) -> ReplicaHandle:
    handle = handle_of(replica(row, name).handle)
    assert handle is not None
    return handle


def gone(pid: int, timeout_s: float = 5) -> bool:
    """True once ``pid`` no longer runs (SIGKILL takes a moment to land)."""
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def test_a_job_whose_step_raises_is_failed_alone_and_the_others_carry_on(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("broken", tmp_path, workers=2))
    controller.submit(job("fine", tmp_path))
    until(controller, "broken", running, "broken to run")
    fine = until(controller, "fine", running, "fine to run")
    # Corrupt the broken job's state: a replica of a role its spec does not have exits.
    broken = row_of(controller, "broken")
    assert broken is not None
    controller.engine.stop(handle_of_replica(broken, "worker-1"), grace_s=0)
    with controller.store.transaction() as tx:
        row = tx.job("ads", "broken")
        assert row is not None
        replica(row, "worker-1").role = "ghost"

    controller.reconcile_once()

    failed = row_of(controller, "broken")
    assert failed is not None and failed.phase == "Failed"
    assert failed.message == "the controller could not process this job: KeyError: 'ghost'"
    assert [e.reason for e in events(controller, "broken")][-1] == "ControllerError"
    still = row_of(controller, "fine")
    assert still is not None and still.phase == "Running"
    assert replica(still, "worker-0").pid == replica(fine, "worker-0").pid
    survivor = replica(broken, "worker-0").pid
    assert survivor is not None and gone(survivor)


def test_a_pending_job_whose_spec_cannot_be_read_is_failed_alone_and_the_other_runs(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("unreadable", tmp_path))
    controller.submit(job("fine", tmp_path))
    with controller.store.transaction() as tx:
        row = tx.job("ads", "unreadable")
        assert row is not None
        row.spec = {"spec": {"roles": {"worker": {"replicas": "many"}}}}

    controller.reconcile_once()
    fine = until(controller, "fine", lambda r: starts(tmp_path, "fine"), "fine to start")

    failed = row_of(controller, "unreadable")
    assert failed is not None and failed.phase == "Failed"
    assert failed.message.startswith("the controller could not process this job: ValidationError:")
    assert [name for name, _ in starts(tmp_path, "fine")] == ["worker-0"]
    assert fine.phase == "Running"


def test_a_bind_whose_write_fails_fails_its_job_alone_and_every_other_job_starts_once(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("poisoned", tmp_path))
    for name in ("a", "b", "c"):
        controller.submit(job(name, tmp_path, workers=2))
    with controller.store.transaction() as tx:
        row = tx.job("ads", "poisoned")
        assert row is not None
        # A leftover replica row: binding worker-0 again breaks the (job, role, index) key.
        row.replicas.append(
            ReplicaRow(
                role="worker", index=0, phase="Stopped", node="n", cpu_millis=0, memory_bytes=0
            )
        )

    controller.reconcile_once()
    for name in ("a", "b", "c"):
        until(controller, name, lambda r: len(starts(tmp_path, r.name)) == 2, f"{name} to run")
    for _ in range(5):
        controller.reconcile_once()

    poisoned = row_of(controller, "poisoned")
    assert poisoned is not None and poisoned.phase == "Failed"
    assert "IntegrityError" in poisoned.message
    for name in ("a", "b", "c"):
        assert sorted(n for n, _ in starts(tmp_path, name)) == ["worker-0", "worker-1"]
    assert starts(tmp_path, "poisoned") == []


def test_a_replica_that_ignores_sigterm_holds_no_cycle_and_is_killed_after_its_grace(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    stubborn = {"IGNORE_SIGTERM": "1"}
    controller.submit(job("ps-job", tmp_path, env={"EXIT_AFTER_S": "1"}, ps_env=stubborn))
    until(controller, "ps-job", lambda r: len(starts(tmp_path, "ps-job")) == 2, "both started")
    [ps_pid] = [pid for name, pid in starts(tmp_path, "ps-job") if name == "ps-0"]

    longest_s = 0.0
    deadline = time.monotonic() + 30
    while (row := row_of(controller, "ps-job")) is not None and row.phase != "Succeeded":
        assert time.monotonic() < deadline, "the job did not finish"
        started = time.monotonic()
        controller.reconcile_once()
        longest_s = max(longest_s, time.monotonic() - started)
        time.sleep(0.05)

    assert longest_s < 0.5
    assert {r.replica_name: r.phase for r in row.replicas} == {
        "worker-0": "Succeeded",
        "ps-0": "Stopped",
    }
    assert "ReplicaKilled" in [e.reason for e in events(controller, "ps-job")]
    assert gone(ps_pid)


def test_deleting_a_job_whose_replicas_ignore_sigterm_returns_at_once(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("stubborn", tmp_path, workers=8, env={"IGNORE_SIGTERM": "1"}))
    until(controller, "stubborn", lambda r: len(starts(tmp_path, r.name)) == 8, "8 workers")
    pids = [pid for _, pid in starts(tmp_path, "stubborn")]

    started = time.monotonic()
    controller.delete("ads", "stubborn")
    took_s = time.monotonic() - started

    assert took_s < 1.5
    assert [pid for pid in pids if alive(pid)] == []
    assert row_of(controller, "stubborn") is None
    assert events(controller, "stubborn") == []
    assert deletions(controller) == [
        "job ads/stubborn deleted by the control plane; processes killed"
    ]


def test_a_launch_made_before_a_crash_is_adopted_not_made_again(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    first = make_controller()
    first.submit(job("adopt-me", tmp_path, workers=2))
    before = until(
        first, "adopt-me", lambda r: running(r) and len(starts(tmp_path, r.name)) == 2, "2 workers"
    )
    # The state a crash between launch and its record leaves: an intent, no handle.
    with first.store.transaction() as tx:
        row = tx.job("ads", "adopt-me")
        assert row is not None
        for replica_row in row.replicas:
            replica_row.phase, replica_row.handle, replica_row.pid = "Launching", None, None
            replica_row.log_path = None

    restarted = make_controller()
    after = until(restarted, "adopt-me", running, "the launches adopted")

    for name in ("worker-0", "worker-1"):
        was, now = replica(before, name), replica(after, name)
        assert (now.pid, now.starts, now.launch_id) == (was.pid, was.starts, was.launch_id)
        assert now.log_path == was.log_path
    assert len(starts(tmp_path, "adopt-me")) == 2
    adopted = [e.replica for e in events(restarted, "adopt-me") if e.reason == "ReplicaAdopted"]
    assert sorted(adopted) == ["worker-0", "worker-1"]


def test_a_launch_recorded_but_never_made_is_made_once_under_its_launch_id(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    first = make_controller()
    first.submit(job("make-me", tmp_path))
    before = until(first, "make-me", lambda r: starts(tmp_path, r.name), "the worker running")
    first.engine.stop(handle_of_replica(before, "worker-0"), grace_s=0)
    # The state a crash between the intent's commit and the launch leaves.
    with first.store.transaction() as tx:
        row = tx.job("ads", "make-me")
        assert row is not None
        worker = replica(row, "worker-0")
        worker.phase, worker.handle, worker.pid = "Launching", None, None
        worker.launch_id = "never-launched"

    restarted = make_controller()
    after = until(restarted, "make-me", lambda r: len(starts(tmp_path, r.name)) == 2, "a launch")
    for _ in range(5):
        restarted.reconcile_once()

    worker = replica(row_of(restarted, "make-me") or after, "worker-0")
    assert worker.launch_id == "never-launched"
    assert worker.starts == before.replicas[0].starts
    assert len(starts(tmp_path, "make-me")) == 2  # the original, then this launch
    assert alive(starts(tmp_path, "make-me")[-1][1])


def test_a_store_that_cannot_write_skips_cycles_and_fails_no_job(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("exits", tmp_path, env={"EXIT_AFTER_S": "1", "EXIT_CODE": "3"}))
    until(controller, "exits", lambda r: starts(tmp_path, r.name), "the worker running")

    with _full_disk(controller.store):
        time.sleep(1.5)  # the worker exits 3 while nothing can be written
        for _ in range(5):
            controller.reconcile_once()
        row = row_of(controller, "exits")
        assert row is not None and row.phase == "Running"
        assert replica(row, "worker-0").phase == "Running"  # not recorded yet
        assert len(starts(tmp_path, "exits")) == 1  # nothing restarted unrecorded

    row = until(controller, "exits", lambda r: len(starts(tmp_path, "exits")) == 2, "a restart")
    assert row.phase in ("Restarting", "Running")
    assert replica(row, "worker-0").restarts == 1


class _full_disk:
    """SQLite's own "database or disk is full", for every connection of ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.pages = 0

    def _limit(self, connection: Any, _record: Any) -> None:
        connection.execute(f"PRAGMA max_page_count = {self.pages}")

    def __enter__(self) -> None:
        with self.store.engine.connect() as connection:
            self.pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        event.listen(self.store.engine, "connect", self._limit)
        self.store.engine.dispose()
        with self.store.engine.connect() as connection:  # fill the last free bytes
            for size in (2000, 500, 100, 20, 1):
                while _insert_filler(connection, "x" * size):
                    pass

    def __exit__(self, *_: object) -> None:
        event.remove(self.store.engine, "connect", self._limit)
        self.store.engine.dispose()


def _insert_filler(connection: Any, message: str) -> bool:
    try:
        with connection.begin():
            connection.exec_driver_sql(
                "INSERT INTO events (time, type, reason, message) "
                f"VALUES (0, 'Normal', 'Filler', '{message}')"
            )
    except OperationalError:
        return False
    return True


def test_an_elastic_job_that_cannot_grow_says_why_once(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller(cpu=2)
    controller.submit(job("flex", tmp_path, workers=1, elastic=(1, 4), cpu=1))
    until(controller, "flex", lambda r: running(r) and len(r.replicas) == 3, "2 workers")
    for _ in range(10):
        controller.reconcile_once()

    cannot = [e for e in events(controller, "flex") if e.reason == "CannotGrow"]
    assert [e.message for e in cannot] == [
        "cannot grow to the desired size (InsufficientCPU): cannot add worker-2: it needs "
        "1 cpu; largest free block is none: no node has any cpu free"
    ]

    controller.scale("ads", "flex", "worker", 2)
    row = until(controller, "flex", lambda r: r.pending_code is None, "the reason cleared")
    view = job_view(row)
    assert view.desired == {"worker": 2}
    assert view.pending_reason is None


def test_a_job_deleted_while_a_launch_is_unrecorded_has_that_launch_killed_too(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    controller.submit(job("doomed", tmp_path))
    until(controller, "doomed", lambda r: starts(tmp_path, r.name), "the worker running")
    [(_, pid)] = starts(tmp_path, "doomed")
    with controller.store.transaction() as tx:  # as if its record never happened
        row = tx.job("ads", "doomed")
        assert row is not None
        worker = replica(row, "worker-0")
        worker.phase, worker.handle, worker.pid = "Launching", None, None

    controller.delete("ads", "doomed", actor="token 'ops'")

    assert row_of(controller, "doomed") is not None  # the unrecorded launch holds it
    deadline = time.monotonic() + 30
    while row_of(controller, "doomed") is not None and time.monotonic() < deadline:
        controller.reconcile_once()
        time.sleep(0.05)
    assert row_of(controller, "doomed") is None
    assert gone(pid)
    assert deletions(controller) == [
        "job ads/doomed deleted by token 'ops'; its processes are gone"
    ]
    assert len(starts(tmp_path, "doomed")) == 1


def test_a_job_submitted_after_the_newest_job_was_deleted_is_scheduled(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller = make_controller()
    for name in ("first", "second", "third"):
        controller.submit(job(name, tmp_path))
        # Its process wrote its start: running is not enough (the write may lag).
        until(controller, name, lambda r: running(r) and starts(tmp_path, r.name), f"{name} runs")
        controller.delete("ads", name)


@pytest.mark.parametrize(
    ("cpu", "phase"), [(0.1, "Succeeded"), (6.0, "Pending")], ids=["finished", "pending"]
)
def test_a_job_marked_deleted_by_a_server_that_stopped_is_forgotten_by_the_next(
    make_controller: Callable[..., Controller], tmp_path: Path, cpu: float, phase: str
) -> None:
    """A delete marks the job, then forgets it in a second transaction; a server that
    stopped between the two left a row no cycle stepped (only active jobs were), and a
    job of that name could never be submitted again."""
    controller = make_controller()
    controller.submit(job("blocker", tmp_path, cpu=6.0))  # of the node's 8 cpu
    until(controller, "blocker", running, "the blocker to run")
    controller.submit(job("half", tmp_path, cpu=cpu, env={"EXIT_AFTER_S": "0"}))
    until(controller, "half", lambda r: r.phase == phase, phase)
    with controller.store.transaction() as tx:
        row = tx.job("ads", "half")
        assert row is not None
        row.deleted_at = time.time()
        row.message = "deleted by someone"

    restarted = make_controller()
    deadline = time.monotonic() + 10
    while row_of(restarted, "half") is not None and time.monotonic() < deadline:
        restarted.reconcile_once()
        time.sleep(0.05)

    assert row_of(restarted, "half") is None
    assert deletions(restarted) == ["job ads/half deleted by someone; its processes are gone"]
    restarted.submit(job("half", tmp_path, env={"EXIT_AFTER_S": "0"}))
    until(restarted, "half", lambda r: r.phase == "Succeeded", "the job submitted again")


def controller_with(
    make_controller: Callable[..., Controller], engine_class: type[Engine]
) -> tuple[Controller, Engine]:
    """A controller on an engine of ``engine_class``, and that engine."""
    controller = make_controller(engine_class=engine_class)
    assert isinstance(controller.engine, engine_class)
    return controller, controller.engine


class RefusedLaunches(LocalEngine):
    """The local engine, except that while ``refusal`` is set every launch raises it: a
    node deleted since the scheduler placed the replica (``PlacementLost``, as the
    Kubernetes engine raises it) or a cluster API that failed (``LaunchRefused``)."""

    refusal: Exception | None = None

    def launch(self, spec: LaunchSpec) -> ReplicaHandle:
        if self.refusal is not None:
            raise self.refusal
        return super().launch(spec)


def one_worker_running(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> tuple[Controller, RefusedLaunches, int]:
    """An elastic job (1 to 2 workers) held at one running worker; its pid."""
    controller, engine = controller_with(make_controller, RefusedLaunches)
    controller.submit(job("flex", tmp_path, workers=1, elastic=(1, 2)))
    controller.scale("ads", "flex", "worker", 1)
    row = until(controller, "flex", lambda r: running(r) and len(r.replicas) == 2, "worker-0")
    survivor = replica(row, "worker-0").pid
    assert survivor is not None
    return controller, engine, survivor


def accepted_again(
    controller: Controller, engine: RefusedLaunches, tmp_path: Path, survivor: int
) -> JobRow:
    """Launches work again: worker-1 starts beside the survivor, which kept its pid."""
    engine.refusal = None
    row = until(
        controller, "flex", lambda r: running(r) and len(starts(tmp_path, "flex")) == 2, "worker-1"
    )
    assert replica(row, "worker-0").pid == survivor
    return row


def until_event(controller: Controller, *reasons: str) -> list[str]:
    """Reconcile until the job has an event of one of ``reasons``; its event reasons."""
    until(
        controller,
        "flex",
        lambda _: set(reasons) & {e.reason for e in events(controller, "flex")},
        f"an event {' or '.join(reasons)}",
    )
    return [e.reason for e in events(controller, "flex")]


def test_a_scale_out_whose_node_is_lost_before_its_launch_leaves_the_survivor_running(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller, engine, survivor = one_worker_running(make_controller, tmp_path)
    engine.refusal = PlacementLost("ads/flex: node(s) n no longer exist")
    controller.scale("ads", "flex", "worker", 2)
    reasons = until_event(controller, "ReplicaLost", "BindFailed")
    assert "BindFailed" not in reasons, reasons
    row = row_of(controller, "flex")
    assert row is not None and row.phase == "Running"
    assert sorted(r.replica_name for r in row.replicas) == ["master-0", "worker-0"]
    assert replica(row, "worker-0").pid == survivor and alive(survivor)
    lost = next(e for e in events(controller, "flex") if e.reason == "ReplicaLost")
    assert lost.message.startswith("worker-1 could not start on n: PlacementLost: "), lost.message

    row = accepted_again(controller, engine, tmp_path, survivor)
    assert sorted(name for name, _ in starts(tmp_path, "flex")) == ["worker-0", "worker-1"]


def test_a_launch_the_platform_refuses_is_tried_again_uncharged_beside_the_survivor(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller, engine, survivor = one_worker_running(make_controller, tmp_path)
    engine.refusal = LaunchRefused("create pod ads/flex-worker-1: HTTP 500 (after 4 tries)")
    controller.scale("ads", "flex", "worker", 2)
    reasons = until_event(controller, "LaunchFailed", "BindFailed", "ReplicaFailed")
    assert "LaunchFailed" in reasons and "ReplicaFailed" not in reasons, reasons
    refused = next(e for e in events(controller, "flex") if e.reason == "LaunchFailed")
    assert refused.message.startswith(
        "worker-1 could not be made on n: LaunchRefused: create pod ads/flex-worker-1: HTTP 500"
    ), refused.message
    assert "not counted against maxRestarts" in refused.message

    row = accepted_again(controller, engine, tmp_path, survivor)
    assert replica(row, "worker-1").restarts == 0
    assert "BindFailed" not in [e.reason for e in events(controller, "flex")]


class LosingNodes(LocalEngine):
    """The local engine with nodes of its own, as the Kubernetes engine finds them:
    ``change`` takes one away and may bring another; a replica on a node that is gone is
    killed and seen lost with it, as a pod is. Each node holds one replica (0.1 cpu)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.version = 0
        self._nodes = {name: NodeSpec(name=name, cpu=0.1, memory="8Gi") for name in ("a", "b")}
        self._node_of: dict[str, str] = {}

    def nodes(self) -> list[NodeSpec]:
        return list(self._nodes.values())

    def change(self, lose: str, add: str | None) -> None:
        """Node ``lose`` dies and ``add`` (if any) joins, in the same instant."""
        del self._nodes[lose]
        if add is not None:
            self._nodes[add] = NodeSpec(name=add, cpu=0.1, memory="8Gi")
        self.version += 1

    def launch(self, spec: LaunchSpec) -> ReplicaHandle:
        handle = super().launch(spec)
        self._node_of[repr(handle)] = spec.node
        return handle

    def observe(self, handle: ReplicaHandle) -> Observation:
        seen = super().observe(handle)
        if self._node_of.get(repr(handle), "") in self._nodes:
            return seen
        if seen.running and seen.pid is not None:
            os.kill(seen.pid, signal.SIGKILL)
        return Observation(False, None, seen.pid, "its node is gone", node_lost=True)


def ps_job_running(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> tuple[Controller, LosingNodes, JobRow]:
    """A ps-mode job (one ps, one worker, fixed sizes) running on nodes a and b."""
    controller, engine = controller_with(make_controller, LosingNodes)
    controller.submit(job("ledger", tmp_path, workers=1, ps_env={}))
    row = until(
        controller, "ledger", lambda r: running(r) and len(starts(tmp_path, "ledger")) == 2, "both"
    )
    assert {replica(row, "ps-0").node, replica(row, "worker-0").node} == {"a", "b"}
    return controller, engine, row


def test_a_fixed_replica_lost_with_its_node_is_placed_again_alone_before_pending_jobs(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller, engine, row = ps_job_running(make_controller, tmp_path)
    controller.submit(job("waiting", tmp_path))
    until(controller, "waiting", lambda r: r.pending_code is not None, "a job waiting for room")
    worker, port = replica(row, "worker-0").pid, replica(row, "ps-0").port
    engine.change(lose=replica(row, "ps-0").node, add="c")

    row = until(
        controller,
        "ledger",
        lambda r: running(r) and len(starts(tmp_path, "ledger")) == 3,
        "ps-0 placed and started again",
    )

    assert replica(row, "ps-0").node == "c", "the new node's room went to the job that lost its own"
    assert replica(row, "worker-0").pid == worker and worker is not None and alive(worker)
    assert replica(row, "ps-0").port == port, "peers reach it at the port they were given"
    assert replica(row, "ps-0").restarts == 0, "a lost node is not the replica's failure"
    assert sorted(name for name, _ in starts(tmp_path, "ledger")) == ["ps-0", "ps-0", "worker-0"]
    reasons = [e.reason for e in events(controller, "ledger")]
    assert reasons.count("ReplicaLost") == 1 and reasons.count("ReplicaPlaced") == 1, reasons
    shown = {e.reason: e.message for e in events(controller, "ledger")}
    assert shown["ReplicaLost"].startswith("ps-0 was lost with its node ")
    assert shown["ReplicaPlaced"] == "ps-0 placed again on c"
    assert not {"BindFailed", "Requeued", "ReplicaFailed"} & set(shown), shown
    waiting = row_of(controller, "waiting")
    assert waiting is not None and waiting.phase == "Pending"


def test_a_fixed_replica_lost_with_its_node_and_no_room_left_requeues_its_job_whole(
    make_controller: Callable[..., Controller], tmp_path: Path
) -> None:
    controller, engine, row = ps_job_running(make_controller, tmp_path)
    worker = replica(row, "worker-0").pid
    assert worker is not None
    engine.change(lose=replica(row, "ps-0").node, add=None)

    row = until(controller, "ledger", lambda r: r.phase == "Pending", "the ps job requeued")

    assert row.replicas == []
    assert gone(worker), "its worker stopped: the job is placed again whole"
    requeued = next(e for e in events(controller, "ledger") if e.reason == "Requeued")
    assert requeued.message.startswith("ps-0 lost with its node and no node has room for it now")
    assert requeued.message.endswith("the job is queued again to be placed whole")
