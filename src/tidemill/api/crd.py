"""The TrainingJob as a Kubernetes resource: its CustomResourceDefinition and custom objects.

The CRD's ``spec`` schema is generated from :class:`~tidemill.api.job.TrainingJobSpec`, so
the job model stays the one definition of what a job may say; the generated schema is made
*structural* (what Kubernetes requires of a CRD): references inlined, one type per node,
``null`` unions turned into ``nullable``, quantities into int-or-string. Kubernetes then
refuses a malformed object at ``kubectl apply``; tidemill's loader still applies every rule
the schema cannot express (and the defaults) when it reads the object.

``python -m tidemill.api.crd > deploy/kubernetes/crd.yaml`` regenerates the checked-in file.
"""

from __future__ import annotations

import sys
from typing import Any, get_args

import yaml
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from tidemill.api._model import _DNS_LABEL
from tidemill.api.job import (
    CRD_API_VERSION,
    CRD_GROUP,
    CRD_VERSION,
    KIND,
    TrainingJob,
    TrainingJobSpec,
)
from tidemill.api.quantity import CpuCores, MemoryBytes, format_cpu
from tidemill.api.status import ConditionType, JobPhase

PLURAL = "trainingjobs"
CRD_NAME = f"{PLURAL}.{CRD_GROUP}"
REGENERATE = "python -m tidemill.api.crd > deploy/kubernetes/crd.yaml"

CPU_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*m?\s*$"
"""What :func:`~tidemill.api.quantity.parse_cpu_millis` reads: cores or millicores."""
MEMORY_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?\s*$"
"""What :func:`~tidemill.api.quantity.parse_memory_bytes` reads: bytes with a unit."""
_QUANTITY_PATTERNS = {
    get_args(CpuCores)[1].func: CPU_PATTERN,
    get_args(MemoryBytes)[1].func: MEMORY_PATTERN,
}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]

_BOUNDS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems")
_QUANTITY_KEYS = ("x-kubernetes-int-or-string", "anyOf")
_COPIED = ("type", "description", "enum", "format", "required", *_BOUNDS, *_QUANTITY_KEYS)
_EXCLUSIVE = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}
_NESTED = ("properties", "additionalProperties", "items")
_DROPPED = ("title", "default", "$defs")
"""``default``: tidemill's model applies defaults when it reads an object, so Kubernetes
stores the object as written and the defaults keep one home."""
_ORDER = (
    "type", "description", "nullable", "required", "enum", *_BOUNDS, "exclusiveMinimum",
    "exclusiveMaximum", "format", "x-kubernetes-int-or-string", "anyOf",
    "x-kubernetes-preserve-unknown-fields", *_NESTED,
)  # fmt: skip
"""Keys in the order a reader looks for them; the YAML keeps it."""


class _QuantityAware(GenerateJsonSchema):
    """Pydantic's schema of a parsed quantity is the parsed type (a float of cores); the
    object holds what people write, ``2`` or ``"500m"``, so say that instead."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> Any:
        pattern = _QUANTITY_PATTERNS.get(schema["function"]["function"])
        if pattern is None:
            return super().function_before_schema(schema)
        return {"x-kubernetes-int-or-string": True, "anyOf": _INT_OR_STRING, "pattern": pattern}


def spec_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``spec``, from the job model."""
    generated = TrainingJobSpec.model_json_schema(by_alias=True, schema_generator=_QuantityAware)
    spec = _structural(generated, generated.get("$defs", {}), "spec")
    _lenient_forms(spec)
    return spec


