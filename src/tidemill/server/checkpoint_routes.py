"""``/api/v1/jobs/{name}/checkpoints``: a job's durable checkpoints, read from where they live.

The listing reads manifests through fsspec (a local folder, S3, HDFS...), on a worker
thread with a deadline: storage that is slow or down answers 503 naming the folder,
and never holds up the API.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from starlette.exceptions import HTTPException

from tidemill.api.checkpoint import CheckpointList, CheckpointView
from tidemill.api.token import Role
from tidemill.controller.reconciler import Controller
from tidemill.server.auth import Caller, Guard

LIST_TIMEOUT_S = 10.0


def checkpoint_views(url: str) -> list[CheckpointView]:
    """Every checkpoint folder under ``url``, newest first, usable or not."""
    from tidemill.checkpoint import list_checkpoints

    views = []
    for listing in list_checkpoints(url):
        manifest = listing.manifest
        views.append(
            CheckpointView(
                name=listing.name,
                url=listing.url,
                step=None if manifest is None else manifest.step,
                time=None if manifest is None else manifest.time,
                size_bytes=None if manifest is None else manifest.size_bytes,
                world_size=None if manifest is None else manifest.world_size,
                data=None if manifest is None else manifest.data,
                problem=listing.problem,
            )
        )
    return views


async def read_checkpoints(url: str, timeout_s: float = LIST_TIMEOUT_S) -> list[CheckpointView]:
    """:func:`checkpoint_views` off the event loop; HTTP 503 when storage fails or stalls."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(checkpoint_views, url), timeout_s)
    except TimeoutError:
        raise HTTPException(
            503, f"listing checkpoints in {url} took over {timeout_s:g} s; try again later"
        ) from None
    except OSError as exc:
        raise HTTPException(503, f"cannot read checkpoints in {url}: {exc}") from None


def checkpoint_routes(guard: Guard, controller: Controller) -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs", tags=["checkpoints"])
    caller_of = Depends(guard.caller)

    @router.get("/{name}/checkpoints", response_model=CheckpointList)
    async def list_checkpoints(
        name: str, namespace: str | None = None, caller: Caller = caller_of
    ) -> CheckpointList:
        """The job's checkpoints, newest first: step, time, size, world size and data
        positions; a partial or unreadable one is listed with its problem."""
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read checkpoints")
        plan = await asyncio.to_thread(controller.checkpoint_plan, ns, name)
        if plan is None:
            return CheckpointList(url=None, items=[])
        return CheckpointList(url=plan.url, items=await read_checkpoints(plan.url))

    return router
