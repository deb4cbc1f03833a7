"""CustomResourceDefinitions: which resources a CRD serves, and its structural schema at work.

A custom object goes through what apiextensions-apiserver does on every write: unknown fields are
pruned, non-nullable nulls dropped, defaults applied, then the openAPIV3Schema is enforced.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import jsonschema

from .errors import ApiError, invalid
from .resources import Resource
from .validation import Causes, subdomain_errors

CRD_GROUP = "apiextensions.k8s.io"


def _structural_errors(schema: Any, path: str) -> Causes:
    """Every node needs a type unless int-or-string or preserve-unknown-fields says otherwise."""
    if not isinstance(schema, dict):
        return [(path, "Invalid value: must be an object")]
    out: Causes = []
    loose = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if not schema.get("type") and not loose:
        out.append((f"{path}.type", "Required value: must not be empty for specified object "
                                    "fields"))
    if "additionalProperties" in schema and "properties" in schema:
        out.append((f"{path}.additionalProperties", "Forbidden: additionalProperties and "
                                                    "properties are mutual exclusive"))
    for name, sub in (schema.get("properties") or {}).items():
        if path.endswith("openAPIV3Schema") and name == "metadata":
            continue
        out += _structural_errors(sub, f"{path}.properties[{name}]")
    if isinstance(schema.get("items"), dict):
        out += _structural_errors(schema["items"], f"{path}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _structural_errors(schema["additionalProperties"], f"{path}.additionalProperties")
    return out


def crd_errors(crd: dict[str, Any]) -> Causes:
    """What CRD validation rejects: name/group/names mismatch, versions, missing schemas."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural = spec.get("group", ""), names.get("plural", "")
    out: Causes = []
    if not group:
        out.append(("spec.group", "Required value"))
    if not plural:
        out.append(("spec.names.plural", "Required value"))
    if not names.get("kind"):
        out.append(("spec.names.kind", "Required value"))
    name = crd.get("metadata", {}).get("name", "")
    if name != f"{plural}.{group}":
        out.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."'
                                     "+spec.group"))
    out += subdomain_errors(name, "metadata.name") if name else []
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        out.append(("spec.scope", f'Unsupported value: "{spec.get("scope", "")}": supported '
                                  'values: "Cluster", "Namespaced"'))
    versions = spec.get("versions") or []
    if not versions:
        out.append(("spec.versions", "Invalid value: must have exactly one version marked as "
                                     "storage version"))
    if sum(1 for v in versions if v.get("storage")) != 1:
        out.append(("spec.versions", "Invalid value: must have exactly one version marked as "
                                     "storage version"))
    for i, v in enumerate(versions):
        path = f"spec.versions[{i}].schema.openAPIV3Schema"
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            out.append((path, "Required value: schemas are required"))
            continue
        if schema.get("type") != "object":
            out.append((f"{path}.type", 'Invalid value: "": must be object at the root'))
        out += _structural_errors(schema, path)
    return out


