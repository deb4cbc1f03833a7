"""Dashboard responsiveness: a real `tidemill server` holding ``--jobs`` jobs and one
running job of ``--replicas`` replicas, timed as the dashboard calls it.

The load: most jobs finished (succeeded or failed, with their replicas, conditions and
events, written into the state folder before the server starts, as a server that ran
them would have left them), ``--pending`` waiting in queues at their limit (each with
its reason), a few cheap sleepers running, and the wide job: ``--replicas`` replicas
that each print a line every 5 s, on two large virtual nodes. A day of utilisation
samples is on record. The jobs that run are deleted at the end (replicas outlive a
stopped server).

Timed (p50/p99 over ``--rounds``; "ttlb": the request's time to last byte over
loopback, "server": the ``Server-Timing`` the server reports):

1. each call the dashboard's pages make, on its own;
2. first paint of the jobs page, the cluster page and the wide job's page, as a browser
   with an empty cache loads them over 6 connections: the document, its stylesheets and
   scripts, the modules those import, then the page's calls in the waves the page makes
   them; rendering excluded;
3. steady updates while the job page follows the wide job's logs: each page's poll as
   its timer runs it (the job page: view, events since the last seen, metrics).
4. where Playwright and Debian's Chromium are installed (as for tests/dashboard): each
   page loaded in the browser until its content is drawn (every job's row, the wide
   job's replicas, the queues), rendering included.

Goals (issue 13): first paint under 1 s, updates under 200 ms server time. Prints a
table and writes benchmarks/results/dashboard.json.

    python benchmarks/dashboard.py [--jobs 1000] [--replicas 64] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from api_throughput import ms, percentile, server

from tidemill.api.loader import job_from_document
from tidemill.api.status import QueueUtilization, ResourceView
from tidemill.store.store import Store
from tidemill.store.tables import JobRow, ReplicaRow

RESULTS = Path(__file__).parent / "results" / "dashboard.json"
BROWSER_ROUNDS = 5
"""Loads of each page in Chromium (each several seconds of CPU with 1,000 rows)."""
QUEUES = ("ads", "search", "vision")
CLUSTER = """\
nodes:
  - {name: big, count: 2, cpu: 128, memory: 1Ti}
queues:
  - {name: ads, weight: 2}
  - {name: search, max: {cpu: 12}}
  - {name: vision, max: {cpu: 8}}
"""
SLEEP = ["sleep", "3600"]
LOGGER = ["sh", "-c", 'i=0; while sleep 5; do i=$((i+1)); echo "step $i loss 0.$i"; done']
"""The wide job's replicas: a log line every 5 s each, a fork of ``sleep`` between."""
BROWSER_CONNECTIONS = 6
WIDE = "wide"
METRICS_PATH = "/api/v1/jobs/{name}/metrics"
"""Training metrics (issue 13), timed where the server has them."""


def job_document(
    name: str, queue: str, replicas: int, cpu: float, command: list[str]
) -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": queue},
        "spec": {
            "queue": queue,
            "roles": {
                "worker": {
                    "replicas": replicas,
                    "resources": {"cpu": cpu, "memory": "256Mi"},
                    "command": command,
                }
            },
        },
    }


def finished_job(name: str, queue: str, succeeded: bool, at: float, rng: random.Random) -> JobRow:
    """A job as the controller leaves it once it ended: replicas, conditions, phase."""
    replicas = rng.choice((1, 1, 2, 4))
    command = ["python", "train.py", "--epochs", str(rng.randint(1, 20))]
    spec = job_from_document(job_document(name, queue, replicas, 1, command)).to_document()
    started, finished = at + 0.5, at + rng.uniform(30, 3600)
    ending = "JobSucceeded" if succeeded else "JobFailed"
    message = (
        "succeeded: worker-0 completed"
        if succeeded
        else "worker-0 exited with code 1 after 3 restart(s) (maxRestarts 3)"
    )
    steps = [
        ("Pending", "Scheduled", f"placed {replicas} replica(s) on big-0", at + 0.1),
        ("Scheduled", "Running", f"{replicas} replica(s) running", started),
        ("Running", ending, message, finished),
    ]
    conditions = [
        {"type": t, "status": False, "reason": r, "message": m, "last_transition_time": when}
        for t, r, m, when in steps
    ]
    final = "Succeeded" if succeeded else "Failed"
    conditions.append(
        {
            "type": final,
            "status": True,
            "reason": ending,
            "message": message,
            "last_transition_time": finished,
        }
    )
    row = JobRow(
        uid=str(uuid.uuid4()),
        namespace=queue,
        name=name,
        spec=spec,
        queue=queue,
        priority=0,
        phase=final,
        message=message,
        conditions=conditions,
        created_at=at,
        scheduled_at=at + 0.1,
        started_at=started,
        finished_at=finished,
        desired={"worker": replicas},
    )
    row.replicas = [
        ReplicaRow(
            role="worker",
            index=i,
            phase="Succeeded" if succeeded or i else "Failed",
            node=f"big-{i % 2}",
            cpu_millis=1000,
            memory_bytes=256 << 20,
            restarts=0 if succeeded or i else 3,
            starts=1 if succeeded or i else 4,
            exit_code=0 if succeeded or i else 1,
            started_at=started,
            finished_at=finished,
            message="exited with code 0" if succeeded or i else "exited with code 1",
        )
        for i in range(replicas)
    ]
    return row


