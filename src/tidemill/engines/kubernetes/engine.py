"""The Kubernetes engine: every replica a pod, placed by tidemill's scheduler.

A launch makes the job's objects once (its TrainingJob object, which owns the rest; a
headless Service; a Secret with the job's credential; a NetworkPolicy; a PodGroup under
Volcano: see :mod:`.job_setup`), then the pod (``schedulerName: tidemill``, unbound),
then binds it through ``pods/binding`` to the node the scheduler chose.
:meth:`launch_gang` creates every pod of a gang before binding any and deletes them all
if one fails, so no gang ever holds part of its nodes.

Pods are observed from an informer's copy (no API call per replica per cycle). A pod
that cannot start (image pull, bad config) or was evicted or lost with its node is a
lost replica: its restart policy decides, as for a crashed process.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidemill.api.checkpoint import is_url
from tidemill.api.cluster import NodeSpec
from tidemill.api.job import TrainingJob
from tidemill.engines.base import (
    LaunchPlan,
    LaunchRefused,
    LaunchSpec,
    Observation,
    PlacementLost,
    ReplicaHandle,
)
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.informer import Informer
from tidemill.engines.kubernetes.inventory import is_ours, node_specs
from tidemill.engines.kubernetes.job_objects import JobControl, JobObjects
from tidemill.engines.kubernetes.job_setup import JobSetup
from tidemill.engines.kubernetes.manifests import (
    TERMINATION_GRACE_S,
    Owner,
    binding_manifest,
    pod_manifest,
)
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.engines.kubernetes.pod_exec import PodCommand, pod_stacks
from tidemill.engines.kubernetes.pod_logs import PodLogs
from tidemill.engines.kubernetes.pod_metrics import PodMetrics
from tidemill.engines.replica_exec import ReplicaCommand
from tidemill.engines.stacks import StackDump
from tidemill.engines.usage import ReplicaUsage, Watched

log = logging.getLogger(__name__)

STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)
"""Waiting reasons of a container that will not start by itself."""
PORTS = (20000, 32000)
"""Ports handed out for a job's master and rendezvous: a pod has its own address, so
any port works; distinct ones keep pods that share an address (tests) apart."""
SYNC_TIMEOUT_S = 30.0
STUCK_REMEMBERED = 4096
"""Why the engine deleted its latest stuck pods, kept for later looks at them."""


class GangBindError(LaunchRefused):
    """A gang could not be created and bound whole; everything it made was deleted."""


class KubernetesEngine:
    """Runs replicas as pods on the cluster of ``options`` (see :mod:`.options`)."""

    name = "kubernetes"

    def __init__(
        self,
        state_dir: Path,
        options: KubernetesOptions | None = None,
        cluster: Cluster | None = None,
        relist_s: float = 60.0,
        keep_files: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.keep_files = keep_files
        """keep a gone job's pod-log mirrors (``tidemill run``: its state folder is the user's)"""
        self.relist_s = relist_s
        self.job_objects: JobObjects | None = None
        self.options = options or KubernetesOptions()
        self.cluster = cluster or Cluster(self.options)
        self.version = 0
        """bumped on every change the informers see: nodes are recomputed only then"""
        self._nodes_cache: tuple[int, list[NodeSpec]] | None = None
        self._lock = threading.Lock()
        self._stuck: OrderedDict[tuple[str, str], str] = OrderedDict()
        """(namespace, pod) -> why it could not start, for pods ``observe`` deleted: a
        caller that wanted only the pid (the launcher, an adoption) may be the one that
        saw the reason, and the controller's next look must still say it (guarded by
        ``_lock``)"""
        self._next_port = random.randrange(*PORTS)
        self.setup = JobSetup(self.cluster, self.options)
        core = self.cluster.core
        self.pods = Informer(
            self.cluster, "pods", core.list_pod_for_all_namespaces, self._pod_changed, relist_s
        )
        self.nodes_informer = Informer(
            self.cluster, "nodes", core.list_node, self._node_changed, relist_s
        )
        self.pod_logs = PodLogs(self.cluster, self.state_dir / "pod-logs", self._pod_ended)
        self.pod_metrics = PodMetrics(self.cluster.custom)
        self.pods.start()
        self.nodes_informer.start()
        self.nodes_informer.wait_synced(SYNC_TIMEOUT_S)
        self.pods.wait_synced(SYNC_TIMEOUT_S)

    # ------------------------------------------------------------------ inventory

    def _node_changed(self, node: dict[str, Any] | None) -> None:
        with self._lock:
            self.version += 1

    def _pod_changed(self, pod: dict[str, Any] | None) -> None:
        """Only pods tidemill does not manage change what nodes offer it."""
        if pod is None or not is_ours(pod):
            self._node_changed(None)

    def nodes(self) -> list[NodeSpec]:
        """The usable nodes and what they have left for tidemill (see :mod:`.inventory`)."""
        with self._lock:
            version = self.version
            cached = self._nodes_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        specs = node_specs(self.nodes_informer.snapshot(), self.pods.snapshot(), self.options)
        with self._lock:
            self._nodes_cache = (version, specs)
        return specs

    def problem(self) -> str | None:
        """Why the cluster cannot be used now (for ``/healthz``), or None."""
        if not (self.nodes_informer.synced.is_set() and self.pods.synced.is_set()):
            return "Kubernetes inventory not listed yet: " + (self.cluster.problem() or "waiting")
        return self.cluster.problem()

    def admit(self, job: TrainingJob) -> list[tuple[str, str]]:
        """What in ``job`` this cluster cannot run, as (field path, problem)."""
        problems = []
        namespace = job.metadata.namespace
        if self.options.namespaces and namespace not in self.options.namespaces:
            allowed = ", ".join(self.options.namespaces)
            problems.append(
                (
                    "metadata.namespace",
                    f"{namespace!r} is not a namespace this server's Kubernetes engine may "
                    f"use (allowed: {allowed}); submit to one of those",
                )
            )
        checkpoint = job.spec.checkpoint
        if checkpoint is not None and checkpoint.dir is not None and not is_url(checkpoint.dir):
            problems.append(
                (
                    "spec.checkpoint.dir",
                    f"{checkpoint.dir!r} is a local path, which pods do not share; use a URL "
                    "every pod can reach (s3://bucket/checkpoints, hdfs://...)",
                )
            )
        for name, role in job.spec.roles.items():
            if not (role.image or self.options.default_image):
                problems.append(
                    (
                        f"spec.roles.{name}.image",
                        "the Kubernetes engine needs a container image; set one, or start "
                        "the server with --default-image",
                    )
                )
            if 0 < role.resources.gpu < 1 and self.options.gpu_sharing == "none":
                problems.append(
                    (
                        f"spec.roles.{name}.resources.gpu",
                        f"{role.resources.gpu:g} of a GPU needs a sharing device plugin; ask "
                        "for whole GPUs or start the server with --gpu-sharing "
                        "hami|time-slicing",
                    )
                )
        return problems

    # ------------------------------------------------------------------ launching

    def dry_run(self, spec: LaunchSpec) -> LaunchPlan:
        owner = self.setup.made(spec.job_uid) or Owner(names.split_key(spec.job)[1], spec.job_uid)
        manifest = pod_manifest(spec, owner, self.options)
        container = manifest["spec"]["containers"][0]
        env = {item["name"]: item.get("value", "") for item in container["env"]}
        return LaunchPlan(
            argv=tuple(container["command"]),
            env=env,
            working_dir=container.get("workingDir", ""),
            manifest=manifest,
        )

    def launch(self, spec: LaunchSpec) -> ReplicaHandle:
        return self.launch_gang([spec])[0]

    def launch_gang(self, specs: Sequence[LaunchSpec]) -> list[ReplicaHandle]:
        """Create every pod, then bind every pod; on any failure delete what was made."""
        gone = sorted({s.node for s in specs if self.nodes_informer.get("", s.node) is None})
        if gone and self.nodes_informer.synced.is_set():
            raise PlacementLost(f"{specs[0].job}: node(s) {', '.join(gone)} no longer exist")
        created: list[tuple[LaunchSpec, dict[str, Any]]] = []
        try:
            for spec in specs:
                created.append((spec, self._create_pod(spec)))
            if self.options.gang_scheduler == "tidemill":
                for spec, pod in created:
                    self._bind(spec, pod)
        except Exception as exc:
            self.setup.forget(specs[0].job_uid)
            for _, pod in created:
                try:
                    self._delete(pod["metadata"]["namespace"], pod["metadata"]["name"], 0)
                except Exception:
                    # the next sync deletes it: no replica has its launch recorded
                    log.warning("could not delete pod %s", pod["metadata"]["name"], exc_info=True)
            replicas = ", ".join(f"{s.role}-{s.index}" for s in specs)
            raise GangBindError(
                f"{specs[0].job}: could not create and bind {replicas}: {exc}; "
                f"deleted the {len(created)} pod(s) made"
            ) from exc
        return [_handle(spec, pod) for spec, pod in created]

    def _create_pod(self, spec: LaunchSpec) -> dict[str, Any]:
        owner = self.setup.owner(spec)
        manifest = pod_manifest(spec, owner, self.options)
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            pod: dict[str, Any] = self.cluster.call(
                f"create pod {namespace}/{name}",
                self.cluster.core.create_namespaced_pod,
                namespace,
                manifest,
            )
            return pod
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing: dict[str, Any] = self.cluster.call(
            f"read pod {namespace}/{name}", self.cluster.core.read_namespaced_pod, name, namespace
        )
        labels = existing["metadata"].get("labels") or {}
        if labels.get(names.LAUNCH_LABEL) != names.label_value(spec.launch_id):
            raise RuntimeError(f"pod {namespace}/{name} exists and is not launch {spec.launch_id}")
        return existing

    def _bind(self, spec: LaunchSpec, pod: dict[str, Any]) -> None:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound == spec.node:
            return
        if bound:
            raise RuntimeError(f"pod {namespace}/{name} is bound to {bound}, not {spec.node}")
        self.cluster.call(
            f"bind pod {namespace}/{name} to {spec.node}",
            self.cluster.core.create_namespaced_pod_binding,
            name,
            namespace,
            binding_manifest(name, namespace, spec.node),
        )

    def attach(self, control: JobControl) -> None:
        """Serve the control plane ``control``: TrainingJob objects made for its jobs,
        ``kubectl`` ones submitted to it, statuses written back, leaked pods deleted."""
        store = control.store

        def job_of(uid: str) -> TrainingJob | None:
            with store.read() as tx:
                row = tx.job_by_uid(uid)
                return None if row is None else TrainingJob.model_validate(row.spec)

        self.setup.job_of = job_of
        self.job_objects = JobObjects(self.cluster, self.pods, control, self.relist_s).start()

    # ------------------------------------------------------------------ running

    def adopt(self, spec: LaunchSpec) -> ReplicaHandle | None:
        """The pod of launch ``spec.launch_id``; an unbound one holds nothing and is
        deleted (the launch is made again)."""
        namespace = names.split_key(spec.job)[0]
        name = names.pod_name(spec.job, spec.role, spec.index, spec.launch_id)
        pod = self.pods.get(namespace, name) or self._read_pod(namespace, name)
        if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
            return None
        if self.options.gang_scheduler == "tidemill" and not pod["spec"].get("nodeName"):
            self._delete(namespace, name, 0)
            return None
        return _handle(spec, pod)

    def observe(self, handle: ReplicaHandle) -> Observation:
        namespace, name = str(handle.data["namespace"]), str(handle.data["pod"])
        pod = self.pods.get(namespace, name) or self._read_pod(namespace, name)
        node = str(handle.data.get("node", ""))
        node_lost = self._node_gone(node)
        if pod is None:
            with self._lock:
                stuck = self._stuck.get((namespace, name))
            if stuck is not None:
                return Observation(False, message=stuck)
            where = f"with its node {node}" if node_lost else "(deleted)"
            return Observation(False, message=f"pod {name} was lost {where}", node_lost=node_lost)
        status = pod.get("status") or {}
        phase = status.get("phase")
        terminated, waiting = _container_state(status)
        if phase == "Succeeded":
            return Observation(running=False, exit_code=0)
        if phase == "Failed":
            if terminated is not None and status.get("reason") != "Evicted":
                message = terminated.get("message") or terminated.get("reason") or ""
                return Observation(
                    False, int(terminated.get("exitCode", 1)), message=message.strip()
                )
            reason = status.get("reason") or "Failed"
            message = f"pod {name} {reason}: {status.get('message', '')}"
            return Observation(False, message=message, node_lost=node_lost)
        bound = str(pod["spec"].get("nodeName") or "")
        if self._node_gone(bound):
            # Bound to a node that no longer exists, it never runs again; Kubernetes' pod
            # GC deletes it only after its quarantine (40 s), so say so now, and delete it.
            self._delete(namespace, name, 0)
            return Observation(
                False, message=f"pod {name} was lost with its node {bound}", node_lost=True
            )
        if waiting is not None and waiting.get("reason") in STUCK_REASONS:
            reason, detail = waiting["reason"], waiting.get("message", "")
            message = f"pod {name} cannot start: {reason}: {detail}"
            with self._lock:
                self._stuck[namespace, name] = message
                while len(self._stuck) > STUCK_REMEMBERED:
                    self._stuck.popitem(last=False)
            self._delete(namespace, name, 0)
            return Observation(False, message=message)
        return Observation(running=True)

    def _node_gone(self, node: str) -> bool:
        """Whether the inventory, listed whole, no longer has ``node``."""
        informer = self.nodes_informer
        return bool(node) and informer.synced.is_set() and informer.get("", node) is None

    def _read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = self.cluster.call(
                f"read pod {namespace}/{name}",
                self.cluster.core.read_namespaced_pod,
                name,
                namespace,
            )
            return pod
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _delete(self, namespace: str, name: str, grace_s: int) -> None:
        try:
            self.cluster.call(
                f"delete pod {namespace}/{name}",
                self.cluster.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_s,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def terminate(self, handle: ReplicaHandle) -> None:
        """Delete the pod with its grace: SIGTERM now (an elastic worker leaves at its
        next step), SIGKILL from the kubelet when the grace runs out."""
        self._delete(str(handle.data["namespace"]), str(handle.data["pod"]), TERMINATION_GRACE_S)

    def kill(self, handle: ReplicaHandle) -> None:
        self._delete(str(handle.data["namespace"]), str(handle.data["pod"]), 0)

    def stop(self, handle: ReplicaHandle, grace_s: float = 5.0) -> None:
        namespace, name = str(handle.data["namespace"]), str(handle.data["pod"])
        self._delete(namespace, name, math.ceil(grace_s))
        deadline = time.monotonic() + grace_s + 30
        while time.monotonic() < deadline:
            if self._read_pod(namespace, name) is None:
                return
            time.sleep(0.2)
        raise TimeoutError(f"pod {namespace}/{name} still exists {grace_s + 30:g} s after delete")

    def usage(self, replicas: Mapping[str, Watched]) -> dict[str, ReplicaUsage]:
        """What the pods use, as the cluster's metrics-server measured them (nothing
        without it); GPU figures need the cluster's own exporter (DCGM), not this."""
        return self.pod_metrics.usage(replicas)

    def log_path(self, handle: ReplicaHandle) -> str | None:
        """None: a pod's output is read through the API when asked for (:meth:`log_file`)."""
        return None

    def log_file(self, handle: ReplicaHandle) -> str:
        """A file mirroring the pod's output (``pods/log``), followed while it runs."""
        return self.pod_logs.path(handle)

    def forget(self, job: str, job_uid: str) -> None:
        """The job's pods, Service and Secret went with its object (owner references);
        what is left here is its pod-log mirrors."""
        if not self.keep_files:
            self.pod_logs.forget(job_uid)

    def stacks(self, handle: ReplicaHandle) -> StackDump:
        """py-spy's dump of the container's command, run in the container."""
        return pod_stacks(self.cluster, handle)

    def exec_command(self, handle: ReplicaHandle, argv: list[str]) -> ReplicaCommand:
        """``argv`` in the pod's container (``pods/exec``), as ``kubectl exec`` runs it."""
        return PodCommand(self.cluster, handle, argv)

    def _pod_ended(self, namespace: str, name: str) -> bool:
        pod = self.pods.get(namespace, name)
        return pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    def replica_host(self, job: str, role: str, index: int, node: str) -> str:
        """The pod's DNS name under the job's headless Service (exists before it is ready)."""
        return names.replica_dns(job, role, index)

    def free_port(self, node: str) -> int:
        with self._lock:
            port = self._next_port
            self._next_port = PORTS[0] if port + 1 >= PORTS[1] else port + 1
        return port

    def close(self) -> None:
        if self.job_objects is not None:
            self.job_objects.stop()
        self.pod_logs.close()
        self.pods.stop()
        self.nodes_informer.stop()
        self.cluster.api_client.close()  # type: ignore[no-untyped-call]


def _handle(spec: LaunchSpec, pod: dict[str, Any]) -> ReplicaHandle:
    meta = pod["metadata"]
    return ReplicaHandle(
        engine="kubernetes",
        data={
            "namespace": meta["namespace"],
            "pod": meta["name"],
            "uid": meta.get("uid", ""),
            "node": spec.node,
            "job_uid": spec.job_uid,
        },
    )


def _container_state(status: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(terminated, waiting) state of the pod's container, when it is in one."""
    statuses = status.get("containerStatuses") or []
    if not statuses:
        return None, None
    state = statuses[0].get("state") or {}
    return state.get("terminated"), state.get("waiting")
