"""``/api/v1/jobs/{name}/metrics``: a job's training metrics, posted by its master and
read by anyone who may read the job.

Posts carry the job's own credential (like its events and master state), are checked
name by name (422 with the reason) and limited per job (429 with Retry-After); the
store keeps a bounded history (``Limits.metric_reports_per_job``).
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Query
from starlette.exceptions import HTTPException

from tidemill.api.limits import INT64_MAX
from tidemill.api.metrics import LatestMetric, MetricPoint, MetricPoints, MetricsView
from tidemill.api.token import Role
from tidemill.server.auth import Caller, Guard
from tidemill.server.limits import Limits, TokenBuckets
from tidemill.store.metrics import add_metric_points, latest_metrics, metric_points

POINTS_PAGE_MAX = 20_000


def metric_routes(guard: Guard, limits: Limits) -> APIRouter:
    router = APIRouter()
    store = guard.store
    posts = TokenBuckets(limits.metric_post_rate_per_s, limits.metric_post_burst)
    caller_of = Depends(guard.caller)

    @router.get("/api/v1/jobs/{name}/metrics", response_model=MetricsView)
    def job_metrics(
        name: str,
        namespace: str | None = None,
        replica: str | None = Query(None, max_length=64, description="e.g. worker-0"),
        since_step: int = Query(
            -1, alias="sinceStep", ge=-1, le=INT64_MAX, description="reports after this step"
        ),
        limit: int = Query(POINTS_PAGE_MAX, ge=1, le=POINTS_PAGE_MAX),
        caller: Caller = caller_of,
    ) -> MetricsView:
        """The job's training metrics, oldest step first, and the latest value of each
        (replica, name)."""
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read metrics")
        key = f"{ns}/{name}"
        with store.read() as tx:
            rows = metric_points(tx, key, replica, since_step, limit)
            latest = latest_metrics(tx, [key])
            return MetricsView(
                items=[
                    MetricPoint(replica=r.replica, step=r.step, time=r.time, values=r.values)
                    for r in rows
                ],
                latest=[
                    LatestMetric(
                        replica=r.replica, name=r.name, step=r.step, value=r.value, time=r.time
                    )
                    for r in latest
                ],
                kept=limits.metric_reports_per_job,
            )

    @router.post("/api/v1/jobs/{name}/metrics", status_code=201)
    def post_metrics(
        name: str, body: MetricPoints, namespace: str | None = None, caller: Caller = caller_of
    ) -> dict[str, int]:
        """Reports from the job's own master (its credential only)."""
        ns, name = guard.own_job(caller, name, namespace, "post metrics")
        key = f"{ns}/{name}"
        wait_s = posts.take(key)
        if wait_s > 0:
            raise HTTPException(
                429,
                f"job {key} posts metrics faster than {limits.metric_post_rate_per_s:g} "
                f"batches/s (bursts of {limits.metric_post_burst}); retry in {wait_s:.1f}s",
                headers={"Retry-After": str(math.ceil(wait_s))},
            )
        with store.transaction() as tx:
            add_metric_points(
                tx, key, [p.model_dump() for p in body.points], limits.metric_reports_per_job
            )
        return {"recorded": len(body.points)}

    return router