def seed(state: Path, finished: int, rng: random.Random) -> None:
    """``finished`` ended jobs, their events, and a day of utilisation samples."""
    store = Store.in_folder(state)
    now = time.time()
    try:
        with store.transaction() as tx:
            for i in range(finished):
                queue = QUEUES[i % len(QUEUES)]
                at = now - 86_400 + i * 80
                row = tx.add_job(finished_job(f"done-{i:04d}", queue, rng.random() < 0.85, at, rng))
                tx.add_event(row.key, "Submitted", f"queued in {queue} at priority 0", at=at)
                for condition in row.conditions[:-1]:
                    when = condition["last_transition_time"]
                    tx.add_event(row.key, condition["reason"], condition["message"], at=when)
                for replica in row.replicas:
                    failed = replica.exit_code != 0
                    tx.add_event(
                        row.key,
                        "ReplicaFailed" if failed else "ReplicaSucceeded",
                        f"{replica.replica_name} exited {replica.exit_code}",
                        warning=failed,
                        replica=replica.replica_name,
                        at=row.finished_at,
                    )
            idle = ResourceView()
            body = {
                "capacity": ResourceView(cpu=256, memory=2 << 40).model_dump(),
                "allocated": idle.model_dump(),
                "queues": {
                    q: QueueUtilization(
                        allocated=idle, dominant_share=0, pending=0, running=0
                    ).model_dump()
                    for q in QUEUES
                },
            }
            for k in range(5760):
                tx.add_utilization(now - 86_400 + k * 15, body)
    finally:
        store.close()


def live_documents(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The wide job, a sleeper per queue, and jobs waiting behind their queue's limit."""
    documents = [job_document(WIDE, "ads", args.replicas, 0.5, LOGGER)]
    documents += [job_document(f"sleeper-{q}", q, 1, 8, SLEEP) for q in QUEUES]
    documents += [
        job_document(f"waiting-{i:03d}", QUEUES[1 + i % 2], 1, 8, SLEEP)
        for i in range(args.pending)
    ]
    return documents


def delete_live_jobs(http: httpx.Client, args: argparse.Namespace) -> None:
    """Replicas outlive a stopped server (it adopts them when it starts again): delete
    the jobs that run and wait until their processes are gone."""
    left = [(d["metadata"]["namespace"], d["metadata"]["name"]) for d in live_documents(args)]
    for ns, name in left:
        http.delete(f"/api/v1/jobs/{name}", params={"namespace": ns})
    deadline = time.monotonic() + 120
    while left and time.monotonic() < deadline:
        left = [
            (ns, name)
            for ns, name in left
            if http.get(f"/api/v1/jobs/{name}", params={"namespace": ns}).status_code != 404
        ]
        time.sleep(0.5)
    if left:
        raise RuntimeError(f"jobs still being deleted after 120 s: {left}")


def live_jobs(http: httpx.Client, args: argparse.Namespace) -> None:
    """Submit the running and pending jobs and wait until the wide job runs whole."""
    for document in live_documents(args):
        ns = document["metadata"]["namespace"]
        http.post("/api/v1/jobs", json=document, params={"namespace": ns}).raise_for_status()
    deadline = time.monotonic() + 300
    while True:
        view = http.get(f"/api/v1/jobs/{WIDE}", params={"namespace": "ads"}).json()
        wide = sum(r["phase"] == "Running" for r in view["replicas"])
        running = http.get("/api/v1/jobs", params={"phase": "Running"}).json()["items"]
        waiting = http.get("/api/v1/jobs", params={"phase": "Pending"}).json()["items"]
        if wide == args.replicas and len(running) == 1 + len(QUEUES):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{wide}/{args.replicas} replicas of {WIDE} running, "
                f"{len(running)} jobs running, {len(waiting)} pending"
            )
        time.sleep(0.5)
    if len(waiting) != args.pending:
        raise RuntimeError(f"{len(waiting)} jobs pending, expected {args.pending}")


