"""The base of every job-file model, and the text rules shared by jobs, queues and nodes:
names, labels, one-line text and 64-bit integers."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tidemill.api.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_LABEL_NAME,
    MAX_LABEL_PREFIX,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_LINE_BYTES,
    shown,
    text_problem,
    utf8_size,
)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer a 64-bit column (and every engine) can hold."""


class SpecModel(BaseModel):
    """Base for job-file models: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


def validate_dns_label(value: str, what: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"{shown(value)} is not a valid {what}: use at most 63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'ctr-daily')"
        )
    return value


def validate_dns_subdomain(value: str, what: str) -> str:
    """DNS labels joined by dots, at most 253 characters (a Kubernetes node's name)."""
    labels = value.split(".")
    if len(value) > 253 or not all(len(x) <= 63 and _DNS_LABEL.match(x) for x in labels):
        raise ValueError(
            f"{shown(value)} is not a valid {what}: use at most 253 characters of DNS labels "
            "(lowercase letters, digits and '-') joined by '.' (e.g. 'gpu-1.rack-2')"
        )
    return value


def validate_line(value: str, what: str, max_bytes: int = MAX_LINE_BYTES) -> str:
    """One line of printable text (an image, a path, a gpu model), at most ``max_bytes``."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"the {what} {problem}")
    size = utf8_size(value)
    if size > max_bytes:
        raise ValueError(f"the {what} is {size:,} bytes long; at most {max_bytes:,} are accepted")
    return value


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Kubernetes label rules, so the same labels work on a Kubernetes engine.

    A key is ``[prefix/]name``: the name at most 63 letters, digits, '-', '_' or '.',
    starting and ending with a letter or digit; the prefix a DNS subdomain of at most
    253 characters. A value is empty or follows the name rule.
    """
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} are accepted")
    problems = [
        problem
        for key, value in labels.items()
        for problem in (_label_key_problem(key), _label_value_problem(key, value))
        if problem is not None
    ]
    if problems:
        raise ValueError("; ".join(problems[:5]))
    return labels


def _label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (len(prefix) > MAX_LABEL_PREFIX or not _DNS_SUBDOMAIN.match(prefix)):
        return (
            f"label key {shown(key)} has an invalid prefix: use a DNS subdomain of at most "
            f"{MAX_LABEL_PREFIX} characters (e.g. 'example.com/team')"
        )
    if len(name) > MAX_LABEL_NAME or not _LABEL_NAME.match(name):
        return (
            f"label key {shown(key)} is invalid: use at most {MAX_LABEL_NAME} letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit (e.g. 'team')"
        )
    return None


def _label_value_problem(key: str, value: str) -> str | None:
    if value == "" or (len(value) <= MAX_LABEL_VALUE and _LABEL_NAME.match(value)):
        return None
    return (
        f"label {shown(key)} has the invalid value {shown(value)}: use at most "
        f"{MAX_LABEL_VALUE} letters, digits, '-', '_' or '.', starting and ending with a letter "
        "or digit, or leave it empty"
    )
