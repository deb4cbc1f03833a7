"""What one tenant's backlog costs another tenant: a job that fits at once, submitted
behind N pending jobs of someone else, and the server's CPU while the backlog waits.

A real `tidemill server` process (local engine, this machine's 2 cores): a 1-cpu job
holds half the node for the whole run; one tenant queues N 2-cpu jobs (which cannot
start); after 5 s the server's CPU is sampled for 20 s; then another tenant submits five
1-cpu jobs that fit at once, one after another, and each is timed from the submit until
it is placed. ``--baseline SRC`` also runs each size, first, with the server from another
checkout's ``src`` (the code before a change), and prints the ratio. Prints a table and
writes ``benchmarks/results/backlog.json``.

    python benchmarks/backlog.py [--sizes 0 1000 5000] [--baseline PATH/src]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

RESULTS = Path(__file__).parent / "results" / "backlog.json"
YAML = {"content-type": "application/yaml"}
SUBMITTERS = 4
PROBES = 5


def job(name: str, namespace: str, cpu: int, seconds: float) -> str:
    return (
        "apiVersion: tidemill/v1\nkind: TrainingJob\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n  roles:\n    worker: {replicas: 1, "
        f'resources: {{cpu: {cpu}, memory: 100Mi}}, command: [sleep, "{seconds}"]}}\n'
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(state: Path, src: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    argv = [sys.executable, "-m", "tidemill", "server", "--state-dir", str(state)]
    log = (state.parent / "server.log").open("ab")
    server = subprocess.Popen([*argv, "--port", str(port)], stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"the server did not come up; see {state.parent / 'server.log'}")


def queue_backlog(url: str, count: int) -> int:
    """Submit ``count`` jobs of tenant ``careless`` from 4 clients; how many were taken."""

    def submit(first: int) -> int:
        taken = 0
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(first, count, SUBMITTERS):
                body = job(f"f-{i}", "careless", 2, 1)
                if client.post("/api/v1/jobs", content=body, headers=YAML).status_code != 201:
                    break
                taken += 1
        return taken

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        return sum(pool.map(submit, range(SUBMITTERS)))


def placed_after(client: httpx.Client, name: str) -> float:
    """Submit a 1-cpu job of tenant ``other``; seconds until it leaves Pending."""
    started = time.perf_counter()
    client.post("/api/v1/jobs", content=job(name, "other", 1, 0.2), headers=YAML)
    while client.get(f"/api/v1/jobs/{name}", params={"namespace": "other"}).json().get("phase") in (
        "Pending",
        None,
    ):
        time.sleep(0.02)
    placed = time.perf_counter() - started
    while client.get(f"/api/v1/jobs/{name}", params={"namespace": "other"}).json().get(
        "phase"
    ) not in ("Succeeded", "Failed"):
        time.sleep(0.1)
    return placed


def measure(size: int, src: str | None, folder: Path) -> dict[str, Any]:
    state = folder / f"state-{size}"
    server, url = start_server(state, src)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            client.post("/api/v1/jobs", content=job("holder", "hold", 1, 3600), headers=YAML)
            queued = queue_backlog(url, size)
            process = psutil.Process(server.pid)
            time.sleep(5)
            before, began = process.cpu_times(), time.perf_counter()
            time.sleep(20)
            after = process.cpu_times()
            cpu = (after.user + after.system - before.user - before.system) / (
                time.perf_counter() - began
            )
            waits = [placed_after(client, f"probe-{i}") for i in range(PROBES)]
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(state, ignore_errors=True)
    return {
        "asked": size,
        "queued": queued,
        "placed_median_s": round(statistics.median(waits), 3),
        "placed_max_s": round(max(waits), 3),
        "server_cpu_cores": round(cpu, 3),
    }


def show(side: str, row: dict[str, Any]) -> None:
    print(
        f"{side:>8} {row['queued']:>6} queued: a fitting job placed after "
        f"{row['placed_median_s']:.2f} s (max {row['placed_max_s']:.2f}); server "
        f"{row['server_cpu_cores'] * 100:.0f}% of a core while the backlog waits",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 1000, 5000])
    parser.add_argument("--baseline", help="also run the server from this src folder, first")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tidemill-backlog-") as folder:
        for size in args.sizes:
            row: dict[str, Any] = {"size": size}
            if args.baseline:
                row["baseline"] = measure(size, args.baseline, Path(folder))
                show("baseline", row["baseline"])
            row["tidemill"] = measure(size, None, Path(folder))
            show("tidemill", row["tidemill"])
            if args.baseline:
                ratio = row["tidemill"]["placed_median_s"] / row["baseline"]["placed_median_s"]
                row["placed_ratio_to_baseline"] = round(ratio, 3)
                print(f"{'':>8} placed after {ratio:.2f}x the baseline's time", flush=True)
            rows.append(row)
    result = {
        "benchmark": "backlog",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "baseline": args.baseline,
        "results": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
