"""Control-plane throughput: submissions/s and GET /jobs latency with 1,000 queued jobs.

Half the jobs come from one sequential client, half from ``--clients`` concurrent ones.
Starts a real `tidemill server` process on a free port with a one-node cluster that one
blocker job fills, so every submitted job stays queued (and is re-examined by the
scheduler every cycle) while we measure. Prints a table and writes
benchmarks/results/api_throughput.json.

    python benchmarks/api_throughput.py [--jobs 1000] [--gets 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import httpx

from tidemill.engines.local import free_port

RESULTS = Path(__file__).parent / "results" / "api_throughput.json"
CLUSTER = "nodes:\n  - {name: small, cpu: 1, memory: 4Gi}\n"


def job(name: str, command: list[str]) -> dict[str, object]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 1, "memory": "64Mi"},
                    "command": command,
                }
            }
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4, help="concurrent submitters")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="tidemill-bench-"))
    (state / "cluster.yaml").write_text(CLUSTER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidemill",
            "server",
            "--state-dir",
            str(state),
            "--port",
            str(port),
            "--cluster",
            str(state / "cluster.yaml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/healthz")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
            http.post("/api/v1/jobs", json=job("blocker", sleeper)).raise_for_status()

            half = args.jobs // 2
            started = time.perf_counter()
            for i in range(half):
                response = http.post("/api/v1/jobs", json=job(f"queued-{i:05d}", ["true"]))
                response.raise_for_status()
            submit_s = time.perf_counter() - started

            def submit_range(first: int, last: int) -> None:
                with httpx.Client(base_url=url, timeout=60) as own:
                    for i in range(first, last):
                        posted = own.post("/api/v1/jobs", json=job(f"queued-{i:05d}", ["true"]))
                        posted.raise_for_status()

            bounds = [
                half + k * (args.jobs - half) // args.clients for k in range(args.clients + 1)
            ]
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                for done in [pool.submit(submit_range, a, b) for a, b in pairwise(bounds)]:
                    done.result()
            concurrent_s = time.perf_counter() - started

            time.sleep(1.0)  # let the scheduler see the whole backlog
            pending = http.get("/api/v1/jobs", params={"phase": "Pending"}).json()["items"]
            latencies = []
            for _ in range(args.gets):
                t0 = time.perf_counter()
                items = http.get("/api/v1/jobs").json()["items"]
                latencies.append(time.perf_counter() - t0)
            assert len(items) == args.jobs + 1
            one = []
            for i in range(args.gets):
                t0 = time.perf_counter()
                http.get(f"/api/v1/jobs/queued-{i % args.jobs:05d}").raise_for_status()
                one.append(time.perf_counter() - t0)
            http.delete("/api/v1/jobs/blocker")
    finally:
        server.terminate()
        server.wait(timeout=30)

    figures = {
        "jobs_submitted": args.jobs,
        "submissions_per_s_one_client": round(half / submit_s, 1),
        f"submissions_per_s_{args.clients}_clients": round((args.jobs - half) / concurrent_s, 1),
        "queued_jobs_seen_pending": len(pending),
        "get_jobs_list_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "get_jobs_list_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "get_one_job_p50_ms": round(statistics.median(one) * 1000, 2),
        "get_one_job_p99_ms": round(percentile(one, 0.99) * 1000, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