class Timings:
    """Per label: time to last byte and the server's own time, in seconds."""

    def __init__(self) -> None:
        self.ttlb: dict[str, list[float]] = {}
        self.server: dict[str, list[float]] = {}

    def get(self, http: httpx.Client, label: str, path: str) -> httpx.Response:
        started = time.perf_counter()
        answer = http.get(path)
        answer.raise_for_status()
        self.ttlb.setdefault(label, []).append(time.perf_counter() - started)
        match = re.search(r"app;dur=([0-9.]+)", answer.headers.get("server-timing", ""))
        if match:
            self.server.setdefault(label, []).append(float(match.group(1)) / 1000)
        return answer

    def rows(self) -> list[dict[str, Any]]:
        """Server times are None from a server that sends no ``Server-Timing``."""
        rows = []
        for label, values in self.ttlb.items():
            server = self.server.get(label)
            rows.append(
                {
                    "call": label,
                    "ttlb_p50_ms": ms(statistics.median(values)),
                    "ttlb_p99_ms": ms(percentile(values, 0.99)),
                    "server_p50_ms": ms(statistics.median(server)) if server else None,
                    "server_p99_ms": ms(percentile(server, 0.99)) if server else None,
                }
            )
        return rows


Screen = list[list[str]]
"""A page's calls as the front-end makes them: waves, each in parallel, each after the
one before (it needs what came back)."""


def page_links(document: str) -> list[str]:
    """Same-origin scripts and stylesheets ``index.html`` loads."""
    return [a for a in re.findall(r'(?:src|href)="(/[^"]*)"', document) if not a.startswith("//")]


def module_imports(path: str, script: str) -> list[str]:
    """What an ES module imports (``import ... from "./x.js"``), as absolute paths."""
    folder = path.rsplit("/", 1)[0]
    found = re.findall(r'(?:from|import)\s*["\'](\./[^"\']+)["\']', script)
    return [f"{folder}/{name[2:]}" for name in found]


def jobs_screen(served: set[str]) -> Screen:
    """The home page (``#/``): every job and the newest cluster events."""
    return [["/api/v1/jobs", "/api/v1/events?limit=25&newest=true"]]


def cluster_screen(served: set[str]) -> Screen:
    """``#/cluster``: utilisation over the last hour, queues, nodes and the pending jobs
    (each with its reason in the list)."""
    first = ["/api/v1/cluster/utilization?seconds=3600&points=400", "/api/v1/queues"]
    return [[*first, "/api/v1/nodes", "/api/v1/jobs?phase=Pending"]]


def job_screen(served: set[str]) -> Screen:
    """``#/job/ads/wide``: the view and the log tail, then the newest 2,000 events, then
    the training metrics where this server has them."""
    job = f"/api/v1/jobs/{WIDE}?namespace=ads"
    waves = [
        [job, f"/api/v1/jobs/{WIDE}/logs?namespace=ads&tailLines=1000"],
        [f"/api/v1/events?job=ads/{WIDE}&limit=2000&newest=true"],
    ]
    if METRICS_PATH in served:
        waves.append([f"/api/v1/jobs/{WIDE}/metrics?namespace=ads&sinceStep=-1"])
    return waves


SCREENS = {"jobs page": jobs_screen, "cluster page": cluster_screen, "job page": job_screen}


def kind(path: str) -> str:
    """A call's row in the table: static files as one row."""
    if path.startswith("/static/"):
        return "static files"
    return path


