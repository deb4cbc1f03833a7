"""A small real HTTP server speaking the REST contract, for the client's and CLI's error paths.

It answers with the contract's shapes (built from the real view models) for a few fixed
job names; the real server is exercised end to end in tests/e2e.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from tidemill.api.status import (
    Condition,
    ConditionType,
    EventView,
    JobPhase,
    JobSummary,
    JobView,
    NodeView,
    PendingReason,
    QueueView,
    ReplicaPhase,
    ReplicaView,
    ResourceView,
)

T0 = 1_700_000_000.0
QUEUE_MAX_REPLICAS = 8


@dataclass
class FakeServer:
    url: str
    posted: list[tuple[str, str]] = field(default_factory=list)
    """(content type, body) of every POST /jobs, in order."""


def error(status: int, code: str, message: str, errors: list[dict[str, str]] | None = None) -> Any:
    body = {"error": {"code": code, "message": message, "errors": errors or []}}
    return JSONResponse(status_code=status, content=body)


def job_view(name: str, phase: JobPhase, namespace: str = "default") -> JobView:
    replicas = [
        ReplicaView(role="worker", index=0, phase=ReplicaPhase.RUNNING, node="n1", gpus=["0"],
                    pid=4242, started_at=T0 + 2),
        ReplicaView(role="worker", index=1, phase=ReplicaPhase.FAILED, node="n2", restarts=3,
                    exit_code=3, started_at=T0 + 2, finished_at=T0 + 9,
                    message="CUDA error: out of memory"),
    ]
    return JobView(
        name=name,
        namespace=namespace,
        uid="uid-" + name,
        queue="default",
        priority=5,
        mode="allreduce",
        phase=phase,
        created_at=T0,
        started_at=None if phase is JobPhase.PENDING else T0 + 1,
        finished_at=T0 + 65 if phase.is_terminal else None,
        message="worker-1 failed 4 times" if phase is JobPhase.FAILED else "",
        pending_reason=PendingReason(
            code="GangDoesNotFit", message="needs 8 gpu on one node; largest free block is 6 on n3"
        ) if phase is JobPhase.PENDING else None,
        conditions=[
            Condition(type=ConditionType.SCHEDULED, reason="Bound", message="placed on n1, n2",
                      last_transition_time=T0 + 1),
        ],
        replicas=[] if phase is JobPhase.PENDING else replicas,
        spec={"spec": {"roles": {"worker": {"replicas": 2, "command": ["python", "train.py"]}}}},
    )


EVENTS = [
    EventView(id=1, time=T0, job="default/demo", type="Normal", reason="Submitted",
              message="queued in default"),
    EventView(id=2, time=T0 + 1, job="default/demo", type="Normal", reason="Scheduled",
              message="placed on n1, n2"),
    EventView(id=3, time=T0 + 9, job="default/demo", type="Warning", reason="ReplicaFailed",
              message="exit code 3", replica="worker-1"),
]


def make_app(state: FakeServer) -> FastAPI:
    app = FastAPI()
    jobs = {
        "demo": JobPhase.RUNNING,
        "waiting": JobPhase.PENDING,
        "done": JobPhase.SUCCEEDED,
        "broken": JobPhase.FAILED,
    }

    def missing(name: str) -> Any:
        return error(404, "NotFound", f"job '{name}' not found; list jobs with `tidemill jobs`")

    def lookup(name: str, namespace: str | None) -> Any:
        if name == "twin" and namespace is None:
            return error(409, "Conflict",
                         "job name 'twin' exists in several namespaces (a, b); pass --namespace")
        if name == "twin" or name in jobs:
            phase = jobs.get(name, JobPhase.RUNNING)
            return job_view(name, phase, namespace or "default").model_dump(mode="json")
        return missing(name)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/api/v1/jobs")
    async def submit(request: Request) -> Any:
        body = (await request.body()).decode()
        state.posted.append((request.headers.get("content-type", ""), body))
        document = yaml.safe_load(body)
        name = document["metadata"]["name"]
        if name == "taken":
            return error(409, "Conflict", "job default/taken already exists; delete it first")
        replicas = document["spec"]["roles"]["worker"].get("replicas", 1)
        if replicas > QUEUE_MAX_REPLICAS:
            return error(422, "Invalid", "the job is invalid", [{
                "path": "spec.roles.worker.replicas",
                "message": f"{replicas} exceeds what queue 'default' allows "
                           f"({QUEUE_MAX_REPLICAS}); ask for at most {QUEUE_MAX_REPLICAS}",
            }])
        namespace = document["metadata"].get("namespace", "default")
        status = 200 if request.query_params.get("dryRun") == "true" else 201
        view = job_view(name, JobPhase.PENDING, namespace)
        return JSONResponse(status_code=status, content=view.model_dump(mode="json"))

    @app.get("/api/v1/jobs")
    def list_jobs(namespace: str | None = None, phase: str | None = None) -> Any:
        rows = [
            JobSummary(name=name, namespace="default", queue="default", priority=5, phase=p,
                       replicas={"worker": "1/2"}, created_at=T0)
            for name, p in jobs.items()
            if phase is None or p.value == phase
        ]
        return {"items": [row.model_dump(mode="json") for row in rows]}

    @app.get("/api/v1/jobs/{name}")
    def get_job(name: str, namespace: str | None = None) -> Any:
        return lookup(name, namespace)

    @app.delete("/api/v1/jobs/{name}")
    def delete_job(name: str, namespace: str | None = None) -> Any:
        if name == "crash":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if name not in jobs:
            return missing(name)
        return {"deleted": f"{namespace or 'default'}/{name}"}

    @app.post("/api/v1/jobs/{name}/scale")
    async def scale(name: str, request: Request) -> Any:
        body = await request.json()
        if body["replicas"] > QUEUE_MAX_REPLICAS:
            return error(422, "Invalid", f"cannot scale {name}", [{
                "path": "replicas",
                "message": f"{body['replicas']} is above maxReplicas={QUEUE_MAX_REPLICAS}",
            }])
        return lookup(name, None)

    @app.get("/api/v1/jobs/{name}/logs")
    def logs(name: str, role: str | None = None, index: int | None = None) -> Any:
        if name not in jobs:
            return missing(name)
        if role is not None and index is not None:
            lines = [f"{role}-{index} only\n"]
        else:
            lines = ["[worker-0] step 1 loss=0.70\n", "[worker-1] [rank 1] ready\n"]
        return StreamingResponse(iter(lines), media_type="text/plain")

    @app.get("/api/v1/jobs/{name}/events")
    def job_events(name: str, namespace: str | None = None) -> Any:
        if name not in jobs:
            return missing(name)
        return {"items": [e.model_dump(mode="json") for e in EVENTS]}

    @app.get("/api/v1/events")
    def events(job: str | None = None, since: int = 0) -> Any:
        chosen = [e for e in EVENTS if e.id > since and (job is None or e.job == job)]
        return {"items": [e.model_dump(mode="json") for e in chosen]}

    @app.get("/api/v1/queues")
    def queues() -> Any:
        queue = QueueView(
            name="ads", weight=2, guaranteed=ResourceView(cpu=8, memory=16 * 2**30, gpu=2),
            max={"cpu": 32, "memory": None, "gpu": 4},
            allocated=ResourceView(cpu=3, memory=6 * 2**30, gpu=1), dominant_share=0.125,
            pending=1, running=2,
        )
        return {"items": [queue.model_dump(mode="json")]}

    @app.get("/api/v1/nodes")
    def nodes() -> Any:
        node = NodeView(
            name="n1", capacity=ResourceView(cpu=16, memory=64 * 2**30, gpu=2),
            allocated=ResourceView(cpu=4, memory=8 * 2**30, gpu=1.5), gpu_model="A100",
            gpu_used=[1.0, 0.5], labels={"rack": "r1"},
        )
        return {"items": [node.model_dump(mode="json")]}

    return app


@contextmanager
def serve() -> Iterator[FakeServer]:
    """Run the fake API on a free port in a thread; stopped when the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    state = FakeServer(url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(uvicorn.Config(make_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake tidemill server did not start within 10s")
            time.sleep(0.01)
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
