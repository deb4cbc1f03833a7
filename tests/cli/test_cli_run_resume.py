"""`tidemill run --state-dir DIR` killed with SIGKILL, then run again on the same folder:
the job resumes from its newest checkpoint and trains every sample exactly once; a file
with another spec, or a job that has ended, is refused before anything starts.

Real processes throughout: the run, its embedded server, the workers (the elastic
example's counting model, which proves its own bookkeeping) and their checkpoints."""

from __future__ import annotations

import doctest
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from tidemill.cli import resume
from tidemill.engines._supervise import TETHER_GRACE_S
from tidemill.store.store import Store, sqlite_url

EXAMPLE = Path(__file__).parents[2] / "examples" / "elastic" / "train.py"
STEPS = 600
JOB = """\
metadata: {{name: resumable}}
spec:
  mode: allreduce
  checkpoint: {{everySteps: 20}}
  roles:
    worker:
      replicas: 2
      minReplicas: 1
      maxReplicas: 2
      resources: {{cpu: 0.5}}
      command: [python, {train}]
      args: [--steps, "{steps}", --step-time, "0.01", --result, {result}]
"""


def tidemill_run(job: Path, state: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tidemill.cli", "run", str(job), "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def finished(process: subprocess.Popen[str], timeout_s: float = 240) -> tuple[int, str, str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, stdout, stderr


def test_a_killed_run_resumes_on_its_state_folder_and_trains_every_sample_once(
    tmp_path: Path,
) -> None:
    result = tmp_path / "result.json"
    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(train=EXAMPLE, steps=STEPS, result=result))
    state = tmp_path / "state"

    first = tidemill_run(job, state)
    try:
        assert first.stdout is not None
        saved = next((line for line in first.stdout if "CheckpointSaved" in line), None)
        assert saved is not None, "the first run saved no checkpoint"
    finally:
        first.kill()
        first.wait()
    workers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(EXAMPLE) in " ".join(p.info["cmdline"] or [])
    ]

    changed = tmp_path / "changed.yaml"
    changed.write_text(JOB.format(train=EXAMPLE, steps=STEPS + 1, result=result))
    code, _, stderr = finished(tidemill_run(changed, state))
    assert code == 1, stderr
    assert "job default/resumable in" in stderr and "another spec" in stderr
    assert "  spec.roles.worker.args" in stderr.splitlines()

    for pid in workers:  # the tether stopped the first run's workers
        try:
            psutil.Process(pid).wait(TETHER_GRACE_S + 5)
        except psutil.NoSuchProcess:
            continue

    code, stdout, stderr = finished(tidemill_run(job, state))
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert "resuming job default/resumable (" in stderr
    assert "Resuming (Warning): the control plane that ran this job ended" in stdout
    # whichever worker is rank 0 of the first epoch restores (on a busy machine, worker-1)
    restored = re.search(r"CheckpointRestored \[worker-\d\]: restored step (\d+)", stdout)
    assert restored is not None and int(restored[1]) > 0, stdout[-3000:]
    summary = json.loads(result.read_text())
    assert summary["committed_step"] == STEPS
    assert summary["counts_min"] == summary["counts_max"] == 1.0
    assert summary["ids_trained_once"] == summary["samples_trained"]
    assert [epoch["from_step"] > 0 for epoch in summary["epochs"]][-1]

    code, _, stderr = finished(tidemill_run(job, state))
    assert code == 1
    assert "has already ended (Succeeded)" in stderr
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(EXAMPLE) in " ".join(p.info["cmdline"] or [])
    ]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


def test_the_differences_named_are_the_fields_that_differ() -> None:
    found = doctest.testmod(resume)
    assert found.attempted > 0 and found.failed == 0
    stored = {"spec": {"roles": {"worker": {"args": ["1"], "replicas": 2}}}}
    wanted = {"spec": {"roles": {"worker": {"args": ["2"], "replicas": 2}, "ps": {}}}}
    assert resume.differing_paths(stored, wanted) == [
        "spec.roles.ps",
        "spec.roles.worker.args",
    ]


WAITING = (
    "import pathlib, time\n"
    "print('started', flush=True)\n"
    "while not pathlib.Path('go').exists():\n"
    "    time.sleep(0.1)\n"
    "print('hello', flush=True)\n"
)


def killed_while_running(tmp_path: Path) -> tuple[Path, Path]:
    """A job file whose worker waits for a file ``go``, and the state a run of it left
    when it was killed with SIGKILL while the worker waited."""
    (tmp_path / "hello.py").write_text(WAITING)
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: hello}\n"
        "spec: {roles: {worker: {replicas: 1, resources: {cpu: 0.1}, "
        "command: [python, hello.py]}}}\n"
    )
    state = tmp_path / "state"
    first = tidemill_run(job, state, cwd=tmp_path)
    try:
        assert first.stdout is not None
        assert any("[worker-0] started" in line for line in first.stdout)
    finally:
        first.kill()
        first.wait()
    return job, state


def edit_row(state: Path, edit: Callable[[Any], None]) -> None:
    store = Store(sqlite_url(state))
    try:
        with store.transaction() as tx:
            row = tx.job("default", "hello")
            assert row is not None and row.phase == "Running"
            edit(row)
    finally:
        store.close()


def test_a_job_an_earlier_run_left_half_deleted_is_let_go_then_run_afresh(tmp_path: Path) -> None:
    job, state = killed_while_running(tmp_path)
    edit_row(state, lambda row: setattr(row, "deleted_at", time.time()))
    (tmp_path / "go").touch()

    code, stdout, stderr = finished(tidemill_run(job, state, cwd=tmp_path))
    assert code == 0, stderr
    assert "waiting for job default/hello, deleted by an earlier run, to be gone" in stderr
    assert "[worker-0] hello" in stdout


def test_a_job_whose_stored_spec_no_longer_validates_is_refused_by_name(tmp_path: Path) -> None:
    job, state = killed_while_running(tmp_path)

    def break_spec(row: Any) -> None:
        spec = json.loads(json.dumps(row.spec))
        spec["spec"]["roles"]["worker"]["replicas"] = -5
        row.spec = spec

    edit_row(state, break_spec)
    code, _, stderr = finished(tidemill_run(job, state, cwd=tmp_path))
    assert code == 1
    assert "its stored spec is no longer valid (1 problem(s))" in stderr
    assert "Traceback" not in stderr


def test_a_job_suspended_through_the_runs_server_is_resumed_by_the_next_run(
    tmp_path: Path,
) -> None:
    job, state = killed_while_running(tmp_path)

    def suspended(row: Any) -> None:  # what `tidemill suspend` leaves: no replica
        row.phase = "Suspended"
        row.replicas.clear()

    edit_row(state, suspended)
    (tmp_path / "go").touch()
    code, stdout, stderr = finished(tidemill_run(job, state, cwd=tmp_path))
    assert code == 0, stderr
    assert "resuming job default/hello (Suspended)" in stderr
    assert "[worker-0] hello" in stdout
