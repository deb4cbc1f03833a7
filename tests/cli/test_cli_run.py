"""`tidemill run` stopped by Ctrl-C or SIGTERM deletes its job and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

LOOP = (
    "import os, pathlib, time\n"
    "pathlib.Path(f'pid-{os.environ[\"RANK\"]}').write_text(str(os.getpid()))\n"
    "for i in range(600):\n"
    "    print('tick', i, flush=True)\n"
    "    time.sleep(0.2)\n"
)


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_deletes_the_job_and_its_temporary_state(
    tmp_path: Path, signum: signal.Signals
) -> None:
    (tmp_path / "loop.py").write_text(LOOP)
    job = tmp_path / "job.yaml"
    job.write_text(
        "metadata: {name: forever}\n"
        "spec: {roles: {worker: {replicas: 2, command: [python, loop.py]}}}\n"
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "tidemill.cli", "run", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    replicas: list[int] = []
    try:
        assert process.stdout is not None
        assert any("[worker-1] tick 2" in line for line in process.stdout), "no replica output"
        replicas = [int((tmp_path / f"pid-{rank}").read_text()) for rank in (0, 1)]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "interrupted: deleting job default/forever" in stderr
        assert "Traceback" not in stderr
        assert not any(_alive(pid) for pid in replicas)
        assert list(temp.iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in replicas:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int, grace_s: float = 5.0) -> bool:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.05)
    return True
