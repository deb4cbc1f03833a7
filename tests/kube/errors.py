"""Kubernetes `Status` errors: the emulator raises `ApiError`, the HTTP layer writes it as JSON.

The official client turns a non-2xx answer into `ApiException(status=code)`, so the code, reason
and message must be the ones a real API server sends.
"""

from __future__ import annotations

from typing import Any

REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Gone",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An answer the API server gives as a `kind: Status` failure."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        """The `Status` object a real server writes for this error."""
        return status_object(self.code, self.reason, self.message, self.details)


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failure `Status` body."""
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = details
    return out


def success_status(kind: str, name: str, group: str, uid: str) -> dict[str, Any]:
    """The `Status: Success` some deletes and `pods/binding` answer with."""
    details: dict[str, Any] = {"name": name, "kind": kind, "uid": uid}
    if group:
        details["group"] = group
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _details(resource: str, group: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        out["group"] = group
    return out


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    """404 for a missing object, worded like the server (`pods "x" not found`)."""
    return ApiError(
        404,
        f'{_qualified(resource, group)} "{name}" not found',
        details=_details(resource, group, name),
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists for a create whose name is taken."""
    return ApiError(
        409,
        f'{_qualified(resource, group)} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(resource, group, name),
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    """409 Conflict (`Operation cannot be fulfilled on ...`)."""
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        details=_details(resource, group, name),
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid with one cause per (field path, message), like field.ErrorList."""
    qual = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{path}: {msg}" if path else msg for path, msg in causes)
    if len(causes) > 1:
        text = "[" + text + "]"
    details = {
        "name": name,
        "kind": kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": f"{msg}", "field": path}
            for path, msg in causes
        ],
    }
    if group:
        details["group"] = group
    return ApiError(422, f'{qual} "{name}" is invalid: {text}', details=details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, message)
