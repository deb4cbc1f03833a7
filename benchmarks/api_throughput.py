"""Control-plane throughput and isolation, each figure beside its baseline in one run.

1. Backlog: 1,000 jobs queued behind a blocker that fills a one-node cluster (every cycle
   re-examines the whole backlog): submissions/s (one client, then ``--clients``) and
   GET latency.
2. Auth: ``--clients`` tenants submit at once, each with its own editor token, while a
   reader GETs jobs; the same on an open server. Submissions/s and p99 GET, auth / open.
3. Poison: the scheduling latency of a small job (submit to its Scheduled condition,
   server clocks) on a quiet server, then while another tenant floods it with poison
   (alias bombs, 10,000-deep JSON, 2**63 replicas, NUL bytes, oversized bodies). Goal:
   unchanged within noise.

Every server is a real `tidemill server` process on a free port. Prints a table and
writes benchmarks/results/api_throughput.json.

    python benchmarks/api_throughput.py [--jobs 1000] [--gets 200] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import count, pairwise
from pathlib import Path

import httpx

from tidemill.engines.local import free_port

RESULTS = Path(__file__).parent / "results" / "api_throughput.json"
SMALL_CLUSTER = "nodes:\n  - {name: small, cpu: 1, memory: 4Gi}\n"
ROOMY_CLUSTER = "nodes:\n  - {name: roomy, count: 4, cpu: 64, memory: 256Gi}\n"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def job(
    name: str, command: list[str], namespace: str = "bench", cpu: float = 1
) -> dict[str, object]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": cpu, "memory": "64Mi"},
                    "command": command,
                }
            }
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def server(
    cluster: str, auth: bool = False, state: Path | None = None
) -> Iterator[tuple[str, str | None]]:
    """A `tidemill server` process; yields its URL and, with auth, the admin token.
    ``state``: a state folder already holding what it should resume from."""
    state = state or Path(tempfile.mkdtemp(prefix="tidemill-bench-"))
    (state / "cluster.yaml").write_text(cluster)
    port = free_port()
    argv = [sys.executable, "-m", "tidemill", "server", "--state-dir", str(state)]
    argv += ["--port", str(port), "--cluster", str(state / "cluster.yaml")]
    process = subprocess.Popen(
        [*argv, *(["--auth"] if auth else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        admin = (state / "admin-token").read_text().strip() if auth else None
        yield url, admin
    finally:
        process.terminate()
        process.wait(timeout=30)


def headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def tenant_token(url: str, admin: str | None, namespace: str) -> str | None:
    if admin is None:
        return None
    body = {"name": f"{namespace}-editor", "namespace": namespace, "role": "editor"}
    made = httpx.post(f"{url}/api/v1/tokens", json=body, headers=headers(admin), timeout=30)
    made.raise_for_status()
    return str(made.json()["token"])


def backlog(args: argparse.Namespace) -> dict[str, float]:
    """1,000 queued jobs behind a blocker: the scheduler re-examines all every cycle."""
    with server(SMALL_CLUSTER) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        http.post("/api/v1/jobs", json=job("blocker", SLEEPER)).raise_for_status()
        half = args.jobs // 2
        started = time.perf_counter()
        for i in range(half):
            http.post("/api/v1/jobs", json=job(f"queued-{i:05d}", ["true"])).raise_for_status()
        one_client_s = time.perf_counter() - started

        def submit_range(first: int, last: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as own:
                for i in range(first, last):
                    own.post("/api/v1/jobs", json=job(f"queued-{i:05d}", ["true"]))

        bounds = [half + k * (args.jobs - half) // args.clients for k in range(args.clients + 1)]
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for done in [pool.submit(submit_range, a, b) for a, b in pairwise(bounds)]:
                done.result()
        concurrent_s = time.perf_counter() - started
        time.sleep(1.0)  # let the scheduler see the whole backlog
        listing = timed(args.gets, lambda: http.get("/api/v1/jobs").raise_for_status())
        names = (f"queued-{i % args.jobs:05d}" for i in count())
        one = timed(args.gets, lambda: http.get(f"/api/v1/jobs/{next(names)}").raise_for_status())
        http.delete("/api/v1/jobs/blocker")
    return {
        "submissions_per_s_one_client": round(half / one_client_s, 1),
        f"submissions_per_s_{args.clients}_clients": round((args.jobs - half) / concurrent_s, 1),
        "get_jobs_list_p50_ms": ms(statistics.median(listing)),
        "get_jobs_list_p99_ms": ms(percentile(listing, 0.99)),
        "get_one_job_p50_ms": ms(statistics.median(one)),
        "get_one_job_p99_ms": ms(percentile(one, 0.99)),
    }


def timed(count: int, call: Callable[[], object], into: list[float] | None = None) -> list[float]:
    latencies = [] if into is None else into
    for _ in range(count):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def concurrent_submissions(
    url: str, admin: str | None, args: argparse.Namespace
) -> tuple[float, float]:
    """``--clients`` tenants submit at once while a reader GETs: (submissions/s, p99 GET s)."""
    tokens = [tenant_token(url, admin, f"tenant-{k}") for k in range(args.clients)]
    per_client = args.jobs // args.clients
    reader_token = tokens[0]
    with httpx.Client(base_url=url, timeout=60, headers=headers(reader_token)) as reader:
        reader.post("/api/v1/jobs", json=job("blocker", SLEEPER, "tenant-0")).raise_for_status()
        stop = threading.Event()
        gets: list[float] = []

        def read() -> None:
            while not stop.is_set():
                timed(1, lambda: reader.get("/api/v1/jobs/blocker").raise_for_status(), gets)

        def submit(k: int) -> None:
            with httpx.Client(base_url=url, timeout=60, headers=headers(tokens[k])) as own:
                for i in range(per_client):
                    body = job(f"job-{i:05d}", ["true"], f"tenant-{k}")
                    own.post("/api/v1/jobs", json=body).raise_for_status()

        reading = threading.Thread(target=read)
        reading.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            for done in [pool.submit(submit, k) for k in range(args.clients)]:
                done.result()
        elapsed = time.perf_counter() - started
        stop.set()
        reading.join()
    return per_client * args.clients / elapsed, percentile(gets, 0.99)


def auth_overhead(args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    for label, auth in (("open", False), ("auth", True)):
        with server(SMALL_CLUSTER, auth=auth) as (url, admin):
            rate, p99 = concurrent_submissions(url, admin, args)
        figures[f"{label}_submissions_per_s_{args.clients}_tenants"] = round(rate, 1)
        figures[f"{label}_get_job_p99_ms_while_submitting"] = ms(p99)
    clients = args.clients
    figures["auth_over_open_submissions"] = round(
        figures[f"auth_submissions_per_s_{clients}_tenants"]
        / figures[f"open_submissions_per_s_{clients}_tenants"],
        2,
    )
    figures["auth_over_open_get_p99"] = round(
        figures["auth_get_job_p99_ms_while_submitting"]
        / figures["open_get_job_p99_ms_while_submitting"],
        2,
    )
    return figures


def poison_bodies() -> list[tuple[str, str]]:
    """(content type, body) pairs a careless or hostile tenant sends; all refused at the door."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    huge = job("huge", ["true"], "mallory")
    huge["spec"]["roles"]["worker"]["replicas"] = 2**63  # type: ignore[index]
    nul = job("nul", ["python", "-c", "print(1)\x00"], "mallory")
    big_env = job("env", ["true"], "mallory")
    big_env["spec"]["roles"]["worker"]["env"] = {"X": "x" * 200_000}  # type: ignore[index]
    return [
        ("application/yaml", "apiVersion: tidemill/v1\n" + bomb),
        ("application/json", "[" * 10_000 + "]" * 10_000),
        ("application/json", json.dumps(huge)),
        ("application/json", json.dumps(nul)),
        ("application/json", json.dumps(big_env)),
        ("application/json", json.dumps(job("forever", ["true"], "mallory", cpu=10_000))),
    ]


