"""The job page of a real elastic job that reports its loss: the loss chart gains
points, a followed log line appears, the replicas run, scaling in shows in the elastic
history with its reason, and the ranks' stacks are grouped on request."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from tests.dashboard.conftest import screenshot
from tests.e2e.harness import wait_for
from tidemill.client import Client

TRAIN = """
import math
import random
import time
import torch
import tidemill.runtime as rt
from tidemill.runtime import ElasticState, elastic

model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
state = ElasticState(model, optimizer)

@elastic(state)
def train(ctx):
    for _ in ctx.steps(until=100000, samples_per_step=64):
        x = torch.randn(64, 4)
        target = x.sum(dim=1, keepdim=True) + 0.3 * torch.randn(64, 1)
        loss = (ctx.model(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state.step += 1
        rt.report(state.step, loss=float(loss), accuracy=1 - math.exp(-state.step / 150))
        if state.step % 10 == 0:
            print(f"step {state.step} loss {float(loss):.4f}", flush=True)
            state.commit()
        time.sleep(0.05 + 0.02 * random.random())

train()
"""


def reporting_job(tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "ctr-model", "namespace": "ads"},
        "spec": {
            "queue": "ads",
            "roles": {
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 2,
                    "resources": {"cpu": 1, "memory": "512Mi"},
                    "command": [sys.executable, str(script)],
                }
            },
        },
    }


def chart_points(page: Any, metric: str) -> int:
    found = page.get_attribute(f'figure[data-metric="{metric}"]', "data-points")
    return int(found or 0)


def last_logged_step(page: Any) -> int:
    steps = re.findall(r"step (\d+) loss", page.inner_text("#log-lines"))
    return max(map(int, steps), default=0)


def test_job_page_shows_a_training_job_live(page: Any, start_server: Any, tmp_path: Path) -> None:
    server = start_server()
    with Client(server.url) as client:
        client.submit(reporting_job(tmp_path))
        page.goto(f"{server.url}/#/jobs/ads/ctr-model")
        page.wait_for_selector('figure[data-metric="loss"]', timeout=90_000)
        seen = chart_points(page, "loss")
        wait_for(
            lambda: chart_points(page, "loss") >= seen + 10, 30, "the loss chart gaining points"
        )
        assert page.locator('figure[data-metric="samples_per_s"]').count() == 1

        page.wait_for_function(
            "() => /step \\d+ loss/.test(document.querySelector('#log-lines').innerText)"
        )
        logged = last_logged_step(page)
        wait_for(lambda: last_logged_step(page) >= logged + 20, 30, "a new log line followed")
        replicas = page.inner_text("#replicas")
        assert "worker-0" in replicas and "worker-1" in replicas and "Running" in replicas

        page.fill("#log-search", f"step {logged + 10} ")
        page.wait_for_function("() => document.querySelectorAll('#log-lines mark').length >= 1")
        shown = page.inner_text("#log-lines").splitlines()
        assert shown and all(f"step {logged + 10} " in line for line in shown), shown
        page.fill("#log-search", "")

        client.scale("ctr-model", role="worker", replicas=1, namespace="ads")
        page.wait_for_selector("#elastic td:has-text('2 → 1')", timeout=60_000)
        wait_for(lambda: chart_points(page, "loss") >= seen + 40, 30, "training on after scale-in")
        page.click("#stacks-go")
        page.wait_for_selector(".stack-group", timeout=60_000)
        # Groups come in one answer; the master's may come first (its stack varies).
        groups = [group.inner_text() for group in page.query_selector_all(".stack-group")]
        assert any("worker 0" in group for group in groups), groups
        page.fill("#log-search", "loss")
        page.wait_for_function("() => document.querySelectorAll('#log-lines mark').length >= 3")
        page.evaluate("window.scrollTo(0, 0)")
        screenshot(page, "job")
