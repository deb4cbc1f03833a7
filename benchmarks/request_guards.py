"""What the guards in front of every request cost: the browser rules (Host and Origin,
``tidemill.server.origins``) and, on an open server, the kernel's answer to which user
is calling (``tidemill.server.peers``, one sock_diag request).

Side by side in one run: the same trivial ASGI app called directly, behind the browser
guard, and behind both, with the scope of a real loopback connection (so sock_diag
finds a socket); then a real server's ``GET /api/v1/jobs/{name}`` for scale.

Prints a table and writes ``benchmarks/results/request_guards.json``.

    python benchmarks/request_guards.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tidemill.server.origins import BrowserGuard, answered_names
from tidemill.server.peers import OwnUserOnly
from tidemill.server.runner import ServerRunner

RESULTS = Path(__file__).parent / "results" / "request_guards.json"
JOB = {
    "metadata": {"name": "probe"},
    "spec": {
        "roles": {
            "worker": {
                "replicas": 1,
                "resources": {"cpu": 0.1},
                "command": ["python", "-c", "import time; time.sleep(600)"],
            }
        }
    },
}


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def sink(message: Any) -> None:
    pass


def seconds_per_call(app: Any, scope: dict[str, Any], calls: int) -> float:
    async def many() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(dict(scope), receive, sink)
        return (time.perf_counter() - started) / calls

    return asyncio.run(many())


def get_one_job_p50_s(calls: int) -> float:
    with tempfile.TemporaryDirectory() as state:
        runner = ServerRunner(Path(state), port=0)
        url = runner.start()
        try:
            with httpx.Client(base_url=url) as http:
                http.post("/api/v1/jobs", content=json.dumps(JOB)).raise_for_status()
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    http.get("/api/v1/jobs/probe").raise_for_status()
                    times.append(time.perf_counter() - started)
                http.delete("/api/v1/jobs/probe")
        finally:
            runner.stop()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        accepted, _ = listener.accept()
        with accepted:
            host, port = listener.getsockname()
            scope = {
                "type": "http",
                "method": "POST",
                "path": "/api/v1/jobs",
                "headers": [
                    (b"host", f"{host}:{port}".encode()),
                    (b"origin", f"http://{host}:{port}".encode()),
                    (b"content-type", b"application/json"),
                ],
                "client": client.getsockname(),
                "server": accepted.getsockname(),
            }
            sides = {
                "plain": answer,
                "browser guard": BrowserGuard(answer, answered_names(host, [])),
                "browser + own-user guards": OwnUserOnly(
                    BrowserGuard(answer, answered_names(host, [])), os.geteuid()
                ),
            }
            per_side: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(args.rounds):
                for name, app in sides.items():
                    per_side[name].append(seconds_per_call(app, scope, args.calls))
    best = {name: min(values) for name, values in per_side.items()}
    get_p50 = get_one_job_p50_s(300)

    plain = best["plain"]
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "plain_call_us": round(plain * 1e6, 2),
        "browser_guard_us": round((best["browser guard"] - plain) * 1e6, 2),
        "both_guards_us": round((best["browser + own-user guards"] - plain) * 1e6, 2),
        "get_one_job_p50_ms": round(get_p50 * 1e3, 3),
    }
    figures["both_guards_over_get_one_job"] = round(
        (best["browser + own-user guards"] - plain) / get_p50, 4
    )
    print(f"{'side':<28} {'per call':>10} {'over plain':>11}")
    for name, seconds in best.items():
        print(f"{name:<28} {seconds * 1e6:>8.2f} µs {(seconds - plain) * 1e6:>8.2f} µs")
    print(
        f"GET /api/v1/jobs/{{name}} on a real server, p50: {get_p50 * 1e3:.2f} ms; both "
        f"guards are {figures['both_guards_over_get_one_job']:.2%} of it"
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
