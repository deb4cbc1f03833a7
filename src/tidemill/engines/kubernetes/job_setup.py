"""The objects a job's pods stand on, made once per job per server before its first pod:
its TrainingJob object (which owns the rest, so deleting it removes them), a headless
Service, a Secret with the job's credential, a NetworkPolicy and, under Volcano, a
PodGroup. Made again after a restart, each finds itself already there (409) and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidemill.api.job import TrainingJob
from tidemill.engines.base import LaunchSpec
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.manifests import (
    Owner,
    network_policy_manifest,
    podgroup_manifest,
    secret_manifest,
    service_manifest,
    trainingjob_object,
)
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.peer_proof import TOKEN_VAR


class JobSetup:
    """Makes each job's objects once and hands out the owner its pods name."""

    def __init__(self, cluster: Cluster, options: KubernetesOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.job_of: Callable[[str], TrainingJob | None] = lambda uid: None
        """job uid -> the job (set by the engine's ``attach``; makes TrainingJob objects
        for jobs submitted through tidemill)"""
        self._owners: dict[str, Owner] = {}

    def made(self, job_uid: str) -> Owner | None:
        """The owner of the job's objects, once this server has made or found them."""
        return self._owners.get(job_uid)

    def forget(self, job_uid: str) -> None:
        """Look for the job's objects again at its next launch (after a launch failed,
        its TrainingJob object may be gone)."""
        self._owners.pop(job_uid, None)

    def owner(self, spec: LaunchSpec) -> Owner:
        """The job's TrainingJob object (made if the job came through tidemill), then its
        Service, Secret, NetworkPolicy and PodGroup; once per job per server."""
        cached = self._owners.get(spec.job_uid)
        if cached is not None:
            return cached
        namespace, name = names.split_key(spec.job)
        obj = self._job_object(spec, namespace, name)
        owner = Owner(name, obj["metadata"]["uid"])
        children = [service_manifest(spec.job, spec.job_uid, owner, self.options)]
        token = spec.env.get(TOKEN_VAR)
        if token:
            children.append(secret_manifest(spec.job, spec.job_uid, token, owner, self.options))
        if self.options.network_policy:
            children.append(network_policy_manifest(spec.job, spec.job_uid, owner, self.options))
        if self.options.gang_scheduler == "volcano":
            members = int(spec.env.get("WORLD_SIZE", "1") or 1)
            children.append(podgroup_manifest(spec.job, spec.job_uid, members, owner, self.options))
        for child in children:
            self._create_child(namespace, child)
        self._owners[spec.job_uid] = owner
        return owner

    def _job_object(self, spec: LaunchSpec, namespace: str, name: str) -> dict[str, Any]:
        custom = self.cluster.custom
        try:
            obj: dict[str, Any] = self.cluster.call(
                f"read trainingjob {namespace}/{name}",
                custom.get_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                name,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            job = self.job_of(spec.job_uid)
            if job is None:
                raise RuntimeError(f"job {spec.job} ({spec.job_uid}) is not in the store") from exc
            created: dict[str, Any] = self.cluster.call(
                f"create trainingjob {namespace}/{name}",
                custom.create_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                namespace,
                names.PLURAL,
                trainingjob_object(job, spec.job_uid),
            )
            return created
        uid = (obj["metadata"].get("annotations") or {}).get(names.UID_ANNOTATION)
        if uid != spec.job_uid:
            raise RuntimeError(
                f"TrainingJob {namespace}/{name} belongs to tidemill job {uid or '(none yet)'}, "
                f"not {spec.job_uid}; waiting for it to be deleted or adopted"
            )
        return obj

    def _create_child(self, namespace: str, manifest: dict[str, Any]) -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        core, custom = self.cluster.core, self.cluster.custom
        methods: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "Service": (core.create_namespaced_service, (namespace, manifest)),
            "Secret": (core.create_namespaced_secret, (namespace, manifest)),
            "NetworkPolicy": (
                self.cluster.networking.create_namespaced_network_policy,
                (namespace, manifest),
            ),
            "PodGroup": (
                custom.create_namespaced_custom_object,
                ("scheduling.volcano.sh", "v1beta1", namespace, "podgroups", manifest),
            ),
        }
        method, args = methods[kind]
        try:
            self.cluster.call(f"create {kind} {namespace}/{name}", method, *args)
        except ApiException as exc:
            if exc.status != 409:
                raise
