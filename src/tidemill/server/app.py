"""The REST API (under /api/v1), /healthz, /metrics and OpenAPI docs at /docs (offline)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    Response,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from tidemill import __version__
from tidemill.api.errors import (
    ConflictError,
    NotFoundError,
    QuotaExceeded,
    SpecError,
    job_not_found,
)
from tidemill.api.job import TrainingJob
from tidemill.api.limits import INT64_MAX, JOBS_PAGE_MAX
from tidemill.api.loader import job_from_document
from tidemill.api.status import (
    EventView,
    JobList,
    JobPhase,
    JobView,
    NodeView,
    QueueView,
    UtilizationPoint,
)
from tidemill.api.token import ALL_NAMESPACES, Role
from tidemill.controller.reconciler import ACTIVE_PHASES, Controller
from tidemill.server.auth import Caller, Forbidden, Guard, Unauthorized
from tidemill.server.checkpoint_routes import checkpoint_routes
from tidemill.server.debug_routes import debug_routes
from tidemill.server.docs import add_docs
from tidemill.server.engine_views import engine_problem as problem_of
from tidemill.server.limits import (
    EVENTS_PAGE_MAX,
    INT32_MAX,
    Limits,
    TokenBuckets,
)
from tidemill.server.log_routes import log_routes
from tidemill.server.metric_routes import metric_routes
from tidemill.server.middleware import (
    ERROR_RESPONSES,
    BodyLimit,
    BoundedJsonRoute,
    CatchAll,
    ServerTiming,
    error_body,
    request_errors,
)
from tidemill.server.origins import DASHBOARD_POLICY, BrowserGuard
from tidemill.server.parse_pool import ParsePool
from tidemill.server.peers import OwnUserOnly
from tidemill.server.token_routes import token_routes
from tidemill.server.usage import job_usage
from tidemill.server.utilization import MAX_POINTS, RETENTION_S, point_of
from tidemill.server.views import (
    capacity_of,
    event_view,
    job_summary,
    job_view,
    node_views,
    queue_views,
)
from tidemill.store.store import StoreUnavailable
from tidemill.store.tables import (
    EVENT_MESSAGE_MAX_CHARS,
    EVENT_REASON_MAX_CHARS,
    EVENT_REPLICA_MAX_CHARS,
)

STATIC = Path(__file__).parent / "static"
HTTP_CODES = {
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "TooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
}


class Items(BaseModel):
    items: list[Any]


class MasterState(BaseModel):
    state: dict[str, Any] | None = Field(
        description="the job master's state: epoch, committed step, data positions"
    )


class EventRequest(BaseModel):
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str = Field(min_length=1, max_length=EVENT_REASON_MAX_CHARS)
    message: str = Field(max_length=EVENT_MESSAGE_MAX_CHARS)
    replica: str | None = Field(None, max_length=EVENT_REPLICA_MAX_CHARS)


class ScaleRequest(BaseModel):
    role: str = Field(description="the role to resize, e.g. worker")
    replicas: int = Field(ge=0, le=INT32_MAX)


def _error(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, str]],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content=error_body(code, message, errors), headers=headers
    )


def body_text(body: bytes) -> str:
    """The submitted job file as text, or a SpecError saying why it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError.single(
            "<body>", f"not UTF-8 at byte {exc.start} ({exc.reason}); send the file as UTF-8"
        ) from None
    if not text.strip():
        raise SpecError.single("<body>", "empty request; send the job file as the body")
    return text


def job_from_parsed(document: dict[str, Any]) -> TrainingJob:
    """Validate a parsed job file; runs in a worker thread."""
    try:
        return job_from_document(document)
    except RecursionError:
        raise SpecError.single(
            "<body>", "nested too deeply to read; a job file is a handful of levels deep"
        ) from None


