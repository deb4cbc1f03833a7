"""What stands between a request and the handlers: a body size limit, bounded JSON
parsing, a last resort that turns an unexpected error into a 500 with an id, and the
server's own time on every response (``Server-Timing``).

Bad input never reaches a handler as something that could raise inside it: a body
too large is a 413, JSON nested too deep, with a non-finite number or a lone surrogate
is a 422 that names the problem, and the connection stays usable.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidemill.server.limits import JSON_DEPTH_MAX

log = logging.getLogger("tidemill.server")

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def error_body(code: str, message: str, errors: list[dict[str, str]]) -> dict[str, Any]:
    """The one error shape of the REST API."""
    return {"error": {"code": code, "message": message, "errors": errors}}


class ErrorItem(BaseModel):
    path: str = Field(description="the field, parameter or document path at fault")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Invalid, NotFound, Conflict, QuotaExceeded, ...")
    message: str = Field(description="what is wrong and what would be right")
    errors: list[ErrorItem] = Field(description="one per problem found, for input errors")


class ErrorBody(BaseModel):
    """What every refusal answers (:func:`error_body`)."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "Unauthorized: no token, or one the server does not know (with --auth)",
        403: "Forbidden (the token's role or namespace), QuotaExceeded (a namespace's "
        "bound of unfinished jobs), or a cross-site write refused",
        404: "NotFound: no such job (or route)",
        408: "RequestTimeout: the request came too slowly",
        409: "Conflict: the name is taken, or the job's phase does not allow it",
        413: "TooLarge: the body passed its limit",
        422: "Invalid: every problem with its path",
        429: "TooManyRequests: a rate or concurrency limit; Retry-After says when",
        503: "StoreUnavailable (Retry-After) or TooManyConnections",
    }.items()
}
"""The refusals every route may answer, in the OpenAPI document (FastAPI would list its
own validation shape for 422, which the server never sends)."""


def _size(limit_bytes: int) -> str:
    mib, rest = divmod(limit_bytes, 1 << 20)
    return f"{limit_bytes} bytes ({mib} MiB)" if mib and not rest else f"{limit_bytes} bytes"


class BodyTooLarge(HTTPException):
    """The body passed the limit while it was being read; the connection is closed so
    the rest of it is never read."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            413,
            f"request body larger than the limit of {_size(limit_bytes)}; send less "
            "(a job file, an event or master state is far smaller)",
            headers={"Connection": "close"},
        )


class BodyLimit:
    """Refuse bodies over ``max_bytes``: at once when Content-Length says so, else as
    soon as the bytes received pass it (chunked uploads, a Content-Length that lies).
    Nothing is buffered here; handlers read at most ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            response = JSONResponse(
                error_body("TooLarge", str(error.detail), []), 413, headers=error.headers
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


class CatchAll:
    """The one place a 500 comes from: an error no handler expected. The client gets a
    short incident id; the server log has the traceback under the same id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except ClientDisconnect:
            return  # the client left before its body ended (or was closed for slowness)
        except Exception as exc:
            if started:
                raise
            incident = uuid.uuid4().hex[:8]
            log.error(
                "%s %s failed (incident %s)",
                scope["method"],
                scope["path"],
                incident,
                exc_info=exc,
            )
            message = f"internal error (incident {incident}); the server log has the details"
            response = JSONResponse(error_body("Internal", message, []), 500)
            await response(scope, receive, send)


class ServerTiming:
    """``Server-Timing: app;dur=MS`` on every response: from the request's arrival to its
    response headers, so a client (the dashboard, a benchmark, a browser's developer
    tools) tells the server's time from the network's. A whole response is rendered
    before its headers go out, so this is its full server time; for a stream (logs
    with follow) it is the time to the first byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                spent_ms = (time.perf_counter() - arrived) * 1000
                MutableHeaders(scope=message).append("Server-Timing", f"app;dur={spent_ms:.2f}")
            await send(message)

        await self.app(scope, receive, timed)


def parse_json(body: bytes, max_depth: int = JSON_DEPTH_MAX) -> Any:
    """``json.loads`` for request bodies: a document nested deeper than ``max_depth``,
    a number that is not finite (NaN, 1e400) or a string with a lone surrogate is a
    JSONDecodeError that says so, never a value that breaks a handler later."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", "", exc.start) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0) from None
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc), "", 0) from None
    if _deeper_than(value, max_depth):
        raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", "", 0)
    if _SURROGATE_ESCAPE.search(body):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise json.JSONDecodeError(
                "a string holds a lone surrogate (\\ud800-\\udfff); text must be valid Unicode",
                "",
                0,
            ) from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; send a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range for a number; send a finite number")
    return number


def _deeper_than(value: Any, max_depth: int) -> bool:
    if not isinstance(value, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > max_depth:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


class _BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class BoundedJsonRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(_BoundedJsonRequest(request.scope, request.receive))

        return bounded


def request_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """FastAPI's validation errors as ``path: message`` items; a query parameter's path
    is its name."""
    errors = []
    for item in exc.errors():
        where, *loc = [str(part) for part in item["loc"]] or ["body"]
        if item["type"] == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", item["msg"])
            errors.append({"path": "<body>", "message": f"not valid JSON: {reason}"})
            continue
        message = "required field is missing" if item["type"] == "missing" else str(item["msg"])
        if where != "body":
            message = f"{message} (a {where} parameter)"
        errors.append({"path": ".".join(loc) or "<body>", "message": message})
    return errors
