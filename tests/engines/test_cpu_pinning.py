"""The local engine pins a replica to the CPUs of its GPUs' NUMA node: the replica
process, its threads and its children run only there (``os.sched_setaffinity``)."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemill.engines.base import LaunchSpec
from tidemill.engines.local import LocalEngine

from .processes import wait_exit, wait_for

ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning needs two usable CPUs")

REPORT = textwrap.dedent(
    """
    import os, subprocess, sys
    child = subprocess.run(
        ["grep", "Cpus_allowed_list", "/proc/self/status"], capture_output=True, text=True
    )
    with open("pinned.txt", "w") as out:
        out.write(",".join(str(c) for c in sorted(os.sched_getaffinity(0))) + "\\n")
        out.write(child.stdout.split()[-1] + "\\n")
    """
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(tmp_path / "state", preload=())
    yield engine
    engine.close()


def _spec(work: Path, argv: tuple[str, ...], cpu_ids: tuple[int, ...]) -> LaunchSpec:
    return LaunchSpec(
        job="team/job",
        job_uid="6f1c0e5a9b2d4c8e",
        launch_id=uuid.uuid4().hex,
        role="worker",
        index=0,
        argv=argv,
        env={},
        working_dir=str(work),
        node="local",
        gpu_ids=(0,),
        cpu_ids=cpu_ids,
    )


def _report(tmp_path: Path, engine: LocalEngine, warm: bool, cpu_ids: tuple[int, ...]) -> list[str]:
    """What the replica and a child it started saw as their CPUs."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    script = work / "report.py"
    script.write_text(REPORT)
    argv = (sys.executable, str(script)) if warm else (sys.executable, "-c", REPORT)
    if warm:  # the first Python launch starts the fork server; later ones fork from it
        wait_exit(engine, engine.launch(_spec(work, (sys.executable, str(script)), ())))
        assert engine.fork_server is not None
        engine.fork_server.wait_ready(30)
    handle = engine.launch(_spec(work, argv, cpu_ids))
    seen = wait_exit(engine, handle)
    assert seen.exit_code == 0, Path(str(engine.log_path(handle))).read_text()
    assert handle.data["warm_start"] is warm
    return (work / "pinned.txt").read_text().split()


@needs_two_cpus
@pytest.mark.parametrize("warm", [False, True], ids=["cold start", "warm start (forked)"])
def test_a_replica_and_its_children_run_only_on_the_cpus_it_was_given(
    tmp_path: Path, engine: LocalEngine, warm: bool
) -> None:
    last = ALLOWED[-1]
    assert _report(tmp_path, engine, warm, (last,)) == [str(last), str(last)]


@needs_two_cpus
def test_a_running_replica_process_has_the_affinity_the_kernel_reports(
    tmp_path: Path, engine: LocalEngine
) -> None:
    first = ALLOWED[0]
    handle = engine.launch(
        _spec(tmp_path, (sys.executable, "-c", "import time; time.sleep(30)"), (first,))
    )
    try:
        wait_for(lambda: engine.observe(handle).pid is not None, "the replica's pid")
        pid = engine.observe(handle).pid
        assert pid is not None
        assert os.sched_getaffinity(pid) == {first}
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Cpus_allowed_list:\t{first}\n" in status
    finally:
        engine.stop(handle, grace_s=0)


def test_cpus_this_machine_does_not_have_leave_the_replica_unpinned_and_say_so(
    tmp_path: Path, engine: LocalEngine
) -> None:
    absent = (ALLOWED[-1] + 1000,)
    everything = ",".join(str(c) for c in ALLOWED)
    assert _report(tmp_path, engine, False, absent)[0] == everything
    logs = "".join(p.read_text() for p in (tmp_path / "state").rglob("*.log"))
    assert f"TIDEMILL_CPUS names CPUs [{absent[0]}]" in logs
    assert "running unpinned" in logs


def test_dry_run_shows_the_cpus_and_leaves_them_out_when_there_are_none(
    tmp_path: Path, engine: LocalEngine
) -> None:
    pinned = engine.dry_run(_spec(tmp_path, ("python", "x.py"), (2, 3)))
    assert pinned.env["TIDEMILL_CPUS"] == "2,3"
    free = engine.dry_run(_spec(tmp_path, ("python", "x.py"), ()))
    assert "TIDEMILL_CPUS" not in free.env