def scheduling_latency(url: str, samples: int, namespace: str) -> list[float]:
    """Submit a one-replica job, read its Scheduled time off the server, delete it."""
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(samples):
            name = f"small-{namespace}-{i:03d}"
            view = http.post("/api/v1/jobs", json=job(name, SLEEPER, "alice", cpu=0.1)).json()
            while True:
                view = http.get(f"/api/v1/jobs/{name}", params={"namespace": "alice"}).json()
                scheduled = [c for c in view["conditions"] if c["type"] == "Scheduled"]
                if scheduled:
                    latencies.append(scheduled[0]["last_transition_time"] - view["created_at"])
                    break
                time.sleep(0.01)
            http.delete(f"/api/v1/jobs/{name}", params={"namespace": "alice"})
    return latencies


def poison_isolation(args: argparse.Namespace) -> dict[str, float]:
    with server(ROOMY_CLUSTER) as (url, _):
        quiet = scheduling_latency(url, args.samples, "quiet")
        stop = threading.Event()
        refused: list[int] = []

        def flood() -> None:
            bodies = poison_bodies()
            with httpx.Client(base_url=url, timeout=60) as http:
                while not stop.is_set():
                    for kind, body in bodies:
                        answer = http.post(
                            "/api/v1/jobs", content=body, headers={"Content-Type": kind}
                        )
                        refused.append(answer.status_code)

        flooders = [threading.Thread(target=flood) for _ in range(2)]
        for thread in flooders:
            thread.start()
        poisoned = scheduling_latency(url, args.samples, "poisoned")
        stop.set()
        for thread in flooders:
            thread.join()
    server_errors = sum(code >= 500 for code in refused)
    return {
        "poison_requests_sent": len(refused),
        "poison_requests_5xx": server_errors,
        "poison_requests_accepted": sum(code < 400 for code in refused),
        "schedule_latency_quiet_p50_ms": ms(statistics.median(quiet)),
        "schedule_latency_poisoned_p50_ms": ms(statistics.median(poisoned)),
        "schedule_latency_quiet_p90_ms": ms(percentile(quiet, 0.9)),
        "schedule_latency_poisoned_p90_ms": ms(percentile(poisoned, 0.9)),
        "poisoned_over_quiet_p50": round(statistics.median(poisoned) / statistics.median(quiet), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4, help="concurrent submitters")
    parser.add_argument("--samples", type=int, default=30, help="small jobs timed per side")
    args = parser.parse_args()

    figures: dict[str, float] = {"jobs_submitted": args.jobs}
    figures |= backlog(args)
    figures |= auth_overhead(args)
    figures |= poison_isolation(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