def in_parallel(
    pool: ThreadPoolExecutor,
    clients: list[httpx.Client],
    timings: Timings,
    label: str,
    paths: list[str],
) -> list[httpx.Response]:
    done = [
        pool.submit(timings.get, clients[k % len(clients)], f"{label}: {kind(path)}", path)
        for k, path in enumerate(paths)
    ]
    return [future.result() for future in done]


def first_paint(url: str, screen: Screen, rounds: int, timings: Timings, label: str) -> list[float]:
    """The document, its stylesheets and scripts, the modules those import, then
    ``screen``'s waves, over 6 connections; each round a new browser with no cache."""
    totals = []
    with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
        for _ in range(rounds):
            # made before the clock starts (an httpx client costs milliseconds to make, a
            # browser's connection does not); each connects afresh on its first request
            clients = [httpx.Client(base_url=url, timeout=60) for _ in range(BROWSER_CONNECTIONS)]
            try:
                started = time.perf_counter()
                page = timings.get(clients[0], f"{label}: document", "/").text
                static, seen = page_links(page), set[str]()
                while static:
                    seen.update(static)
                    loaded = in_parallel(pool, clients, timings, f"{label}: static", static)
                    static = [
                        module
                        for path, answer in zip(static, loaded, strict=True)
                        if path.endswith(".js")
                        for module in module_imports(path, answer.text)
                        if module not in seen
                    ]
                    static = list(dict.fromkeys(static))
                for wave in screen:
                    in_parallel(pool, clients, timings, label, wave)
                totals.append(time.perf_counter() - started)
            finally:
                for client in clients:
                    client.close()
    return totals


def follow_logs(url: str, lines: list[str]) -> None:
    """What the job page's log pane does: follow every replica's log until the job ends."""
    params = {"namespace": "ads", "follow": "true", "tailLines": "1000"}
    with (
        httpx.Client(base_url=url, timeout=None) as http,
        http.stream("GET", f"/api/v1/jobs/{WIDE}/logs", params=params) as stream,
    ):
        lines.extend(stream.iter_lines())


def updates(url: str, rounds: int, timings: Timings, served: set[str]) -> dict[str, list[float]]:
    """Each page's poll, as its timer runs it, while the job page follows the wide job's
    logs: the job page's (view, events since the last seen, metrics, one after another),
    the jobs page's and the cluster page's. Returns each poll's times."""
    polls: dict[str, list[float]] = {"job page": [], "jobs page": [], "cluster page": []}
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(BROWSER_CONNECTIONS)]
    http = clients[0]
    events = http.get(f"/api/v1/events?job=ads/{WIDE}&limit=2000&newest=true").json()["items"]
    last = max((e["id"] for e in events), default=0)
    try:
        with ThreadPoolExecutor(BROWSER_CONNECTIONS) as pool:
            for _ in range(rounds):
                started = time.perf_counter()
                timings.get(http, "update: job view", f"/api/v1/jobs/{WIDE}?namespace=ads")
                since = f"/api/v1/events?job=ads/{WIDE}&since={last}&limit=1000"
                fresh = timings.get(http, "update: job events since", since).json()["items"]
                last = max((e["id"] for e in fresh), default=last)
                if METRICS_PATH in served:
                    metrics = f"/api/v1/jobs/{WIDE}/metrics?namespace=ads&sinceStep=-1"
                    timings.get(http, "update: metrics", metrics)
                polls["job page"].append(time.perf_counter() - started)
                for page, screen in (("jobs page", jobs_screen), ("cluster page", cluster_screen)):
                    started = time.perf_counter()
                    for wave in screen(served):
                        in_parallel(pool, clients, timings, f"update, {page}", wave)
                    polls[page].append(time.perf_counter() - started)
                time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    return polls


def each_endpoint(http: httpx.Client, rounds: int, timings: Timings, served: set[str]) -> None:
    """Every call of the screens on its own (one pending job's view standing for the 25)
    and a finished job's view."""
    calls = [path for screen in SCREENS.values() for wave in screen(served) for path in wave]
    calls = [p for p in calls if "/jobs/waiting-" not in p or "/waiting-000?" in p]
    for _ in range(rounds):
        for path in [*calls, "/api/v1/jobs/done-0000?namespace=ads"]:
            timings.get(http, path, path)


def summary(label: str, totals: list[float]) -> dict[str, Any]:
    return {
        "call": label,
        "ttlb_p50_ms": ms(statistics.median(totals)),
        "ttlb_p99_ms": ms(percentile(totals, 0.99)),
    }


