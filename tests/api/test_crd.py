"""The TrainingJob CRD: generated from the job model, structural, checked in as generated,
and agreeing with tidemill's loader on every sample, example and broken object."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tidemill.api.crd import (
    CPU_PATTERN,
    MEMORY_PATTERN,
    REGENERATE,
    crd_yaml,
    main,
    to_custom_object,
    trainingjob_crd,
)
from tidemill.api.errors import SpecError
from tidemill.api.job import API_VERSION, CRD_API_VERSION, TrainingJob
from tidemill.api.loader import job_from_custom_object, job_from_document, load_job_text
from tidemill.api.quantity import parse_cpu_millis, parse_memory_bytes
from tidemill.api.status import JobPhase

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SAMPLES = sorted((DEPLOY / "samples").glob("*.yaml"))
NATIVE_EXAMPLES = sorted(ROOT.glob("examples/*/job.yaml"))
KUBEFLOW_EXAMPLES = sorted((ROOT / "examples" / "kubeflow").glob("*.yaml"))

_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_KEYS = {
    "type", "description", "nullable", "required", "enum", "format", "properties",
    "additionalProperties", "items", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "anyOf",
    "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip
_BOUND_TYPES = {
    "minimum": {"integer", "number"},
    "maximum": {"integer", "number"},
    "minLength": {"string"},
    "maxLength": {"string"},
    "pattern": {"string"},
    "minItems": {"array"},
    "maxItems": {"array"},
}
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Why ``node`` is not a structural schema Kubernetes would accept (empty when it is).

    The rules of apiextensions' structural schema check that a generated schema can break:
    one type per node (or int-or-string / preserve-unknown-fields), no references, no
    anyOf naming types beyond int-or-string, properties or additionalProperties (not both),
    items for arrays, bounds on the types they apply to, list maps keyed by required fields.
    """
    if not isinstance(node, dict):
        return [f"{path}: a schema must be a mapping, not {node!r}"]
    problems = [f"{path}: {key!r} is not allowed here" for key in sorted(set(node) - _KEYS)]
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    kind = node.get("type")
    if int_or_string and kind is not None:
        problems.append(f"{path}: int-or-string takes no type")
    if kind is None and not (int_or_string or preserve):
        problems.append(f"{path}: no type (and neither int-or-string nor preserve-unknown-fields)")
    if kind is not None and kind not in _TYPES:
        problems.append(f"{path}: type {kind!r} is not one of {sorted(_TYPES)}")
    for flag in ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"):
        if flag in node and node[flag] is not True:
            problems.append(f"{path}: {flag} may only be true")
    if "anyOf" in node and not (int_or_string and node["anyOf"] == _INT_OR_STRING):
        problems.append(f"{path}: anyOf only as int-or-string's [integer, string]")
    effective = {kind} if kind else ({"integer", "string"} if int_or_string else _TYPES)
    for bound, types in _BOUND_TYPES.items():
        if bound in node and not effective & types:
            problems.append(f"{path}: {bound} does not apply to type {kind}")
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if flag in node and (node[flag] is not True or bound not in node):
            problems.append(f"{path}: {flag} must be true beside {bound}")
    if "nullable" in node and node["nullable"] is not True:
        problems.append(f"{path}: nullable may only be true")
    properties = node.get("properties", {})
    extra = node.get("additionalProperties")
    if "properties" in node and extra is not None:
        problems.append(f"{path}: properties and additionalProperties together")
    if extra is not None and not isinstance(extra, dict):
        problems.append(f"{path}: additionalProperties must be a schema, not {extra!r}")
    if kind == "object" and "properties" not in node and extra is None and not preserve:
        problems.append(f"{path}: an object needs properties, additionalProperties or preserve")
    if kind != "object" and (properties or extra is not None):
        problems.append(f"{path}: properties on a {kind}")
    if kind == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{path}: an array needs items")
    if "items" in node and kind != "array":
        problems.append(f"{path}: items on a {kind}")
    missing = set(node.get("required", [])) - set(properties)
    if missing:
        problems.append(f"{path}: required {sorted(missing)} are not properties")
    for value in node.get("enum", []):
        expected = {"string": str, "integer": int, "number": int | float, "boolean": bool}
        if kind in expected and not isinstance(value, expected[kind]):
            problems.append(f"{path}: enum value {value!r} is not a {kind}")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items", {})
        keys = node.get("x-kubernetes-list-map-keys", [])
        if item.get("type") != "object" or not keys or set(keys) - set(item.get("required", [])):
            problems.append(f"{path}: a list map needs object items with required keys")
    for name, child in properties.items():
        problems += structural_problems(child, f"{path}.{name}")
    if isinstance(extra, dict):
        problems += structural_problems(extra, f"{path}.<key>")
    if isinstance(node.get("items"), dict):
        problems += structural_problems(node["items"], f"{path}[]")
    return problems


