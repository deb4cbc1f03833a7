"""``/api/v1/jobs/{name}/logs``: replica logs, merged or one replica's, read or followed.

Following holds a stream open until the job ends, so each client may hold only
``Limits.follow_streams_per_client`` such streams at once (429 past that).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tidemill.api.errors import NotFoundError
from tidemill.api.limits import INT64_MAX
from tidemill.api.status import JobPhase
from tidemill.api.token import Role
from tidemill.controller.reconciler import Controller
from tidemill.server.auth import Caller, Guard
from tidemill.server.engine_views import replica_log
from tidemill.server.limits import INT32_MAX, Limits, SlotStreamingResponse, StreamSlots
from tidemill.server.logs import LOG_LIMIT_BYTES, LogSource, stream_logs, tail_start


def log_routes(guard: Guard, controller: Controller, limits: Limits) -> APIRouter:
    router = APIRouter()
    caller_of = Depends(guard.caller)
    store = controller.store
    engine = controller.engine
    followers = StreamSlots(limits.follow_streams_per_client)

    @router.get("/api/v1/jobs/{name}/logs", response_class=PlainTextResponse)
    def logs(
        request: Request,
        name: str,
        namespace: str | None = None,
        role: str | None = None,
        index: int | None = Query(None, ge=0, le=INT32_MAX),
        follow: bool = False,
        tail_lines: int | None = Query(None, alias="tailLines", ge=0, le=INT64_MAX),
        limit_bytes: int = Query(
            LOG_LIMIT_BYTES,
            alias="limitBytes",
            ge=1,
            le=INT64_MAX,
            description="stop after this many bytes of log (a last line says so)",
        ),
        caller: Caller = caller_of,
    ) -> StreamingResponse:
        """Replica logs; without role/index every line is prefixed '[role-index] '.

        With ``follow`` the stream lasts until the job ends; each client may hold
        ``Limits.follow_streams_per_client`` such streams at once.
        """
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read logs")

        def sources() -> list[LogSource]:
            with store.read() as tx:
                row = tx.job(ns, name)
                replicas = [] if row is None else row.replicas
                chosen = [
                    (r, path)
                    for r in replicas
                    if (path := replica_log(engine, r))
                    and (role is None or r.role == role)
                    and (index is None or r.index == index)
                ]
                single = role is not None and index is not None
                return [
                    LogSource(
                        path=path,
                        prefix="" if single else f"[{r.replica_name}] ",
                        offset=tail_start(path, tail_lines, limit_bytes),
                    )
                    for r, path in chosen
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

        release = None
        if follow:
            release = followers.acquire(limits.client_key(request))
            if release is None:
                raise HTTPException(
                    429,
                    f"too many log streams: at most {followers.per_key} with follow=true "
                    "per client at once; close one (or read without follow) and retry",
                )
        return SlotStreamingResponse(
            stream_logs(initial, follow, running, sources if follow else None, limit_bytes),
            release,
            media_type="text/plain",
        )

    return router
