"""What listing jobs costs a server that holds many: the dashboard's jobs page refreshes
every 2 s for as long as it is open.

A real `tidemill server` process holding N suspended jobs (two tenants, half each):
each side is timed over 20 requests, median, with the server's CPU per request and the
answer's size. Sides: the whole list in one answer (what the dashboard asked for at
each refresh before it paged) against the page it asks for now (the newest 500 and the
counts by phase); and the whole list in one answer parsed into ``JobSummary`` objects
(what `tidemill jobs` and ``Client.jobs()`` did) against the same read a page at a time
(what they do now). Ratios are to the "before" side of each pair. Prints a table and
writes ``benchmarks/results/job_list.json``.

    python benchmarks/job_list.py [--jobs 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
from backlog import SUBMITTERS, YAML, start_server

from tidemill.api.status import JobSummary
from tidemill.client import JOBS_PER_PAGE, Client

RESULTS = Path(__file__).parent / "results" / "job_list.json"
ROUNDS = 20
TENANTS = ("alpha", "beta")
WHOLE = "whole list, one answer (the dashboard's refresh before)"
PARSED_WHOLE = "whole list, one answer, parsed (tidemill jobs before)"


def held(name: str, namespace: str) -> str:
    return (
        "apiVersion: tidemill/v1\nkind: TrainingJob\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n  suspend: true\n  roles:\n    worker: {replicas: 1, "
        "resources: {cpu: 1, memory: 100Mi}, command: [sleep, '1']}\n"
    )


def fill(url: str, count: int) -> None:
    """``count`` suspended jobs, half in each tenant, from 4 clients at once."""

    def submit(first: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in range(first, count, SUBMITTERS):
                body = held(f"held-{i}", TENANTS[i % 2])
                client.post("/api/v1/jobs", content=body, headers=YAML).raise_for_status()

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(submit, range(SUBMITTERS)))


def timed(server: psutil.Process, call: Callable[[], int]) -> dict[str, Any]:
    """Median wall time, server CPU per call and the answer's size (bytes or jobs) over
    ROUNDS calls."""
    call()  # warm
    times, size = [], 0
    before = server.cpu_times()
    for _ in range(ROUNDS):
        started = time.perf_counter()
        size = call()
        times.append(time.perf_counter() - started)
    after = server.cpu_times()
    cpu = (after.user + after.system - before.user - before.system) / ROUNDS
    return {"median_s": statistics.median(times), "server_cpu_s": cpu, "answer": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidemill-joblist-") as folder:
        process, url = start_server(Path(folder) / "state", None)
        try:
            print(f"submitting {args.jobs:,} jobs...", flush=True)
            fill(url, args.jobs)
            server = psutil.Process(process.pid)
            with httpx.Client(base_url=url, timeout=120) as http, Client(url) as client:

                def whole() -> int:
                    return len(http.get("/api/v1/jobs").raise_for_status().content)

                def dashboard_page() -> int:
                    params = {"limit": 500, "newest": "true"}
                    return len(http.get("/api/v1/jobs", params=params).raise_for_status().content)

                def parsed_whole() -> int:
                    items = http.get("/api/v1/jobs").raise_for_status().json()["items"]
                    return len([JobSummary.model_validate(item) for item in items])

                def parsed_pages() -> int:
                    return len(client.jobs())

                sides = {
                    WHOLE: timed(server, whole),
                    "newest 500 + counts (the dashboard's refresh now)": timed(
                        server, dashboard_page
                    ),
                    PARSED_WHOLE: timed(server, parsed_whole),
                    f"{JOBS_PER_PAGE} a page, parsed (tidemill jobs now)": timed(
                        server, parsed_pages
                    ),
                }
        finally:
            process.terminate()
            process.wait(timeout=60)
    rows = []
    for side, figures in sides.items():
        base = sides[PARSED_WHOLE if "parsed" in side else WHOLE]
        ratio = figures["median_s"] / base["median_s"]
        cpu_ratio = figures["server_cpu_s"] / base["server_cpu_s"]
        answer = f"{figures['answer']:,} jobs" if "parsed" in side else f"{figures['answer']:,} B"
        print(
            f"{side:<56} {figures['median_s'] * 1000:7.1f} ms ({ratio:.3f}x)  server CPU "
            f"{figures['server_cpu_s'] * 1000:6.1f} ms ({cpu_ratio:.3f}x)  {answer}",
            flush=True,
        )
        rows.append({"side": side, **figures, "ratio": ratio, "cpu_ratio": cpu_ratio})
    result = {
        "benchmark": "job_list",
        "jobs": args.jobs,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "argv": sys.argv[1:],
        "results": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