def _lenient_forms(spec: dict[str, Any]) -> None:
    """Add the forms the model's before-validators also read, which its JSON schema cannot
    show: Kubernetes would otherwise refuse an object that tidemill accepts as a file."""
    role = spec["properties"]["roles"]["additionalProperties"]["properties"]
    # A mapping or Kubernetes' list of {name, value}: one type per node cannot say both.
    role["env"] = {
        "description": "NAME: value, or a list of {name, value} as in a Pod",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    # A ps role with tables runs tidemill's PS server and has no command.
    spec["properties"]["roles"]["additionalProperties"]["required"].remove("command")
    data = spec["properties"]["data"]["properties"]
    kafka = data["stages"]["items"]["properties"]["sources"]["items"]["properties"]["kafka"]
    kafka["properties"]["topic"] = {"type": "string", "description": "one topic: topics: [X]"}
    kafka["required"].remove("topics")


def _structural(node: JsonSchemaValue, defs: dict[str, Any], path: str) -> dict[str, Any]:
    """One node of pydantic's JSON schema in the form Kubernetes accepts."""
    converted = _converted(node, defs, path)
    return {key: converted[key] for key in sorted(converted, key=_ORDER.index)}


def _converted(node: JsonSchemaValue, defs: dict[str, Any], path: str) -> dict[str, Any]:
    if "$ref" in node:
        target = _structural(defs[node["$ref"].rsplit("/", 1)[-1]], defs, path)
        return {**target, **_described(node)}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        return _union(node, defs, path)
    unknown = set(node) - {*_COPIED, *_NESTED, *_DROPPED, *_EXCLUSIVE, "const"}
    if unknown:
        raise ValueError(
            f"{path}: the model's JSON schema uses {sorted(unknown)}, which this converter does "
            "not translate; teach tidemill.api.crd the Kubernetes form of it"
        )
    out = {key: node[key] for key in _COPIED if key in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    for key, bound in _EXCLUSIVE.items():
        if key in node:  # JSON Schema's exclusive bound is a number; OpenAPI v3's a flag
            out[bound], out[key] = node[key], True
    if "properties" in node:
        out["properties"] = {
            name: _structural(child, defs, f"{path}.{name}")
            for name, child in node["properties"].items()
        }
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(
            node["additionalProperties"], defs, f"{path}.<key>"
        )
    if "items" in node:
        out["items"] = _structural(node["items"], defs, f"{path}[]")
    return out


def _union(node: JsonSchemaValue, defs: dict[str, Any], path: str) -> dict[str, Any]:
    """``X | None`` becomes X, nullable; a union of several types keeps any value."""
    variants = [variant for variant in node["anyOf"] if variant != {"type": "null"}]
    if len(variants) == 1:
        nullable = len(variants) < len(node["anyOf"])
        return {**_structural(variants[0], defs, path), **_described(node)} | (
            {"nullable": True} if nullable else {}
        )
    # A structural schema gives every node one type, and anyOf may not name types (only
    # int-or-string is special-cased), so e.g. the iceberg catalog (a name or a mapping of
    # properties) cannot be described; Kubernetes keeps it as written and tidemill's model
    # checks it when it reads the object.
    return {"x-kubernetes-preserve-unknown-fields": True, **_described(node)}


def _described(node: JsonSchemaValue) -> dict[str, Any]:
    return {"description": node["description"]} if "description" in node else {}


def status_schema() -> dict[str, Any]:
    """What the Kubernetes engine writes back to ``status``, for ``kubectl get`` and tools."""

    def typed(kind: str, description: str, **extra: Any) -> dict[str, Any]:
        return {"type": kind, "description": description, **extra}

    time = {"format": "date-time"}
    counts = {
        name: typed("integer", f"{name} replicas of the role", minimum=0)
        for name in ("desired", "active", "succeeded", "failed")
    }
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": typed("string", f"one of {', '.join(ConditionType)}"),
            "status": typed("string", "whether it holds", enum=["True", "False", "Unknown"]),
            "reason": typed("string", "a stable code, e.g. GangDoesNotFit"),
            "message": typed("string", "what happened, for people"),
            "lastTransitionTime": typed("string", "when status last changed", **time),
        },
    }
    return {
        "type": "object",
        "description": "observed by tidemill; written through the status subresource",
        "properties": {
            "phase": typed(
                "string", "where the job is in its life", enum=[phase.value for phase in JobPhase]
            ),
            "message": typed("string", "why the job is in this phase"),
            "uid": typed("string", "tidemill's id of the job (not metadata.uid)"),
            "queue": typed("string", "the queue the job was admitted to"),
            "conditions": typed(
                "array",
                "the job's conditions, one per type",
                items=condition,
                **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
            "replicas": typed(
                "object",
                "replica counts per role (worker, ps, chief, evaluator)",
                additionalProperties={"type": "object", "properties": counts},
            ),
            "startTime": typed("string", "when the first replica started", **time),
            "completionTime": typed("string", "when the job succeeded or failed", **time),
            "observedGeneration": typed(
                "integer", "the metadata.generation this status reflects", format="int64"
            ),
        },
    }


def trainingjob_crd() -> dict[str, Any]:
    """The CustomResourceDefinition ``trainingjobs.tidemill.io``."""
    schema = {
        "type": "object",
        "description": "A tidemill training job: roles of replicas, data stages, policies.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL.pattern}
                },
            },
            "spec": {"type": "object", "description": "what to run", **spec_schema()},
            "status": status_schema(),
        },
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Queue", "type": "string", "jsonPath": ".spec.queue"},
        {
            "name": "Workers",
            "type": "integer",
            "description": "active workers",
            "jsonPath": ".status.replicas.worker.active",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/part-of": "tidemill"}},
        "spec": {
            "group": CRD_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["tj"],
                "categories": ["all", "tidemill"],
            },
            "versions": [
                {
                    "name": CRD_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def to_custom_object(job: TrainingJob) -> dict[str, Any]:
    """The job as a ``tidemill.io/v1`` custom object that the CRD accepts.

    Like :meth:`TrainingJob.to_document`, but a fractional cpu is written as a quantity
    (``"250m"``): Kubernetes' int-or-string refuses a bare 0.25.
    """
    document = job.to_document()
    for role in document["spec"]["roles"].values():
        cpu = role["resources"]["cpu"]
        role["resources"]["cpu"] = int(cpu) if cpu == int(cpu) else format_cpu(round(cpu * 1000))
    return {**document, "apiVersion": CRD_API_VERSION}


def crd_yaml() -> str:
    """The CRD as the YAML checked in at deploy/kubernetes/crd.yaml."""
    header = (
        f"# Generated from tidemill's job model; do not edit. Regenerate with:\n#   {REGENERATE}\n"
    )
    return header + yaml.dump(trainingjob_crd(), Dumper=_PlainDumper, sort_keys=False, width=100)


class _PlainDumper(yaml.SafeDumper):
    """Writes a repeated value out again: anchors and aliases would puzzle a reader."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def main() -> None:
    """``python -m tidemill.api.crd``: print the CRD, as kubectl reads it."""
    sys.stdout.write(crd_yaml())


if __name__ == "__main__":
    main()
