"""Label and field selectors with the API server's parsing rules and matching semantics.

`!=` and `notin` match objects that lack the label, as in Kubernetes; malformed selectors are a
400 BadRequest, and a field the resource does not index is rejected rather than ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

_KEY = re.compile(
    r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?$"
)
_VALUE = re.compile(r"^([a-z0-9A-Z]([-a-z0-9A-Z_.]*[a-z0-9A-Z])?)?$")


@dataclass(frozen=True)
class Requirement:
    """One clause of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes semantics: negative operators match when the key is absent."""
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        return not has or labels[self.key] not in self.values


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _check_key(key: str, text: str) -> str:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(
            f"unable to parse requirement: invalid label key \"{key}\" in \"{text}\""
        )
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(
            f"unable to parse requirement: invalid label value: \"{value}\" in \"{text}\""
        )
    return value


_SET = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_EQ = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*(\S*)\s*$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h`; an empty selector matches everything."""
    if not text or not text.strip():
        return []
    reqs = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise bad_request(
                f"unable to parse requirement: found '', expected: identifier in \"{text}\""
            )
        m = _SET.match(part)
        if m:
            key = _check_key(m.group(1), text)
            values = tuple(_check_value(v.strip(), text) for v in m.group(3).split(","))
            reqs.append(Requirement(key, m.group(2), values))
            continue
        m = _EQ.match(part)
        if m:
            op = "=" if m.group(2) in ("=", "==") else "!="
            value = _check_value(m.group(3), text)
            reqs.append(Requirement(_check_key(m.group(1), text), op, (value,)))
            continue
        if part.startswith("!"):
            reqs.append(Requirement(_check_key(part[1:].strip(), text), "!"))
            continue
        if re.match(r"^\S+$", part):
            reqs.append(Requirement(_check_key(part, text), "exists"))
            continue
        raise bad_request(f"unable to parse requirement: unable to parse \"{part}\" in \"{text}\"")
    return reqs


def labels_match(reqs: list[Requirement], obj: dict[str, Any]) -> bool:
    """Whether an object's labels satisfy every requirement."""
    if not reqs:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


def _getter(path: str) -> Callable[[dict[str, Any]], str]:
    parts = path.split(".")

    def get(obj: dict[str, Any]) -> str:
        cur: Any = obj
        for p in parts:
            cur = cur.get(p) if isinstance(cur, dict) else None
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


# Fields each built-in resource indexes for field selectors (metadata.* are always allowed).
FIELDS: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.schedulerName",
        "spec.restartPolicy",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "secrets": ("type",),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}


@dataclass(frozen=True)
class FieldRequirement:
    """`field=value` or `field!=value`."""

    field: str
    negate: bool
    value: str
    get: Callable[[dict[str, Any]], str]

    def matches(self, obj: dict[str, Any]) -> bool:
        return (self.get(obj) == self.value) != self.negate


def parse_field_selector(text: str | None, resource: str, custom: bool) -> list[FieldRequirement]:
    """Parse a field selector, rejecting fields the resource does not support (400)."""
    if not text or not text.strip():
        return []
    allowed = ("metadata.name", "metadata.namespace", *FIELDS.get(resource, ()))
    out = []
    for raw in text.split(","):
        part = raw.strip()
        m = re.match(r"^([^!=]+)(==|=|!=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field = m.group(1).strip()
        if field not in allowed:
            if custom:
                raise bad_request(
                    f'"{field}" is not a known field selector: only "metadata.name", '
                    '"metadata.namespace"'
                )
            raise bad_request(f"field label not supported: {field}")
        get = _getter("source.component" if field == "source" else field)
        out.append(FieldRequirement(field, m.group(2) == "!=", m.group(3).strip(), get))
    return out


def fields_match(reqs: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    """Whether an object satisfies every field requirement."""
    return all(r.matches(obj) for r in reqs)
