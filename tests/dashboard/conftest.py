"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a
real ServerRunner (uvicorn on a free loopback port) running real local jobs.

`make test` installs Chromium when it is missing; without it these tests are skipped
with the command that installs it. Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import delete_every_job
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 768}
CLUSTER = """
nodes:
  - {name: cpu-1, cpu: 8, memory: 16Gi}
  - {name: gpu-1, cpu: 16, memory: 64Gi, gpus: 4, gpuModel: A100}
queues:
  - {name: ads, weight: 2}
  - {name: research}
"""

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Playwright for one test: its sync API runs an event loop in this thread while it
    is open, which would break later tests that call asyncio.run()."""
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium: apt-get install -y chromium (make test does it)")
    with sync_api.sync_playwright() as playwright:
        yield playwright.chromium


@contextmanager
def laptop_tab(chromium: Any, profile: Path, *args: str) -> Iterator[Any]:
    """A laptop-sized tab in a fresh profile; ``args`` go to Chromium."""
    context = chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        args=[*CHROMIUM_ARGS, *args],
        headless=True,
        viewport=LAPTOP,
    )
    tab = context.pages[0] if context.pages else context.new_page()
    tab.set_default_timeout(30_000)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def page(chromium: Any, tmp_path: Path) -> Iterator[Any]:
    with laptop_tab(chromium, tmp_path / "profile") as tab:
        yield tab


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerRunner]]:
    """``start_server(auth=False)`` → a started ServerRunner sampling use every 0.5 s;
    its jobs are deleted and it stops after the test."""
    runners: list[tuple[ServerRunner, str | None]] = []

    def start(auth: bool = False) -> ServerRunner:
        state = tmp_path / f"state{len(runners)}"
        state.mkdir()
        cluster = state / "cluster.yaml"
        cluster.write_text(CLUSTER)
        runner = ServerRunner(state, cluster, port=0, auth=auth, utilization_interval_s=0.5)
        runner.start()
        admin = runner.admin_token_file.read_text().strip() if runner.admin_token_file else None
        runners.append((runner, admin))
        return runner

    yield start
    for runner, admin in runners:
        with Client(runner.url, token=admin) as client:
            delete_every_job(client)
        runner.stop()


def screenshot(page: Any, name: str) -> None:
    """Save the page as docs/screenshots/NAME.png (the README links them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sleeper(
    name: str, namespace: str = "default", cpu: float = 0.5, gpu: int = 0, **spec: Any
) -> dict[str, Any]:
    """A job whose workers say hello and sleep until deleted."""
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            **spec,
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": cpu, "memory": "64Mi", "gpu": gpu},
                    "command": [
                        sys.executable,
                        "-c",
                        "print('hello', flush=True); import time; time.sleep(600)",
                    ],
                }
            },
        },
    }
