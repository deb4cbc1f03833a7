"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch.

The strategic merge patch here knows only the list merge keys an engine touches (documented in
README.md); every other list is replaced, as it is for lists without a patch strategy.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE = "application/merge-patch+json"
_REJECTED = "the server rejected our request due to an error in our request: "
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# (parent field, list field) -> merge key; parent None means "any parent".
_MERGE_KEYS: dict[tuple[str | None, str], str] = {
    (None, "containers"): "name",
    (None, "initContainers"): "name",
    (None, "ephemeralContainers"): "name",
    (None, "env"): "name",
    (None, "volumes"): "name",
    (None, "volumeMounts"): "mountPath",
    (None, "imagePullSecrets"): "name",
    (None, "conditions"): "type",
    (None, "ownerReferences"): "uid",
    (None, "podIPs"): "ip",
    (None, "hostIPs"): "ip",
    (None, "hostAliases"): "ip",
    (None, "addresses"): "type",
    ("spec", "ports"): "port",  # a Service's ports
    (None, "ports"): "containerPort",  # a container's ports
}
# Lists of scalars with patchStrategy "merge": the patch adds to them (set union).
_PRIMITIVE_MERGE = {"finalizers"}


def _merge_key(parent: str | None, field: str, kind: str) -> str | None:
    if field == "ports" and parent == "spec" and kind != "Service":
        return None
    return _MERGE_KEYS.get((parent, field)) or _MERGE_KEYS.get((None, field))


def strategic_merge_patch(target: Any, patch: Any, kind: str, parent: str | None = None) -> Any:
    """Strategic merge: maps merge, keyed lists merge by their key, `$patch` directives honored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            out[field] = [v for v in out.get(field) or [] if v not in value]
            continue
        if key.startswith("$setElementOrder/") or key == "$retainKeys":
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list):
            out[key] = _merge_list(out.get(key), value, key, parent, kind)
        else:
            out[key] = strategic_merge_patch(out.get(key), value, kind, key)
    return out


def _merge_list(
    current: Any, patch: list[Any], field: str, parent: str | None, kind: str
) -> list[Any]:
    if field in _PRIMITIVE_MERGE:
        base = list(current or [])
        return base + [v for v in patch if v not in base]
    key = _merge_key(parent, field, kind)
    if key is None or not all(isinstance(v, dict) for v in patch):
        return copy.deepcopy(patch)
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch if v.get("$patch") != "replace"]
    result = [copy.deepcopy(v) for v in current or []]
    for item in patch:
        if key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        idx = next(
            (i for i, old in enumerate(result)
             if isinstance(old, dict) and old.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                result.pop(idx)
            continue
        if idx is None:
            result.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            result[idx] = strategic_merge_patch(result[idx], item, kind, field)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for p in parts[:-1]:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise ApiError(422, _REJECTED
                                + f"doc is missing path: \"{path}\"")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, _REJECTED
                        + f"doc is missing path: \"{path}\"")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    value = _get(doc, path)
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        parent.pop(int(parts[-1]))
    return value


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, _REJECTED
                                + f"add operation index out of range: \"{path}\"")
    else:
        raise ApiError(422, f"doc is missing path: \"{path}\"")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 operations applied in order to a copy; a failed `test` is a 422."""
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid JSON patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise ApiError(422, _REJECTED
                                    + f"testing value {path} failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


def apply_patch(content_type: str, target: dict[str, Any], patch: Any, kind: str,
                custom: bool) -> Any:
    """Dispatch on the Content-Type the client sent; CRs refuse strategic merge (415)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise bad_request("json: cannot unmarshal array into Go value of type "
                          "map[string]interface {}")
    if ctype == MERGE:
        return merge_patch(target, patch)
    if ctype == STRATEGIC:
        if custom:
            raise ApiError(415, "the body of the request was in an unknown format - accepted media "
                                "types include: application/json-patch+json, "
                                "application/merge-patch+json, application/apply-patch+yaml")
        return strategic_merge_patch(target, patch, kind)
    raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                        f"include: {JSON_PATCH}, {MERGE}, {STRATEGIC}")