def create_app(
    controller: Controller,
    registry: CollectorRegistry,
    guard: Guard | None = None,
    limits: Limits | None = None,
    parser: ParsePool | None = None,
    host_names: frozenset[str] | None = None,
    own_user: int | None = None,
) -> FastAPI:
    """The HTTP face of one controller. All handlers are thin: parse, call, render.

    ``guard`` decides who may call what (see server/auth.py); None serves every caller.
    ``parser`` parses submitted job files (its owner closes it). ``host_names``: the
    names requests may be addressed to (None: any; see server/origins.py).
    ``own_user``: the only uid whose loopback connections are served (None: any; see
    server/peers.py).
    """
    store = controller.store
    engine = controller.engine

    def engine_problem() -> str | None:
        return problem_of(engine)

    guard = guard or Guard.open(store, controller.resolve)
    caller_of = Depends(guard.caller)
    limits = limits or Limits()
    event_rate = TokenBuckets(limits.event_rate_per_s, limits.event_burst)
    parser = parser or ParsePool()
    app = FastAPI(
        title="tidemill",
        version=__version__,
        description="Elastic training platform: queues, gang scheduling, PS and AllReduce jobs.",
        docs_url=None,
        redoc_url=None,
        responses=ERROR_RESPONSES,
    )
    app.router.route_class = BoundedJsonRoute
    app.add_middleware(BodyLimit, max_bytes=limits.body_bytes)
    app.add_middleware(BrowserGuard, names=host_names)
    app.add_middleware(OwnUserOnly, uid=own_user)
    app.add_middleware(CatchAll)
    app.add_middleware(ServerTiming)
    add_docs(app)

    def view_of(namespace: str, name: str, with_usage: bool = False) -> JobView:
        """The job; ``with_usage``: with what its running replicas use now."""
        with store.read() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise job_not_found(name, namespace)
            return job_view(row, job_usage(engine, row) if with_usage else None)

    @app.exception_handler(SpecError)
    async def _invalid(_: Request, exc: SpecError) -> JSONResponse:
        return _error(422, "Invalid", "the job is invalid", exc.to_json())

    @app.exception_handler(NotFoundError)
    async def _missing(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, "NotFound", str(exc.args[0]), [])

    @app.exception_handler(QuotaExceeded)
    async def _over_quota(_: Request, exc: QuotaExceeded) -> JSONResponse:
        return _error(403, "QuotaExceeded", str(exc), [])

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _error(409, "Conflict", str(exc), [])

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        response = _error(401, "Unauthorized", str(exc), [])
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, "Forbidden", str(exc), [])

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "BadRequest")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"no such path {request.url.path!r} on this tidemill server; the API lives "
                "under /api/v1 (see /docs)"
            )
        return _error(exc.status_code, code, message, [], exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "Invalid", "the request is invalid", request_errors(exc))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        headers = {"Retry-After": "5"}
        return _error(503, "StoreUnavailable", str(exc), [], headers)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        """The dashboard's page; its pages (jobs, one job, cluster) are routed in the
        browser by the address's fragment, so ``/#/jobs/NS/NAME`` is a deep link."""
        return FileResponse(
            STATIC / "index.html", headers={"Content-Security-Policy": DASHBOARD_POLICY}
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """{"status": "ok"}; 503 {"status": "degraded", "store": why} while the store
        cannot write (it recovers by itself once a probe write succeeds), and
        {"engine": why} while the engine cannot reach what runs replicas (the Kubernetes
        API); the state is kept and calls are retried meanwhile."""
        problems = {"store": store.write_problem(), "engine": engine_problem()}
        found = {k: v for k, v in problems.items() if v is not None}
        if not found:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "degraded", **found}, status_code=503)

    @app.get("/metrics")
    def metrics(caller: Caller = caller_of) -> Response:
        caller.require(Role.VIEWER, ALL_NAMESPACES, "read metrics")
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
    async def submit(
        request: Request, dry_run: bool = Query(False, alias="dryRun"), caller: Caller = caller_of
    ) -> Any:
        """Submit a job file (tidemill, Kubeflow PyTorchJob or TFJob), YAML or JSON."""
        document = await parser.parse(body_text(await request.body()), "<body>")
        job = await run_in_threadpool(job_from_parsed, document)
        caller.require(Role.EDITOR, job.metadata.namespace, "submit jobs")
        if dry_run:
            view = await run_in_threadpool(controller.dry_run, job)
            return JSONResponse(status_code=200, content=view.model_dump(mode="json"))
        key = await run_in_threadpool(partial(controller.submit, job, actor=caller.actor))
        namespace, name = key.split("/", 1)
        return await run_in_threadpool(view_of, namespace, name)

    @app.get("/api/v1/jobs", response_model=JobList)
    def list_jobs(
        namespace: str | None = None,
        phase: JobPhase | None = None,
        limit: int | None = Query(
            None, ge=1, le=JOBS_PAGE_MAX, description="a page of at most this many; none: all"
        ),
        after: str | None = Query(
            None,
            alias="continue",
            pattern=r"^[0-9]{1,18}$",
            description="the `continue` of the page before",
        ),
        newest: bool = Query(False, description="newest first, not oldest first"),
        caller: Caller = caller_of,
    ) -> JobList:
        namespace = guard.visible(caller, namespace, "list jobs")
        with store.read() as tx:
            rows = tx.job_summaries(
                None if phase is None else phase.value,
                namespace,
                limit=None if limit is None else limit + 1,
                after=None if after is None else int(after),
                newest=newest,
            )
            phases = tx.job_phases(namespace) if after is None else {}
        more = limit is not None and len(rows) > limit
        page = rows[:limit] if more else rows
        return JobList(
            items=[job_summary(row, running) for row, running in page],
            continue_=str(page[-1][0].id) if more else None,
            phases=phases,
        )

    @app.get("/api/v1/jobs/{name}", response_model=JobView)
    def get_job(name: str, namespace: str | None = None, caller: Caller = caller_of) -> JobView:
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read jobs")
        return view_of(ns, name, with_usage=True)

    @app.delete("/api/v1/jobs/{name}")
    def delete_job(
        name: str, namespace: str | None = None, caller: Caller = caller_of
    ) -> dict[str, str]:
        ns, name = guard.job(caller, name, namespace, Role.EDITOR, "delete jobs")
        return {"deleted": controller.delete(ns, name, actor=caller.actor)}

    @app.get("/api/v1/jobs/{name}/events", response_model=Items)
    def job_events(
        name: str,
        namespace: str | None = None,
        since: int = Query(0, ge=0, le=INT64_MAX, description="events after this id"),
        limit: int = Query(1000, ge=1, le=EVENTS_PAGE_MAX),
        caller: Caller = caller_of,
    ) -> Items:
        """The job's events, oldest first; a page that polls passes the last id it has
        as ``since`` and gets only what is new."""
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read events")
        with store.read() as tx:
            rows = tx.events(f"{ns}/{name}", since, limit)
            events: list[EventView] = [event_view(e) for e in rows]
        return Items(items=events)

    @app.get("/api/v1/events", response_model=Items)
    def events(
        job: str | None = None,
        since: int = Query(0, ge=0, le=INT64_MAX, description="events after this id"),
        limit: int = Query(1000, ge=1, le=EVENTS_PAGE_MAX),
        newest: bool = Query(False, description="the last `limit` events, not the first"),
        caller: Caller = caller_of,
    ) -> Items:
        namespace = guard.visible(caller, job.partition("/")[0] if job else None, "read events")
        with store.read() as tx:
            rows = tx.events(job, since, limit, namespace=namespace, newest=newest)
            return Items(items=[event_view(e) for e in rows])

    @app.post("/api/v1/jobs/{name}/scale", response_model=JobView)
    def scale(
        name: str, request: ScaleRequest, namespace: str | None = None, caller: Caller = caller_of
    ) -> JobView:
        ns, name = guard.job(caller, name, namespace, Role.EDITOR, "scale jobs")
        controller.scale(ns, name, request.role, request.replicas, actor=caller.actor)
        return view_of(ns, name)

    @app.post("/api/v1/jobs/{name}/suspend", response_model=JobView)
    def suspend(name: str, namespace: str | None = None, caller: Caller = caller_of) -> JobView:
        """Stop the job's processes (SIGTERM first: tidemill's runtime checkpoints the
        step it reached) and keep it out of its queue until resumed; a no-op for a
        suspended job."""
        ns, name = guard.job(caller, name, namespace, Role.EDITOR, "suspend jobs")
        controller.suspend(ns, name, actor=caller.actor)
        return view_of(ns, name)

    @app.post("/api/v1/jobs/{name}/resume", response_model=JobView)
    def resume(name: str, namespace: str | None = None, caller: Caller = caller_of) -> JobView:
        """Queue a suspended job again; it restores its newest checkpoint, if it has
        one. 409 for a job that is not suspended."""
        ns, name = guard.job(caller, name, namespace, Role.EDITOR, "resume jobs")
        controller.resume(ns, name, actor=caller.actor)
        return view_of(ns, name)

    @app.get("/api/v1/jobs/{name}/master-state", response_model=MasterState)
    def get_master_state(
        name: str, namespace: str | None = None, caller: Caller = caller_of
    ) -> MasterState:
        """What the job's elastic master persisted (it reads this back after a restart).
        The job's own credential, or an admin token."""
        ns, name = guard.own_job(caller, name, namespace, "read the master state", admins=True)
        with store.read() as tx:
            row = tx.job(ns, name)
            return MasterState(state=None if row is None else row.master_state)

    @app.put("/api/v1/jobs/{name}/master-state", response_model=MasterState)
    def put_master_state(
        name: str, body: MasterState, namespace: str | None = None, caller: Caller = caller_of
    ) -> MasterState:
        """Only the job's own credential may write it: the controller acts on what it says."""
        ns, name = guard.own_job(caller, name, namespace, "write the master state")
        with store.transaction() as tx:
            row = tx.job(ns, name)
            if row is None:
                raise job_not_found(name, ns)
            row.master_state = body.state
        return body

    @app.post("/api/v1/jobs/{name}/events", status_code=201)
    def post_event(
        name: str, body: EventRequest, namespace: str | None = None, caller: Caller = caller_of
    ) -> dict[str, str]:
        """Events from the job's own processes (the elastic master), shown in describe.
        Only the job's own credential may post them; each job may post
        ``Limits.event_rate_per_s`` a second (bursts of ``event_burst``), more is a 429
        with Retry-After.
        """
        ns, name = guard.own_job(caller, name, namespace, "post events")
        wait_s = event_rate.take(f"{ns}/{name}")
        if wait_s > 0:
            raise HTTPException(
                429,
                f"job {ns}/{name} posts events faster than {limits.event_rate_per_s:g}/s "
                f"(bursts of {limits.event_burst}); retry in {wait_s:.1f}s",
                headers={"Retry-After": str(math.ceil(wait_s))},
            )
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
    def queues(caller: Caller = caller_of) -> Items:
        guard.visible(caller, None, "read queues")
        with store.read() as tx:
            capacity = capacity_of(node_views(tx.nodes(), []))
            holding = tx.jobs(phases=ACTIVE_PHASES)
            views: list[QueueView] = queue_views(tx.queues(), holding, tx.job_counts(), capacity)
        return Items(items=views)

    @app.get("/api/v1/cluster/utilization", response_model=Items)
    def utilization(
        seconds: float = Query(3600, gt=0, le=RETENTION_S, description="how far back"),
        points: int = Query(500, ge=2, le=MAX_POINTS, description="at most this many"),
        caller: Caller = caller_of,
    ) -> Items:
        """Capacity, allocation and each queue's share over time, oldest first: samples
        the server takes every 15 s, thinned evenly to ``points``."""
        guard.visible(caller, None, "read cluster utilization")
        with store.read() as tx:
            rows = tx.utilization_since(time.time() - seconds, points)
            found: list[UtilizationPoint] = [point_of(row) for row in rows]
        return Items(items=found)

    @app.get("/api/v1/nodes", response_model=Items)
    def nodes(caller: Caller = caller_of) -> Items:
        guard.visible(caller, None, "read nodes")
        with store.read() as tx:
            views: list[NodeView] = node_views(tx.nodes(), tx.jobs(phases=ACTIVE_PHASES))
        return Items(items=views)

    app.include_router(token_routes(guard))
    app.include_router(checkpoint_routes(guard, controller))
    app.include_router(debug_routes(guard, controller, limits))
    app.include_router(metric_routes(guard, limits))
    app.include_router(log_routes(guard, controller, limits))
    return app
