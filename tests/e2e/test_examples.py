"""The README's main job, as a user runs it: embedded, and against a server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_ddp" / "job.yaml"


def accuracy(output: str) -> float:
    found = re.findall(r"test accuracy: ([0-9.]+)", output)
    assert found, output[-3000:]
    return float(found[-1])


def test_tidemill_run_trains_digits_with_ddp_to_90_percent() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tidemill", "run", str(DIGITS)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert accuracy(result.stdout) >= 0.90
    assert "[worker-0]" in result.stdout and "[worker-1]" in result.stdout
    assert "Succeeded" in result.stdout


def test_submit_and_follow_logs_on_a_server(start_server) -> None:  # type: ignore[no-untyped-def]
    server, client = start_server()
    submitted = subprocess.run(
        [sys.executable, "-m", "tidemill", "submit", str(DIGITS), "--server", server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr

    followed = subprocess.run(
        [sys.executable, "-m", "tidemill", "logs", "digits-ddp", "-f", "--server", server.url],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert followed.returncode == 0, followed.stderr
    assert accuracy(followed.stdout) >= 0.90
    view = client.wait("digits-ddp", timeout_s=60)
    assert view.phase == "Succeeded"
    assert [r.phase for r in view.replicas] == ["Succeeded", "Succeeded"]


def test_run_exits_1_on_failure_and_2_on_invalid_input(tmp_path: Path) -> None:
    failing = tmp_path / "fail.yaml"
    failing.write_text(
        "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: fails}\n"
        "spec:\n  roles:\n    worker:\n      resources: {cpu: 0.1, memory: 64Mi}\n"
        f"      command: [{sys.executable}, -c, 'raise SystemExit(4)']\n"
        "      restartPolicy: Never\n"
    )
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: x}\n")

    failed = subprocess.run(
        [sys.executable, "-m", "tidemill", "run", str(failing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    refused = subprocess.run(
        [sys.executable, "-m", "tidemill", "run", str(invalid)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Failed" in failed.stdout + failed.stderr
    assert refused.returncode == 2
    assert "spec: required field is missing" in refused.stdout + refused.stderr