def as_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as JSON Schema draft 4, validating what the API server would.

    ``nullable`` becomes a null type; int-or-string an anyOf; objects with properties are
    closed, as pruning and kubectl's strict field validation make them.
    """
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes")}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = _INT_OR_STRING
    if "properties" in node:
        out["properties"] = {name: as_json_schema(sub) for name, sub in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = as_json_schema(node["additionalProperties"])
    if "items" in node:
        out["items"] = as_json_schema(node["items"])
    return out


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = trainingjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def crd_validator() -> jsonschema.Draft4Validator:
    schema = as_json_schema(crd_schema())
    schema["properties"]["metadata"].pop("additionalProperties")  # ObjectMeta: Kubernetes' own
    return jsonschema.Draft4Validator(schema)


def crd_errors(obj: dict[str, Any]) -> dict[str, str]:
    """``path: message`` of every way ``obj`` breaks the CRD schema."""
    return {
        ".".join(str(part) for part in error.absolute_path): error.message
        for error in crd_validator().iter_errors(obj)
    }


def as_applied(text: str) -> dict[str, Any]:
    """A YAML document as kubectl sends it: JSON, so keys are text and times are strings."""
    document = yaml.safe_load(text)
    loaded: dict[str, Any] = json.loads(json.dumps(document, default=lambda d: d.isoformat()))
    return loaded


def custom_object(path: Path) -> dict[str, Any]:
    """A tidemill job file as the custom object ``kubectl apply`` would send."""
    return {**as_applied(path.read_text()), "apiVersion": CRD_API_VERSION}


def test_the_checked_in_crd_is_the_generated_one() -> None:
    checked_in = (DEPLOY / "crd.yaml").read_text()
    assert checked_in == crd_yaml(), f"deploy/kubernetes/crd.yaml is stale; run: {REGENERATE}"


def test_the_module_prints_the_crd(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    printed = capsys.readouterr().out
    assert printed == crd_yaml()
    assert REGENERATE in printed.splitlines()[1]
    assert yaml.safe_load(printed) == trainingjob_crd()


def test_the_crd_names_the_resource_as_kubectl_users_expect() -> None:
    crd = trainingjob_crd()
    assert crd["metadata"]["name"] == "trainingjobs.tidemill.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("tidemill.io", "Namespaced")
    assert spec["names"] == {
        "kind": "TrainingJob",
        "listKind": "TrainingJobList",
        "plural": "trainingjobs",
        "singular": "trainingjob",
        "shortNames": ["tj"],
        "categories": ["all", "tidemill"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ("string", ".status.phase"),
        "Queue": ("string", ".spec.queue"),
        "Workers": ("integer", ".status.replicas.worker.active"),
        "Age": ("date", ".metadata.creationTimestamp"),
    }


def test_the_crd_schema_is_structural() -> None:
    assert structural_problems(crd_schema()) == []


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"$ref": "#/$defs/RoleSpec"}, "'$ref' is not allowed"),
        ({"description": "untyped"}, "no type"),
        ({"type": "object", "properties": {}, "additionalProperties": {}}, "together"),
        ({"type": "object", "additionalProperties": False}, "must be a schema"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "anyOf only as int-or-string"),
        ({"type": "string", "const": "a"}, "'const' is not allowed"),
        ({"type": "number", "minimum": 0, "exclusiveMinimum": 0}, "must be true"),
        ({"type": "array"}, "an array needs items"),
        ({"type": "object", "required": ["a"], "properties": {}}, "are not properties"),
        ({"type": "string", "minimum": 1}, "does not apply"),
    ],
)
def test_the_structural_checker_catches_what_kubernetes_refuses(
    schema: dict[str, Any], problem: str
) -> None:
    assert any(problem in line for line in structural_problems(schema)), schema


def test_the_spec_schema_follows_the_model() -> None:
    spec = crd_schema()["properties"]["spec"]
    assert set(spec["properties"]) == {
        field.alias
        for field in TrainingJob.model_fields["spec"].annotation.model_fields.values()  # type: ignore[union-attr]
    }
    assert spec["required"] == ["roles"]
    role = spec["properties"]["roles"]["additionalProperties"]
    assert role["properties"]["replicas"] == {"type": "integer", "minimum": 0, "maximum": 10000}
    assert role["properties"]["restartPolicy"]["enum"] == [
        "Never",
        "OnFailure",
        "Always",
        "ExitCode",
    ]
    assert role["properties"]["image"]["nullable"] is True
    cpu = role["properties"]["resources"]["properties"]["cpu"]
    assert cpu["x-kubernetes-int-or-string"] is True and "type" not in cpu
    assert cpu["description"] == "CPU cores; '500m' means 0.5"
    backoff = spec["properties"]["restartBackoffSeconds"]
    assert (backoff["minimum"], backoff["exclusiveMinimum"], backoff["maximum"]) == (0, True, 300)


def test_the_status_schema_carries_phases_conditions_and_replica_counts() -> None:
    status = crd_schema()["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [phase.value for phase in JobPhase]
    assert set(status) == {
        "phase", "message", "uid", "queue", "conditions", "replicas", "startTime",
        "completionTime", "observedGeneration",
    }  # fmt: skip
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime",
    }  # fmt: skip
    counts = status["replicas"]["additionalProperties"]["properties"]
    assert {name: field["type"] for name, field in counts.items()} == dict.fromkeys(
        ("desired", "active", "succeeded", "failed"), "integer"
    )


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_fits_the_crd_and_loads(path: Path) -> None:
    obj = as_applied(path.read_text())
    assert obj["apiVersion"] == CRD_API_VERSION
    assert crd_errors(obj) == {}
    job = job_from_custom_object(obj)
    assert job == load_job_text(path.read_text(), str(path))


def test_there_are_samples_of_ddp_and_elastic_jobs() -> None:
    jobs = [job_from_custom_object(as_applied(path.read_text())) for path in SAMPLES]
    assert 2 <= len(jobs) <= 4
    assert any(role.is_elastic for job in jobs for role in job.spec.roles.values())
    assert all(role.image for job in jobs for role in job.spec.roles.values())


@pytest.mark.parametrize("path", NATIVE_EXAMPLES, ids=lambda p: p.parent.name)
def test_every_example_job_file_as_a_custom_object_fits_the_crd_and_loads(path: Path) -> None:
    obj = custom_object(path)
    assert crd_errors(obj) == {}
    assert job_from_document(obj) == load_job_text(path.read_text(), str(path))


@pytest.mark.parametrize("path", [*NATIVE_EXAMPLES, *KUBEFLOW_EXAMPLES], ids=lambda p: p.name)
def test_a_job_written_as_a_custom_object_fits_the_crd_and_reads_back_the_same(
    path: Path,
) -> None:
    job = load_job_text(path.read_text(), str(path))
    obj = to_custom_object(job)
    assert crd_errors(obj) == {}
    assert job_from_custom_object(obj) == job


def test_a_fractional_cpu_is_written_as_a_quantity_kubernetes_accepts() -> None:
    job = job_with(cpu="250m")
    obj = to_custom_object(job)
    assert obj["spec"]["roles"]["worker"]["resources"]["cpu"] == "250m"
    assert job.to_document()["spec"]["roles"]["worker"]["resources"]["cpu"] == 0.25
    assert crd_errors({**obj, "spec": job.to_document()["spec"]}) != {}  # why it matters


def job_with(**resources: Any) -> TrainingJob:
    return job_from_document(
        {
            "apiVersion": CRD_API_VERSION,
            "kind": "TrainingJob",
            "metadata": {"name": "small"},
            "spec": {"roles": {"worker": {"command": ["python"], "resources": resources}}},
        }
    )


BAD_OBJECTS = [
    ("spec.roles.worker.replicas", lambda role: role.update(replicas=-1)),
    ("spec.roles.worker.restartPolicy", lambda role: role.update(restartPolicy="Sometimes")),
    ("spec.roles.worker.resources.cpu", lambda role: role["resources"].update(cpu="lots")),
    ("spec.roles.worker.resources.memory", lambda role: role["resources"].update(memory="1 GB")),
    ("spec.roles.worker.image", lambda role: role.update(image=7)),
    ("spec.roles.worker.maxRestarts", lambda role: role.update(maxRestarts=-1)),
]


@pytest.mark.parametrize(("field", "breaks"), BAD_OBJECTS, ids=[f for f, _ in BAD_OBJECTS])
def test_a_broken_object_fails_the_crd_and_the_loader_at_the_same_field(
    field: str, breaks: Any
) -> None:
    obj = as_applied((DEPLOY / "samples" / "digits-ddp.yaml").read_text())
    broken = copy.deepcopy(obj)
    breaks(broken["spec"]["roles"]["worker"])
    assert list(crd_errors(broken)) == [field]
    with pytest.raises(SpecError) as refused:
        job_from_custom_object(broken)
    assert [error.path for error in refused.value.errors] == [field]


def test_an_unknown_field_is_refused_by_both() -> None:
    obj = as_applied((DEPLOY / "samples" / "digits-ddp.yaml").read_text())
    obj["spec"]["roles"]["worker"]["replica"] = 3
    assert crd_errors(obj) == {
        "spec.roles.worker": "Additional properties are not allowed ('replica' was unexpected)"
    }
    with pytest.raises(SpecError, match=re.escape("spec.roles.worker.replica")):
        job_from_custom_object(obj)


@pytest.mark.parametrize(
    ("text", "pattern", "parse"),
    [
        *((t, CPU_PATTERN, parse_cpu_millis) for t in ("1", "0.5", "500m", " 2 ", "1.5", "12")),
        *((t, CPU_PATTERN, parse_cpu_millis) for t in ("lots", "1e3", "-1", ".5", "1.", "2k")),
        *((t, MEMORY_PATTERN, parse_memory_bytes) for t in ("1Gi", "512Mi", "2G", "100", "1.5Ti")),
        *((t, MEMORY_PATTERN, parse_memory_bytes) for t in ("1gi", "1Ei", "1 GB", "-1Mi", "Gi")),
    ],
)
def test_quantity_patterns_accept_what_the_parsers_accept(
    text: str, pattern: str, parse: Any
) -> None:
    try:
        parse(text)
        parsed = True
    except ValueError:
        parsed = False
    assert bool(re.match(pattern, text)) == parsed


SERVER_FIELDS: dict[str, dict[str, Any]] = {
    "metadata": {
        "uid": "6c9f1a52-0d1b-4f7e-9a51-3f0f0b5a9c11",
        "resourceVersion": "48213",
        "generation": 2,
        "creationTimestamp": "2026-11-02T09:14:03Z",
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update"}],
        "finalizers": ["tidemill.io/pods"],
    },
    "status": {"phase": "Running", "uid": "j-42", "replicas": {"worker": {"active": 2}}},
}


def test_a_custom_object_read_back_from_the_api_loads_as_the_job_applied() -> None:
    applied = as_applied((DEPLOY / "samples" / "digits-ddp.yaml").read_text())
    read_back = {
        **applied,
        "metadata": {**applied["metadata"], **SERVER_FIELDS["metadata"]},
        "status": SERVER_FIELDS["status"],
    }
    assert crd_errors(read_back) == {}
    job = job_from_custom_object(read_back)
    assert job == job_from_document(applied)
    assert job.metadata.labels == {"team": "vision"}
    assert job.to_document()["apiVersion"] == API_VERSION


def test_a_job_file_in_tidemill_form_keeps_refusing_server_fields() -> None:
    document = custom_object(ROOT / "examples" / "digits_ddp" / "job.yaml")
    document.update(apiVersion=API_VERSION, status=SERVER_FIELDS["status"])
    with pytest.raises(SpecError, match="status"):
        job_from_document(document)


def test_only_a_tidemill_io_trainingjob_is_a_custom_object() -> None:
    document = as_applied((ROOT / "examples" / "digits_ddp" / "job.yaml").read_text())
    with pytest.raises(SpecError) as refused:
        job_from_custom_object({**document, "kind": "PyTorchJob"})
    assert [error.path for error in refused.value.errors] == ["apiVersion", "kind"]


def test_both_api_versions_read_into_the_same_job() -> None:
    text = (ROOT / "examples" / "elastic" / "job.yaml").read_text()
    native = load_job_text(text)
    custom = load_job_text(
        text.replace(f"apiVersion: {API_VERSION}", f"apiVersion: {CRD_API_VERSION}")
    )
    assert native == custom
    assert custom.to_document()["apiVersion"] == API_VERSION
    with pytest.raises(
        SpecError, match=re.escape("'tidemill.io/v2' is not supported; use 'tidemill/v1'")
    ):
        load_job_text(text.replace(f"apiVersion: {API_VERSION}", "apiVersion: tidemill.io/v2"))
