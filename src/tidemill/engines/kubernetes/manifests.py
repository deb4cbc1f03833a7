"""The exact objects the Kubernetes engine creates, built by pure functions.

``tidemill manifests JOB.yaml`` prints them and tests validate them against the
official Kubernetes schemas, so what is shown is what runs. Every child of a job
(pods, its Service, its Secret, its NetworkPolicy, a PodGroup) is owned by the job's
TrainingJob object: deleting that object garbage-collects them all.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tidemill.api.crd import to_custom_object
from tidemill.api.job import TrainingJob
from tidemill.api.ps import PS_SERVER_MODULE
from tidemill.api.topology import format_cpu_list
from tidemill.engines.base import LaunchSpec
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.options import GPU_RESOURCE, KubernetesOptions
from tidemill.peer_proof import TOKEN_VAR

Manifest = dict[str, Any]
MASTER_ROLE = "master"
MASTER_ARGV = ("python", "-m", "tidemill.master")
DROPPED_VARS = frozenset({"CUDA_VISIBLE_DEVICES"})
"""Set by the device plugin in a pod: tidemill's device ids are the node's, not the pod's."""
TERMINATION_GRACE_S = 30
"""How long a pod has between SIGTERM and SIGKILL when it is deleted without a grace:
an elastic worker leaves at its next step boundary within it."""
POD_VARS = {
    "TIDEMILL_POD_NAME": "metadata.name",
    "TIDEMILL_POD_IP": "status.podIP",
    "TIDEMILL_NODE": "spec.nodeName",
}
"""Downward-API variables every pod gets, for its logs and diagnosis."""


@dataclass(frozen=True)
class Owner:
    """The TrainingJob object that owns a job's children."""

    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def job_labels(job: str, job_uid: str, options: KubernetesOptions) -> dict[str, str]:
    return {
        **options.labels,
        names.MANAGED_BY: "tidemill",
        names.JOB_LABEL: names.label_value(names.split_key(job)[1]),
        names.UID_LABEL: names.label_value(job_uid),
    }


def _metadata(
    name: str, job: str, job_uid: str, owner: Owner, options: KubernetesOptions
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": names.split_key(job)[0],
        "labels": job_labels(job, job_uid, options),
        "ownerReferences": [owner.reference()],
    }


def service_manifest(job: str, job_uid: str, owner: Owner, options: KubernetesOptions) -> Manifest:
    """The job's headless Service: DNS names for every pod, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(names.service_name(job), job, job_uid, owner, options),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.UID_LABEL: names.label_value(job_uid)},
        },
    }


def secret_manifest(
    job: str, job_uid: str, token: str, owner: Owner, options: KubernetesOptions
) -> Manifest:
    """The job's own credential, read by its pods as ``TIDEMILL_TOKEN``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(names.secret_name(job), job, job_uid, owner, options),
        "type": "Opaque",
        "stringData": {names.TOKEN_KEY: token},
    }