def rendered(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per page, navigation to its content drawn in Debian's Chromium (rendering
    included; the tests' browser settings): every job's row, the wide job's replicas,
    the queues. Empty without Playwright or Chromium."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        from playwright.sync_api import sync_playwright

        from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, LAPTOP
    except ImportError:
        return {}
    if not Path(CHROMIUM).exists():
        return {}
    drawn = {
        "jobs page": ("/#/", f"#jobs tr:nth-child({args.jobs})"),
        "job page": (f"/#/jobs/ads/{WIDE}", f"#replicas tr:nth-child({args.replicas})"),
        "cluster page": ("/#/cluster", "#queues tr"),
    }
    times: dict[str, list[float]] = {page: [] for page in drawn}
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=LAPTOP
        )
        page = browser.pages[0]
        for _ in range(BROWSER_ROUNDS):
            for name, (path, selector) in drawn.items():
                page.goto("about:blank")
                started = time.perf_counter()
                page.goto(url + path)
                page.wait_for_selector(selector, timeout=30_000)
                times[name].append(time.perf_counter() - started)
        browser.close()
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="tidemill-dashboard-"))
    finished = args.jobs - args.pending - len(QUEUES) - 1
    seed(state, finished, random.Random(13))
    timings = Timings()
    with server(CLUSTER, state=state) as (url, _), httpx.Client(base_url=url, timeout=60) as http:
        try:
            live_jobs(http, args)
            time.sleep(2)  # the controller's first passes over the new jobs
            served = set(http.get("/openapi.json").json()["paths"])
            each_endpoint(http, args.rounds, timings, served)
            paints = {
                page: first_paint(url, screen(served), args.rounds, timings, page)
                for page, screen in SCREENS.items()
            }
            drawn = rendered(url, args)
            followed: list[str] = []
            follower = threading.Thread(target=follow_logs, args=(url, followed), daemon=True)
            follower.start()
            polls = updates(url, args.rounds, timings, served)
        finally:
            delete_live_jobs(http, args)
        follower.join(timeout=30)
    return {
        "benchmark": "dashboard",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "jobs": args.jobs,
        "finished": finished,
        "pending": args.pending,
        "wide_job_replicas": args.replicas,
        "rounds": args.rounds,
        "log_lines_followed_during_updates": len(followed),
        "first_paint": [summary(page, totals) for page, totals in paints.items()],
        "drawn_in_chromium": [summary(page, totals) for page, totals in drawn.items()],
        "polls": [summary(page, totals) for page, totals in polls.items()],
        "calls": timings.rows(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=64, help="replicas of the wide job")
    parser.add_argument("--pending", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    figures = {"load_average_before": load_before, **run(args)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"{figures['jobs']} jobs, wide job of {figures['wide_job_replicas']} replicas")
    print(f"{'first paint (rendering excluded)':<58} {'p50 ms':>9} {'p99 ms':>9}")
    for row in figures["first_paint"]:
        print(f"{row['call']:<58} {row['ttlb_p50_ms']:>9} {row['ttlb_p99_ms']:>9}")
    print(f"{'drawn in Chromium (rendering included)':<58} {'p50 ms':>9} {'p99 ms':>9}")
    for row in figures["drawn_in_chromium"]:
        print(f"{row['call']:<58} {row['ttlb_p50_ms']:>9} {row['ttlb_p99_ms']:>9}")
    print(f"{'a poll of each page (its calls, to last byte)':<58} {'p50 ms':>9} {'p99 ms':>9}")
    for row in figures["polls"]:
        print(f"{row['call']:<58} {row['ttlb_p50_ms']:>9} {row['ttlb_p99_ms']:>9}")
    header = f"{'call':<58} {'ttlb p50':>9} {'ttlb p99':>9} {'srv p50':>9} {'srv p99':>9}"
    print(header)
    for row in figures["calls"]:
        server = [row[k] for k in ("server_p50_ms", "server_p99_ms")]
        p50, p99 = ("-" if v is None else v for v in server)
        print(
            f"{row['call'][:58]:<58} {row['ttlb_p50_ms']:>9} {row['ttlb_p99_ms']:>9} "
            f"{p50:>9} {p99:>9}"
        )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
