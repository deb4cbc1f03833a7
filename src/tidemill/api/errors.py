"""Input errors that point at the field a person has to change.

Tree::

    SpecError            a job, queue or cluster file (or REST body) is invalid
      └─ carries FieldError(path, message) items, one per problem
    NotFoundError        the job (or other object) named does not exist
    ConflictError        the request clashes with what exists (name taken, ambiguous name)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tidemill.api.limits import shown

MAX_REPORTED = 50
"""Problems listed per refusal; a list of 100,000 bad items is reported by its first 50."""


@dataclass(frozen=True)
class FieldError:
    """One problem: ``path`` is dotted (``spec.roles.worker.replicas``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """Invalid input, with every problem found (not just the first)."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))

    @classmethod
    def single(cls, path: str, message: str) -> SpecError:
        return cls([FieldError(path, message)])

    def to_json(self) -> list[dict[str, str]]:
        return [{"path": e.path, "message": e.message} for e in self.errors]


def from_validation_error(
    exc: ValidationError, known_fields: Mapping[str, str] | set[str], prefix: str = ""
) -> SpecError:
    """Turn pydantic's errors into ``path: message`` lines people can act on.

    ``known_fields`` maps each valid field name to where it belongs (or is a set).
    """
    errors: list[FieldError] = []
    items = exc.errors()
    for item in items[:MAX_REPORTED]:
        loc = [str(p) for p in item["loc"] if not _is_internal(p)]
        path = ".".join([prefix, *loc] if prefix else loc)
        errors.append(FieldError(path, _message(item, loc, known_fields)))
    if len(items) > MAX_REPORTED:
        errors.append(FieldError("", f"... and {len(items) - MAX_REPORTED:,} more problems"))
    return SpecError(errors)


def _is_internal(part: Any) -> bool:
    # pydantic adds union-branch tags such as "function-after[...]" to locations.
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _message(item: Any, loc: list[str], known_fields: Mapping[str, str] | set[str]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        name = loc[-1] if loc else ""
        if isinstance(known_fields, Mapping) and name in known_fields:
            return f"unknown field here; '{name}' belongs in {known_fields[name]}"
        close = difflib.get_close_matches(name, sorted(known_fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown field{hint}"
    if kind == "missing":
        return "required field is missing"
    message = str(item["msg"])
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


class NotFoundError(LookupError):
    """The object named does not exist; the message says where we looked."""


def job_not_found(name: str, namespace: str | None = None) -> NotFoundError:
    """The one way to say a job does not exist; a name of any length or content is
    echoed cut short and escaped (``shown``)."""
    if namespace is None:
        return NotFoundError(f"job {shown(name, 70)} not found; list jobs with `tidemill jobs`")
    return NotFoundError(f"job {shown(name, 70)} not found in namespace {shown(namespace, 70)}")


class QuotaExceeded(Exception):
    """The request would take a tenant past a bound the operator set; the message names
    the bound, what holds it and how to make room."""


class ConflictError(Exception):
    """The request clashes with the current state; the message says how to resolve it."""