def served_resources(crd: dict[str, Any]) -> list[Resource]:
    """One Resource per served version of the CRD."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for v in spec["versions"]:
        if not v.get("served", True):
            continue
        sub = v.get("subresources") or {}
        out.append(
            Resource(
                group=spec["group"],
                version=v["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec["scope"] == "Namespaced",
                has_status="status" in sub,
                custom=True,
                schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return out


def accept(crd: dict[str, Any]) -> None:
    """Fill the defaults and the status the apiextensions controllers write at once."""
    spec = crd["spec"]
    names = spec["names"]
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    for v in spec["versions"]:
        v.setdefault("served", True)
    spec.setdefault("conversion", {"strategy": "None"})
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    crd["status"] = {
        "acceptedNames": copy.deepcopy(names),
        "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
    }


# ---------------------------------------------------------------- the schema at work


def prune(value: Any, schema: dict[str, Any] | None) -> Any:
    """Drop fields the structural schema does not specify (x-kubernetes-preserve-unknown-fields
    keeps them), recursively."""
    if schema is None:
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        keep = schema.get("x-kubernetes-preserve-unknown-fields")
        out = {}
        for key, sub in value.items():
            if props is not None and key in props:
                out[key] = prune(sub, props[key])
            elif isinstance(addl, dict):
                out[key] = prune(sub, addl)
            elif keep or addl is True:
                out[key] = sub
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"]) for v in value]
    return value


def drop_nulls_and_default(value: Any, schema: dict[str, Any] | None) -> Any:
    """Remove nulls where `nullable` is not set, then apply `default`s (apiextensions order)."""
    if schema is None or not isinstance(value, dict | list):
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if not isinstance(items, dict):
            return value
        return [drop_nulls_and_default(v, items) for v in value]
    props = schema.get("properties") or {}
    addl = schema.get("additionalProperties")
    out = {}
    for key, sub in value.items():
        sub_schema = props.get(key) if key in props else addl if isinstance(addl, dict) else None
        if sub is None and sub_schema is not None and not sub_schema.get("nullable"):
            if "default" not in sub_schema:
                continue
            sub = copy.deepcopy(sub_schema["default"])
        out[key] = drop_nulls_and_default(sub, sub_schema)
    for key, sub_schema in props.items():
        if key not in out and isinstance(sub_schema, dict) and "default" in sub_schema:
            out[key] = drop_nulls_and_default(copy.deepcopy(sub_schema["default"]), sub_schema)
    return out


def to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 (Kubernetes flavour) to a Draft 4 JSON schema jsonschema can check."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "format", "default",
                                                        "example", "externalDocs"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        either = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
        out["allOf"] = [*out.get("allOf", []), either]
    if schema.get("nullable"):
        return {"anyOf": [{"type": "null"}, out]}
    return out


def _field_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    if error.validator == "required" and isinstance(error.validator_value, list):
        missing = [r for r in error.validator_value if isinstance(error.instance, dict)
                   and r not in error.instance]
        if missing:
            parts.append(missing[0])
    return ".".join(parts)


def _message(error: jsonschema.ValidationError, path: str) -> str:
    v = error.validator
    if v == "required":
        return "Required value"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f'Invalid value: "{_type_name(error.instance)}": {path} in body must be of type ' \
               f"{want}: \"{_type_name(error.instance)}\""
    if v == "enum":
        allowed = ", ".join(f'"{x}"' for x in error.validator_value)
        return f"Unsupported value: {_show(error.instance)}: supported values: {allowed}"
    if v in ("minimum", "exclusiveMinimum"):
        return f"Invalid value: {_show(error.instance)}: {path} in body should be greater than " \
               f"or equal to {error.validator_value}"
    if v in ("maximum", "exclusiveMaximum"):
        return f"Invalid value: {_show(error.instance)}: {path} in body should be less than or " \
               f"equal to {error.validator_value}"
    return f"Invalid value: {_show(error.instance)}: {error.message}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _show(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


class CustomSchema:
    """A CRD version's schema, ready to prune, default and validate custom objects."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        raw = copy.deepcopy(resource.schema or {"type": "object"})
        props = raw.get("properties") or {}
        props.pop("metadata", None)
        props.pop("apiVersion", None)
        props.pop("kind", None)
        self.schema = raw
        self.validator = jsonschema.Draft4Validator(to_json_schema(raw))

    def admit(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Return the object as stored (pruned, defaulted) or raise 422 Invalid."""
        head = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
        body = {k: v for k, v in obj.items() if k not in head}
        body = prune(body, self.schema)
        body = drop_nulls_and_default(body, self.schema)
        errors = sorted(self.validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            causes = []
            for e in errors:
                path = _field_path(e)
                causes.append((path, _message(e, path)))
            raise invalid(self.resource.kind, self.resource.group,
                          obj.get("metadata", {}).get("name", ""), causes)
        return {**head, **body}


def check_custom_head(obj: Any, resource: Resource) -> None:
    """A custom object's body must name its own apiVersion and kind (400 otherwise)."""
    if not isinstance(obj, dict):
        raise ApiError(400, "the object provided is not a JSON object")
    if not obj.get("kind"):
        raise ApiError(400, "Object 'Kind' is missing in '" + str(obj)[:200] + "'")
    if obj.get("apiVersion") != resource.api_version or obj.get("kind") != resource.kind:
        raise ApiError(400, f"the API version in the data ({obj.get('apiVersion')}) does not match "
                            f"the expected API version ({resource.api_version})"
                       if obj.get("apiVersion") != resource.api_version else
                       f"the kind in the data ({obj.get('kind')}) does not match the expected "
                       f"kind ({resource.kind})")
