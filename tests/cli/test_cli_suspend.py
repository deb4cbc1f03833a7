"""`tidemill suspend` and `tidemill resume` against a real server and real processes."""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.cli.conftest import SLEEP, Live
from tests.cli.test_cli_commands import assert_one_line_error, runner, tidemill
from tests.e2e.harness import wait_for
from tidemill.cli.main import app


def test_suspend_stops_a_job_and_resume_runs_it_again(live: Live) -> None:
    before = live.submit("nap", SLEEP, workers=2, cpu=0.5)
    assert before.phase in ("Pending", "Scheduled")  # the controller may place it at once
    pids = [r.pid for r in live.running("nap").replicas]

    suspended = tidemill(live, "suspend", "nap", "--wait")
    assert suspended.exit_code == 0, suspended.output
    assert suspended.stdout == (
        "job default/nap suspended; `tidemill resume nap` queues it again\n"
    )
    assert not [pid for pid in pids if pid is not None and psutil.pid_exists(pid)]
    view = live.client.get("nap")
    assert (view.phase, view.replicas) == ("Suspended", [])
    listed = tidemill(live, "jobs", "--phase", "suspended")
    assert [line.split()[1:5:3] for line in listed.stdout.splitlines()[1:]] == [
        ["nap", "Suspended"]
    ]
    queues = tidemill(live, "queues").stdout.splitlines()
    header, default = queues[0].split(), next(q for q in queues if q.startswith("default"))
    assert default.split()[header.index("SUSPENDED") - len(header)] == "1", queues
    described = tidemill(live, "describe", "nap").stdout
    assert "Suspended" in described and "suspended by" in described
    again = tidemill(live, "suspend", "nap")
    assert (again.exit_code, again.stdout) == (0, suspended.stdout)

    resumed = tidemill(live, "resume", "nap")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout == ("job default/nap resumed: queued again\n")
    fresh = [r.pid for r in live.running("nap").replicas]
    assert len(fresh) == 2 and not set(fresh) & set(pids)
    reasons = [e.reason for e in live.client.job_events("nap")]
    assert reasons.count("Suspending") == reasons.count("Resumed") == 1

    refused = tidemill(live, "resume", "nap")
    assert_one_line_error(refused, 1, "job default/nap is not suspended (Running); nothing to")
    stopping = tidemill(live, "suspend", "nap")
    assert stopping.exit_code == 0, stopping.output
    assert stopping.stdout == "job default/nap suspending: its replicas are stopping\n"
    wait_for(lambda: live.client.get("nap").phase == "Suspended", 30, "nap to be suspended")


def test_suspend_and_resume_name_what_they_cannot_reach(live: Live) -> None:
    live.submit("quick", "pass")
    live.finished("quick")
    assert_one_line_error(
        tidemill(live, "suspend", "quick"), 1, "job default/quick has finished (Succeeded)"
    )
    assert_one_line_error(tidemill(live, "resume", "ghost"), 1, "job 'ghost' not found")
    assert_one_line_error(tidemill(live, "suspend", "a/../b"), 2, "'a/../b' names no job")


def test_run_refuses_a_job_submitted_suspended_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "later.yaml"
    path.write_text(
        "metadata: {name: later}\n"
        "spec:\n"
        "  suspend: true\n"
        "  roles: {worker: {command: [python, -c, pass]}}\n"
    )
    result = runner.invoke(app, ["run", str(path), "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: spec.suspend: a suspended job waits for")
    assert not (tmp_path / "state").exists()
