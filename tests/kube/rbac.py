"""The request log in RBAC terms, checked against PolicyRules instead of enforcing them.

The emulator does not authorize requests; a test asserts that every call an engine made is one a
ClusterRole allows, which is what would fail first on a real cluster.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Call(NamedTuple):
    """One API request as RBAC sees it."""

    verb: str
    api_group: str
    resource: str
    subresource: str
    namespace: str


def rbac_verb(method: str, has_name: bool, watch: bool) -> str:
    """Map an HTTP method to the RBAC verb the authorizer checks."""
    if method == "GET" or method == "HEAD":
        if has_name:
            return "get"
        return "watch" if watch else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return method.lower()


def _resource_matches(patterns: list[str], call: Call) -> bool:
    full = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    for p in patterns:
        if p == "*" or p == full:
            return True
        if call.subresource and (p == f"{call.resource}/*" or p == f"*/{call.subresource}"):
            return True
    return False


def rule_allows(rule: dict[str, Any], call: Call, name: str = "") -> bool:
    """One PolicyRule (apiGroups, resources, verbs, resourceNames; `*` wildcards)."""
    groups = rule.get("apiGroups") or []
    verbs = rule.get("verbs") or []
    if "*" not in groups and call.api_group not in groups:
        return False
    if "*" not in verbs and call.verb not in verbs:
        return False
    if not _resource_matches(rule.get("resources") or [], call):
        return False
    names = rule.get("resourceNames") or []
    return not names or (bool(name) and name in names)


def disallowed(calls: list[Call], names: list[str], rules: list[dict[str, Any]]) -> list[Call]:
    """The calls no rule allows, in order, without repeats."""
    out: list[Call] = []
    for call, name in zip(calls, names, strict=True):
        if call not in out and not any(rule_allows(r, call, name) for r in rules):
            out.append(call)
    return out
