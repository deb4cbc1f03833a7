"""``tidemill checkpoints JOB`` and ``tidemill submit --resume-from`` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from tests.cli.conftest import Live
from tests.e2e.harness import idle_elastic_job
from tidemill.checkpoint import CheckpointStore
from tidemill.cli.main import app
from tidemill.runtime import ElasticState

runner = CliRunner()


def test_checkpoints_are_listed_for_people_and_for_scripts(live: Live, tmp_path: Path) -> None:
    live.client.submit(idle_elastic_job("saved", {"dir": str(tmp_path / "ckpt")}))
    url = live.client.checkpoints("saved").url
    assert url is not None
    model = torch.nn.Linear(2, 1)
    state = ElasticState(model)
    state.data = {
        "tidemill.data": {
            "stage": 1,
            "pass": 0,
            "done": {"t": [[0, 4]]},
            "cursors": {"k": {"p0": 17}},
        }
    }
    state.step = 42
    state.commit()
    CheckpointStore(url).save(state.committed)

    table = runner.invoke(app, ["checkpoints", "saved", "--server", live.url])
    assert table.exit_code == 0, table.output
    assert "step-000000000042" in table.output
    assert "stage 1 pass 0: 4 shards done, 1 open" in table.output
    raw = runner.invoke(app, ["checkpoints", "saved", "-o", "json", "--server", live.url])
    assert json.loads(raw.output)["items"][0]["step"] == 42

    job_file = tmp_path / "next.yaml"
    job_file.write_text(yaml.safe_dump(idle_elastic_job("next")))
    resumed = runner.invoke(
        app, ["submit", str(job_file), "--resume-from", "saved", "--server", live.url]
    )
    assert resumed.exit_code == 0, resumed.output
    spec = live.client.get("next").spec["spec"]["checkpoint"]
    assert spec["resumeFrom"] == url


def test_resume_from_a_job_without_checkpoints_says_so(live: Live, tmp_path: Path) -> None:
    live.client.submit(idle_elastic_job("fresh", {"dir": str(tmp_path / "none-yet")}))
    job_file = tmp_path / "again.yaml"
    job_file.write_text(yaml.safe_dump(idle_elastic_job("again")))
    result = runner.invoke(
        app, ["submit", str(job_file), "--resume-from", "fresh", "--server", live.url]
    )
    assert result.exit_code == 1, result.output
    assert "job fresh has none in" in result.stderr
    missing = runner.invoke(
        app,
        ["submit", str(job_file), "--resume-from", str(tmp_path / "nowhere"), "--server", live.url],
    )
    assert missing.exit_code == 2, missing.output
    assert "spec.checkpoint.resumeFrom" in missing.stderr
