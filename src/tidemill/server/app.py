"""The REST API (under /api/v1), /healthz, /metrics and OpenAPI docs at /docs (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tidemill import __version__
from tidemill.api.errors import ConflictError, NotFoundError, SpecError
from tidemill.api.loader import job_from_document, parse_document
from tidemill.api.status import EventView, JobPhase, JobSummary, JobView, NodeView, QueueView
from tidemill.controller.reconciler import ACTIVE_PHASES, Controller
from tidemill.scheduler.types import ResourceVector
from tidemill.server.docs import add_docs
from tidemill.server.logs import LogSource, stream_logs, tail_start
from tidemill.server.views import (
    event_view,
    job_summary,
    job_view,
    node_views,
    queue_views,
)

STATIC = Path(__file__).parent / "static"


class Items(BaseModel):
    items: list[Any]


class MasterState(BaseModel):
    state: dict[str, Any] | None = Field(
        description="the job master's state: epoch, committed step, data positions"
    )


class EventRequest(BaseModel):
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str = Field(min_length=1, max_length=64)
    message: str
    replica: str | None = None


class ScaleRequest(BaseModel):
    role: str = Field(description="the role to resize, e.g. worker")
    replicas: int = Field(ge=0)


def _error(status: int, code: str, message: str, errors: list[dict[str, str]]) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "errors": errors}},
    )


def create_app(controller: Controller, registry: CollectorRegistry) -> FastAPI:
    """The HTTP face of one controller. All handlers are thin: parse, call, render."""
    store = controller.store
    app = FastAPI(
        title="tidemill",
        version=__version__,
        description="Elastic training platform: queues, gang scheduling, PS and AllReduce jobs.",
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)

    def view_of(namespace: str, name: str) -> JobView:
        with store.read() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise NotFoundError(f"job '{name}' not found in namespace '{namespace}'")
            return job_view(row)

    @app.exception_handler(SpecError)
    async def _invalid(_: Request, exc: SpecError) -> JSONResponse:
        return _error(422, "Invalid", "the job is invalid", exc.to_json())

    @app.exception_handler(NotFoundError)
    async def _missing(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "NotFound", str(exc.args[0]), [])

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _error(409, "Conflict", str(exc), [])

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, "BadRequest", str(exc.detail), [])

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """Live status for people: jobs, queues, nodes, events; refreshes every second."""
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/api/v1/jobs",
        status_code=201,
        response_model=JobView,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/yaml": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                },
            }
        },
    )
    async def submit(request: Request, dry_run: bool = Query(False, alias="dryRun")) -> Any:
        """Submit a job file (tidemill, Kubeflow PyTorchJob or TFJob), YAML or JSON."""
        body = (await request.body()).decode("utf-8", errors="replace")
        if not body.strip():
            raise SpecError.single("<body>", "empty request; send the job file as the body")
        job = job_from_document(parse_document(body, "<body>"))
        if dry_run:
            view = await run_in_threadpool(controller.dry_run, job)
            return JSONResponse(status_code=200, content=view.model_dump(mode="json"))
        key = await run_in_threadpool(controller.submit, job)
        return view_of(*key.split("/", 1))

    @app.get("/api/v1/jobs", response_model=Items)
    def list_jobs(namespace: str | None = None, phase: JobPhase | None = None) -> Items:
        with store.read() as tx:
            rows = tx.job_summaries(None if phase is None else phase.value, namespace)
            summaries: list[JobSummary] = [job_summary(row, running) for row, running in rows]
        return Items(items=summaries)

    @app.get("/api/v1/jobs/{name}", response_model=JobView)
    def get_job(name: str, namespace: str | None = None) -> JobView:
        return view_of(*controller.resolve(name, namespace))

    @app.delete("/api/v1/jobs/{name}")
    def delete_job(name: str, namespace: str | None = None) -> dict[str, str]:
        ns, name = controller.resolve(name, namespace)
        return {"deleted": controller.delete(ns, name)}

    @app.get("/api/v1/jobs/{name}/events", response_model=Items)
    def job_events(name: str, namespace: str | None = None) -> Items:
        ns, name = controller.resolve(name, namespace)
        with store.read() as tx:
            events: list[EventView] = [event_view(e) for e in tx.events(job=f"{ns}/{name}")]
        return Items(items=events)

    @app.get("/api/v1/events", response_model=Items)
    def events(job: str | None = None, since: int = 0, limit: int = 1000) -> Items:
        with store.read() as tx:
            return Items(items=[event_view(e) for e in tx.events(job, since, limit)])

    @app.get("/api/v1/jobs/{name}/logs", response_class=PlainTextResponse)
    def logs(
        name: str,
        namespace: str | None = None,
        role: str | None = None,
        index: int | None = None,
        follow: bool = False,
        tail_lines: int | None = Query(None, alias="tailLines", ge=0),
    ) -> StreamingResponse:
        """Replica logs; without role/index every line is prefixed '[role-index] '."""
        ns, name = controller.resolve(name, namespace)

        def sources() -> list[LogSource]:
            with store.read() as tx:
                row = tx.job(ns, name)
                replicas = [] if row is None else row.replicas
                chosen = [
                    r
                    for r in replicas
                    if r.log_path
                    and (role is None or r.role == role)
                    and (index is None or r.index == index)
                ]
                single = role is not None and index is not None
                return [
                    LogSource(
                        path=str(r.log_path),
                        prefix="" if single else f"[{r.replica_name}] ",
                        offset=tail_start(str(r.log_path), tail_lines),
                    )
                    for r in chosen
                ]

        initial = sources()
        if not initial and role is not None:
            with store.read() as tx:
                row = tx.job(ns, name)
                roles = sorted({r.role for r in row.replicas}) if row else []
            if role not in roles:
                raise NotFoundError(
                    f"job {ns}/{name} has no replica {role}"
                    + ("" if index is None else f"-{index}")
                    + f" with logs (roles with replicas: {', '.join(roles) or 'none yet'})"
                )

        def running() -> bool:
            with store.read() as tx:
                row = tx.job(ns, name)
                return row is not None and not JobPhase(row.phase).is_terminal

        return StreamingResponse(
            stream_logs(initial, follow, running, refresh=sources if follow else None),
            media_type="text/plain",
        )

    @app.post("/api/v1/jobs/{name}/scale", response_model=JobView)
    def scale(name: str, request: ScaleRequest, namespace: str | None = None) -> JobView:
        ns, name = controller.resolve(name, namespace)
        controller.scale(ns, name, request.role, request.replicas)
        return view_of(ns, name)

    @app.get("/api/v1/jobs/{name}/master-state", response_model=MasterState)
    def get_master_state(name: str, namespace: str | None = None) -> MasterState:
        """What the job's elastic master persisted (it reads this back after a restart)."""
        ns, name = controller.resolve(name, namespace)
        with store.read() as tx:
            row = tx.job(ns, name)
            return MasterState(state=None if row is None else row.master_state)

    @app.put("/api/v1/jobs/{name}/master-state", response_model=MasterState)
    def put_master_state(name: str, body: MasterState, namespace: str | None = None) -> MasterState:
        ns, name = controller.resolve(name, namespace)
        with store.transaction() as tx:
            row = tx.job(ns, name)
            if row is None:
                raise NotFoundError(f"job '{name}' not found in namespace '{ns}'")
            row.master_state = body.state
        return body

    @app.post("/api/v1/jobs/{name}/events", status_code=201)
    def post_event(name: str, body: EventRequest, namespace: str | None = None) -> dict[str, str]:
        """Events from the job's own processes (the elastic master), shown in describe."""
        ns, name = controller.resolve(name, namespace)
        with store.transaction() as tx:
            tx.add_event(
                f"{ns}/{name}",
                body.reason,
                body.message,
                warning=body.type == "Warning",
                replica=body.replica,
            )
        return {"recorded": body.reason}

    @app.get("/api/v1/queues", response_model=Items)
    def queues() -> Items:
        with store.read() as tx:
            nodes = node_views(tx.nodes(), [])
            capacity = ResourceVector(
                round(sum(n.capacity.cpu for n in nodes) * 1000),
                sum(n.capacity.memory for n in nodes),
                sum(n.capacity.gpu for n in nodes),
            )
            views: list[QueueView] = queue_views(tx.queues(), tx.jobs(), capacity)
        return Items(items=views)

    @app.get("/api/v1/nodes", response_model=Items)
    def nodes() -> Items:
        with store.read() as tx:
            views: list[NodeView] = node_views(tx.nodes(), tx.jobs(phases=ACTIVE_PHASES))
        return Items(items=views)

    return app
