"""Small helpers shared by the emulator's tests: clients, manifests, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config

from . import KubeEmulator

TRAININGJOB_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "trainingjobs.tidemill.io"},
    "spec": {
        "group": "tidemill.io",
        "scope": "Namespaced",
        "names": {"plural": "trainingjobs", "singular": "trainingjob", "kind": "TrainingJob"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "subresources": {"status": {}},
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "required": ["replicas"], "properties": {
                        "replicas": {"type": "integer", "minimum": 1},
                        "image": {"type": "string"},
                        "queue": {"type": "string", "nullable": True},
                        "port": {"x-kubernetes-int-or-string": True},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        "mode": {"type": "string", "enum": ["ps", "allreduce"],
                                 "default": "allreduce"},
                    }},
                    "status": {"type": "object", "properties": {
                        "phase": {"type": "string"},
                    }},
                },
            }},
        }],
    },
}


def api(kube: KubeEmulator) -> client.ApiClient:
    """An ApiClient built from the emulator's kubeconfig, as an engine would build it."""
    path = getattr(kube, "kubeconfig", None) or kube.write_kubeconfig(kube.folder + "/kubeconfig")
    return config.new_client_from_config(config_file=path)


def pod(name: str, argv: list[str], **spec: Any) -> dict[str, Any]:
    """A one-container pod running argv with restartPolicy Never."""
    labels = spec.pop("labels", None)
    env = spec.pop("env", None)
    container: dict[str, Any] = {"name": "main", "image": spec.pop("image", "python:3.11"),
                                 "command": argv}
    if env:
        container["env"] = env
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def bind(v1: client.CoreV1Api, ns: str, name: str, node: str) -> None:
    """POST pods/binding (the Status answer does not deserialize into V1Binding)."""
    body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    v1.create_namespaced_pod_binding(name, ns, body, _preload_content=False)


def until(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll until check() is truthy; its value, or AssertionError after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(every)


def phase(v1: client.CoreV1Api, ns: str, name: str) -> str | None:
    """The pod's phase, None once it is gone."""
    try:
        return v1.read_namespaced_pod(name, ns).status.phase
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