def network_policy_manifest(
    job: str, job_uid: str, owner: Owner, options: KubernetesOptions
) -> Manifest:
    """The job's pods accept connections only from pods of the same job.

    PyTorch's rendezvous store authenticates no peer, and the job master and parameter
    servers ask for the job's proof only with auth on (:mod:`tidemill.peer_proof`), so
    without this any pod of the cluster, another tenant's included, could join the job's
    group, read its embeddings or push gradients into them. Policies add up:
    one that a cluster's administrator wrote (monitoring, say) still lets its traffic in.
    Egress is left alone (the master reaches the server, workers their data)."""
    same_job = {"matchLabels": {names.UID_LABEL: names.label_value(job_uid)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(names.service_name(job), job, job_uid, owner, options),
        "spec": {
            "podSelector": same_job,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": same_job}]}],
        },
    }


def podgroup_manifest(
    job: str, job_uid: str, min_member: int, owner: Owner, options: KubernetesOptions
) -> Manifest:
    """Volcano's gang: only for ``--gang-scheduler volcano`` (tidemill binds gangs itself)."""
    return {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": _metadata(names.service_name(job), job, job_uid, owner, options),
        "spec": {"minMember": min_member},
    }


def quantity_cpu(cores: float) -> str:
    """Cores as a Kubernetes quantity.

    >>> quantity_cpu(0.5), quantity_cpu(2)
    ('500m', '2')
    """
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def gpu_resources(gpus: float, options: KubernetesOptions) -> dict[str, str]:
    """The extended resources of ``gpus`` devices, or of a share of one (see options).

    >>> gpu_resources(0.25, KubernetesOptions())
    {'nvidia.com/gpu': '1', 'nvidia.com/gpucores': '25', 'nvidia.com/gpumem-percentage': '25'}
    """
    if gpus <= 0:
        return {}
    if gpus >= 1:
        return {GPU_RESOURCE: str(int(gpus))}
    if options.gpu_sharing == "hami":
        percent = str(round(gpus * 100))
        return {
            GPU_RESOURCE: "1",
            "nvidia.com/gpucores": percent,
            "nvidia.com/gpumem-percentage": percent,
        }
    if options.gpu_sharing == "time-slicing":
        return {f"{GPU_RESOURCE}.shared": "1"}
    raise ValueError(
        f"a share of a GPU ({gpus:g}) needs a sharing device plugin; start the server with "
        "--gpu-sharing hami or time-slicing"
    )


def container_resources(spec: LaunchSpec, options: KubernetesOptions) -> dict[str, Any]:
    """Requests and limits from the role (equal: the pod is Guaranteed, as the
    scheduler counted it); the master's are small and fixed."""
    if spec.role == MASTER_ROLE:
        amounts = {"cpu": options.master_cpu, "memory": options.master_memory}
        return {"requests": dict(amounts), "limits": {"memory": options.master_memory}}
    amounts = {}
    if spec.cpu > 0:
        amounts["cpu"] = quantity_cpu(spec.cpu)
    if spec.memory_bytes > 0:
        amounts["memory"] = str(spec.memory_bytes)
    devices = gpu_resources(spec.gpus, options)
    extended = {name: str(amount) for name, amount in spec.extended if amount > 0}
    return {
        "requests": {**amounts, **devices, **extended},
        "limits": {**amounts, **devices, **extended},
    }


def container_env(spec: LaunchSpec) -> list[dict[str, Any]]:
    """``spec.env`` for a pod: the job token from the job's Secret, ``LOCAL_RANK`` 0 (a pod
    is its own machine), the master told to listen on its pod's address."""
    env: dict[str, str] = {k: v for k, v in spec.env.items() if k not in DROPPED_VARS}
    if "LOCAL_RANK" in env:
        env["LOCAL_RANK"] = "0"
    if spec.role == MASTER_ROLE:
        env["TIDEMILL_MASTER_HOST"] = names.replica_dns(spec.job, spec.role, spec.index)
        env["TIDEMILL_MASTER_BIND"] = "0.0.0.0"
    items: list[dict[str, Any]] = []
    for name, value in sorted(env.items()):
        if name == TOKEN_VAR:
            ref = {"name": names.secret_name(spec.job), "key": names.TOKEN_KEY}
            items.append({"name": name, "valueFrom": {"secretKeyRef": ref}})
        else:
            items.append({"name": name, "value": value})
    for name, path in POD_VARS.items():
        items.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    return items


def pod_labels(spec: LaunchSpec, options: KubernetesOptions) -> dict[str, str]:
    return {
        **job_labels(spec.job, spec.job_uid, options),
        names.ROLE_LABEL: names.label_value(spec.role),
        names.INDEX_LABEL: str(spec.index),
        names.LAUNCH_LABEL: names.label_value(spec.launch_id),
    }


def _in_image(argv: tuple[str, ...]) -> tuple[str, ...]:
    """tidemill's own modules (``python -m tidemill.ps``) run with the image's python,
    not with the server's interpreter path."""
    if argv[:1] == (sys.executable,) and argv[1:3] == ("-m", PS_SERVER_MODULE):
        return ("python", *argv[1:])
    return argv


def pod_manifest(spec: LaunchSpec, owner: Owner, options: KubernetesOptions) -> Manifest:
    """One replica's pod, unbound: tidemill binds it to ``spec.node`` (or Volcano does)."""
    image = spec.image or options.default_image
    if not image:
        raise ValueError(
            f"spec.roles.{spec.role}.image: the Kubernetes engine needs an image; set it "
            "or start the server with --default-image"
        )
    argv = list(MASTER_ARGV if spec.role == MASTER_ROLE else _in_image(spec.argv))
    container: dict[str, Any] = {
        "name": names.dns_label(spec.role),
        "image": image,
        "imagePullPolicy": options.image_pull_policy,
        "command": argv,
        "env": container_env(spec),
        "resources": container_resources(spec, options),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.working_dir:
        container["workingDir"] = spec.working_dir
    metadata = _metadata(
        names.pod_name(spec.job, spec.role, spec.index, spec.launch_id),
        spec.job,
        spec.job_uid,
        owner,
        options,
    )
    metadata["labels"] = pod_labels(spec, options)
    metadata["annotations"] = {
        "tidemill.io/job": spec.job,
        "tidemill.io/attempt": str(spec.attempt),
    }
    if spec.cpu_ids:
        metadata["annotations"][names.CPUSET_ANNOTATION] = format_cpu_list(spec.cpu_ids)
    volcano = options.gang_scheduler == "volcano"
    if volcano:
        metadata["annotations"][names.VOLCANO_GROUP_ANNOTATION] = names.service_name(spec.job)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "schedulerName": "volcano" if volcano else names.SCHEDULER_NAME,
            "hostname": names.hostname(spec.job, spec.role, spec.index),
            "subdomain": names.service_name(spec.job),
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
            "containers": [container],
        },
    }


def binding_manifest(pod: str, namespace: str, node: str) -> Manifest:
    """What ``pods/binding`` takes: the pod goes to ``node``, as any scheduler binds."""
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def trainingjob_object(job: TrainingJob, uid: str) -> Manifest:
    """The TrainingJob object of a job submitted through tidemill, marked with its uid."""
    obj = to_custom_object(job)
    metadata = dict(obj.get("metadata") or {})
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        names.UID_ANNOTATION: uid,
        names.SUSPEND_ANNOTATION: names.flag(job.spec.suspend),
    }
    return {**obj, "metadata": metadata}
