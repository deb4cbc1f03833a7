"""Kubeflow Training Operator manifests (kubeflow.org/v1 PyTorchJob, TFJob) as TrainingJobs.

People arrive with manifests that already run on a cluster; converting them lets the
same file run on a laptop. Every problem is reported against the field of the manifest
the person wrote, never against the converted document they have not seen.

Mapping::

    PyTorchJob  Master -> chief, Worker -> worker; mode allreduce
    TFJob       Chief|Master -> chief, Worker, PS -> ps, Evaluator; mode ps if PS, else allreduce
    runPolicy   backoffLimit -> maxRestarts (each role), activeDeadlineSeconds,
                ttlSecondsAfterFinished, suspend, schedulingPolicy.{queue, priorityClass,
                minAvailable -> worker minReplicas}
    elasticPolicy.{minReplicas, maxReplicas, maxRestarts} -> worker (before backoffLimit)
    resources   requests, else limits, else 0 (as Kubernetes schedules a container)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tidemill.api.errors import FieldError, SpecError, from_validation_error
from tidemill.api.job import API_VERSION, KIND, TrainingJob, spec_field_names

KUBEFLOW_KINDS = ("PyTorchJob", "TFJob")
KUBEFLOW_API_VERSION = "kubeflow.org/v1"

_RESOURCE_KEYS = {"cpu": "cpu", "memory": "memory", "nvidia.com/gpu": "gpu"}


@dataclass(frozen=True)
class _Flavour:
    replica_specs: str
    roles: dict[str, str]
    """Kubeflow replica type -> tidemill role."""
    container: str
    """The container the operator treats as the training one, when a pod has several."""


_FLAVOURS = {
    "PyTorchJob": _Flavour(
        "pytorchReplicaSpecs", {"Master": "chief", "Worker": "worker"}, "pytorch"
    ),
    "TFJob": _Flavour(
        "tfReplicaSpecs",
        {
            "Chief": "chief",
            "Master": "chief",
            "Worker": "worker",
            "PS": "ps",
            "Evaluator": "evaluator",
        },
        "tensorflow",
    ),
}


def convert_kubeflow(document: dict[str, Any]) -> dict[str, Any]:
    """Return the TrainingJob document for a PyTorchJob or TFJob manifest.

    Raises SpecError with every problem found, each path naming the manifest's own field
    (``spec.pytorchReplicaSpecs.Worker.template.spec.containers[0].command``).
    """
    converter = _Converter(document)
    native = converter.convert()
    converter.check(native)
    if converter.errors:
        raise SpecError(converter.errors)
    return native


class _Converter:
    """Builds the native document while remembering where each native field came from."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.kind = str(document.get("kind"))
        self.flavour = _FLAVOURS[self.kind]
        self.specs_path = f"spec.{self.flavour.replica_specs}"
        self.errors: list[FieldError] = []
        self.origin: dict[str, str] = {"spec": self.specs_path}
        """Native dotted path -> manifest path, for reporting validation errors."""

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def mapping(self, value: Any, path: str, *, required: bool = False) -> dict[str, Any]:
        """The value as a mapping; {} (reported when required) if it is absent or empty."""
        if value is None or value == {}:
            if required:
                self.fail(path, "required field is missing" if value is None else "is empty")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        return value

    def convert(self) -> dict[str, Any]:
        api_version = self.document.get("apiVersion")
        if api_version != KUBEFLOW_API_VERSION:
            self.fail(
                "apiVersion",
                f"{api_version!r} is not supported for {self.kind}; use '{KUBEFLOW_API_VERSION}'",
            )
        spec = self.mapping(self.document.get("spec"), "spec", required=True)
        replica_specs = self.mapping(
            spec.get(self.flavour.replica_specs), self.specs_path, required=bool(spec)
        )
        roles = self.roles(replica_specs)
        native_spec: dict[str, Any] = {
            "mode": "ps" if "ps" in roles else "allreduce",
            "roles": roles,
        }
        if self.kind == "PyTorchJob":
            self.elastic_policy(
                self.mapping(spec.get("elasticPolicy"), "spec.elasticPolicy"), roles
            )
        self.run_policy(self.mapping(spec.get("runPolicy"), "spec.runPolicy"), native_spec)
        if self.kind == "TFJob" and spec.get("successPolicy"):
            native_spec["successPolicy"] = spec["successPolicy"]
            self.origin["spec.successPolicy"] = "spec.successPolicy"
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": self.metadata(),
            "spec": native_spec,
        }

    def metadata(self) -> dict[str, Any]:
        source = self.mapping(self.document.get("metadata"), "metadata", required=True)
        return {key: source[key] for key in ("name", "namespace", "labels") if key in source}

    def roles(self, replica_specs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        roles: dict[str, dict[str, Any]] = {}
        source_of: dict[str, str] = {}
        known = ", ".join(self.flavour.roles)
        for replica_type, replica_spec in replica_specs.items():
            path = f"{self.specs_path}.{replica_type}"
            role = self.flavour.roles.get(replica_type)
            if role is None:
                self.fail(path, f"unknown replica type {replica_type!r}; a {self.kind} has {known}")
                continue
            if role in source_of:
                self.fail(
                    path,
                    f"{source_of[role]} and {replica_type} both name the chief; keep one of them",
                )
                continue
            source_of[role] = replica_type
            roles[role] = self.role(role, self.mapping(replica_spec, path, required=True), path)
        return roles

    def role(self, role: str, replica_spec: dict[str, Any], path: str) -> dict[str, Any]:
        native_path = f"spec.roles.{role}"
        self.origin[native_path] = path
        native: dict[str, Any] = {"replicas": replica_spec.get("replicas", 1)}
        self.origin[f"{native_path}.replicas"] = f"{path}.replicas"
        if "restartPolicy" in replica_spec:
            native["restartPolicy"] = replica_spec["restartPolicy"]
            self.origin[f"{native_path}.restartPolicy"] = f"{path}.restartPolicy"
        # Until the container is reached, a missing command is the fault of whichever
        # enclosing part is missing; that part has been reported already.
        command = f"{native_path}.command"
        self.origin[command] = path
        if not replica_spec:
            return native
        self.origin[command] = f"{path}.template"
        template = self.mapping(replica_spec.get("template"), f"{path}.template", required=True)
        if not template:
            return native
        self.origin[command] = f"{path}.template.spec"
        pod = self.mapping(template.get("spec"), f"{path}.template.spec", required=True)
        if not pod:
            return native
        self.origin[command] = f"{path}.template.spec.containers"
        containers = pod.get("containers")
        if not isinstance(containers, list) or not containers:
            self.fail(f"{path}.template.spec.containers", "expected a list with one container")
            return native
        index = self.training_container(containers)
        container_path = f"{path}.template.spec.containers[{index}]"
        native.update(self.container(containers[index], container_path, native_path))
        return native

    def training_container(self, containers: list[Any]) -> int:
        """The operator trains in the container named 'pytorch'/'tensorflow', else the first."""
        for index, container in enumerate(containers):
            if isinstance(container, dict) and container.get("name") == self.flavour.container:
                return index
        return 0

    def container(self, value: Any, path: str, native_path: str) -> dict[str, Any]:
        self.origin[f"{native_path}.command"] = path
        container = self.mapping(value, path, required=True)
        if not container:
            return {}
        native: dict[str, Any] = {}
        self.origin[f"{native_path}.command"] = f"{path}.command"
        if "command" not in container:
            self.fail(
                f"{path}.command",
                "required: tidemill starts the process itself and cannot read an image's "
                "entrypoint; write it out, e.g. command: [python, train.py]",
            )
        for key in ("command", "args", "image", "workingDir"):
            if key in container:
                native[key] = container[key]
                self.origin[f"{native_path}.{key}"] = f"{path}.{key}"
        if "env" in container:
            native["env"] = self.env(container["env"], f"{path}.env")
            self.origin[f"{native_path}.env"] = f"{path}.env"
        resources = self.mapping(container.get("resources"), f"{path}.resources")
        native["resources"] = self.resources(resources, f"{path}.resources", native_path)
        return native

    def env(self, value: Any, path: str) -> Any:
        """Keep plain values; secrets and field refs have no meaning outside Kubernetes."""
        if not isinstance(value, list):
            return value
        kept = []
        for index, item in enumerate(value):
            if isinstance(item, dict) and "valueFrom" in item:
                self.fail(
                    f"{path}[{index}].valueFrom",
                    f"{item.get('name', '?')}: valueFrom (secrets, config maps, field refs) "
                    "is not supported; give a literal value",
                )
            else:
                kept.append(item)
        return kept

    def resources(self, resources: dict[str, Any], path: str, native_path: str) -> dict[str, Any]:
        """What Kubernetes would reserve: the request; a limit alone stands in for it;
        neither reserves nothing (not tidemill's own default of 1 cpu and 1Gi)."""
        requests = self.mapping(resources.get("requests"), f"{path}.requests")
        limits = self.mapping(resources.get("limits"), f"{path}.limits")
        native: dict[str, Any] = {}
        for key, native_key in _RESOURCE_KEYS.items():
            for section, amounts in (("requests", requests), ("limits", limits)):
                if key in amounts:
                    native[native_key] = amounts[key]
                    shown = f"[{key}]" if "." in key else f".{key}"
                    self.origin[f"{native_path}.resources.{native_key}"] = (
                        f"{path}.{section}{shown}"
                    )
                    break
            else:
                native[native_key] = 0
        return native

    def run_policy(self, policy: dict[str, Any], spec: dict[str, Any]) -> None:
        for key in ("activeDeadlineSeconds", "ttlSecondsAfterFinished", "suspend"):
            if key in policy:
                spec[key] = policy[key]
                self.origin[f"spec.{key}"] = f"spec.runPolicy.{key}"
        if "backoffLimit" in policy:
            for role, native in spec["roles"].items():
                if "maxRestarts" not in native:
                    native["maxRestarts"] = policy["backoffLimit"]
                    self.origin[f"spec.roles.{role}.maxRestarts"] = "spec.runPolicy.backoffLimit"
        path = "spec.runPolicy.schedulingPolicy"
        scheduling = self.mapping(policy.get("schedulingPolicy"), path)
        for key, native_key in (("queue", "queue"), ("priorityClass", "priorityClassName")):
            if key in scheduling:
                spec[native_key] = scheduling[key]
                self.origin[f"spec.{native_key}"] = f"{path}.{key}"
        if "minAvailable" in scheduling:
            self.min_available(scheduling["minAvailable"], f"{path}.minAvailable", spec["roles"])

    def min_available(self, value: Any, path: str, roles: dict[str, dict[str, Any]]) -> None:
        """A gang smaller than the job means workers beyond it may come and go."""
        counts = [native.get("replicas") for native in roles.values()]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(path, f"{value!r} is not a gang size; write a whole number of replicas >= 1")
            return
        total = sum(n for n in counts if isinstance(n, int))
        if value > total:
            self.fail(
                path,
                f"minAvailable={value} exceeds the {total} replica(s) the job declares, so it "
                f"could never start; use at most {total}",
            )
            return
        if value == total:
            return
        worker = roles.get("worker")
        spare = total - value
        if worker is None or worker["replicas"] < spare:
            fixed = total - (worker["replicas"] if worker else 0)
            self.fail(
                path,
                f"minAvailable={value} would leave out non-Worker replicas; only Workers can "
                f"be missing from the gang, so use at least {fixed}",
            )
            return
        low = worker["replicas"] - spare
        if worker.get("minReplicas", low) != low:
            self.fail(
                path,
                f"minAvailable={value} means {low} Worker(s) at least, but "
                f"elasticPolicy.minReplicas={worker['minReplicas']}; make them agree",
            )
            return
        worker["minReplicas"] = low
        self.origin["spec.roles.worker.minReplicas"] = path

    def elastic_policy(self, policy: dict[str, Any], roles: dict[str, dict[str, Any]]) -> None:
        if not policy:
            return
        worker = roles.get("worker")
        if worker is None:
            self.fail("spec.elasticPolicy", "scales the Worker replicas, but there is no Worker")
            return
        for key in ("minReplicas", "maxReplicas", "maxRestarts"):
            if key in policy:
                worker[key] = policy[key]
                self.origin[f"spec.roles.worker.{key}"] = f"spec.elasticPolicy.{key}"

    def check(self, native: dict[str, Any]) -> None:
        """Validate the native document and report what is wrong in the manifest's terms."""
        try:
            TrainingJob.model_validate(native)
        except ValidationError as exc:
            reported = [e.path for e in self.errors]
            for error in from_validation_error(exc, spec_field_names()).errors:
                path = self.manifest_path(error.path)
                if not any(_covers(seen, path) for seen in reported):
                    self.fail(path, error.message)

    def manifest_path(self, native_path: str) -> str:
        parts = native_path.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in self.origin:
                rest = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts[cut:])
                return self.origin[prefix] + rest
        return native_path


def _covers(reported: str, path: str) -> bool:
    return path == reported or path.startswith((f"{reported}.", f"{reported}["))


__all__ = ["KUBEFLOW_API_VERSION", "KUBEFLOW_KINDS", "convert_kubeflow"]
