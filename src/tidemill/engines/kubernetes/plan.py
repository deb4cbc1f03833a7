"""``tidemill manifests JOB.yaml``: every object the engine would create for a job.

The same functions the engine calls (:mod:`.manifests`, the controller's launcher), on
the job as it would start: every replica at its initial size, unbound (binding is a
separate call once placed), with placeholders where only the cluster can say (the
TrainingJob object's uid, the job's credential).
"""

from __future__ import annotations

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.elastic import MASTER_ROLE, initial_desired, needs_master
from tidemill.controller.launcher import Launcher
from tidemill.controller.model import JobSnapshot, ReplicaSnapshot
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.manifests import (
    Manifest,
    Owner,
    network_policy_manifest,
    pod_manifest,
    podgroup_manifest,
    secret_manifest,
    service_manifest,
    trainingjob_object,
)
from tidemill.engines.kubernetes.options import DEFAULT_SERVER_URL, KubernetesOptions

DRY_RUN_UID = "dry-run"
OBJECT_UID = "uid-of-the-trainingjob-object"
TOKEN = "the-job-credential"
RENDEZVOUS_PORT = 29500
MASTER_PORT = 29400
REPLICA_PORT = 2222


def dns_host(job: str, role: str, index: int, node: str) -> str:
    return names.replica_dns(job, role, index)


def starting_snapshot(job: TrainingJob) -> JobSnapshot:
    """The job as it starts: its initial replicas, each with a launch intent."""
    replicas = [
        ReplicaSnapshot(
            role,
            index,
            ReplicaPhase.LAUNCHING,
            "",
            REPLICA_PORT,
            launch_id=f"{DRY_RUN_UID}-{role}-{index}",
        )
        for role, size in initial_desired(job).items()
        for index in range(size)
    ]
    if needs_master(job):
        replicas.insert(
            0,
            ReplicaSnapshot(
                MASTER_ROLE,
                0,
                ReplicaPhase.LAUNCHING,
                "",
                launch_id=f"{DRY_RUN_UID}-{MASTER_ROLE}-0",
            ),
        )
    return JobSnapshot(
        id=0,
        uid=DRY_RUN_UID,
        namespace=job.metadata.namespace,
        name=job.metadata.name,
        phase=JobPhase.SCHEDULED,
        master_port=RENDEZVOUS_PORT,
        job_master_port=MASTER_PORT if needs_master(job) else None,
        replicas=tuple(replicas),
    )


def job_manifests(
    job: TrainingJob, options: KubernetesOptions, server_url: str = DEFAULT_SERVER_URL
) -> list[Manifest]:
    """The TrainingJob object, its Service, Secret (NetworkPolicy, PodGroup), then one pod
    per replica."""
    snapshot = starting_snapshot(job)
    launcher = Launcher(dns_host, server_url, lambda uid: TOKEN)
    owner = Owner(job.metadata.name, OBJECT_UID)
    key = job.key
    objects = [
        trainingjob_object(job, DRY_RUN_UID),
        service_manifest(key, DRY_RUN_UID, owner, options),
        secret_manifest(key, DRY_RUN_UID, TOKEN, owner, options),
    ]
    if options.network_policy:
        objects.append(network_policy_manifest(key, DRY_RUN_UID, owner, options))
    workers = [r for r in snapshot.replicas if r.role != MASTER_ROLE]
    if options.gang_scheduler == "volcano":
        objects.append(podgroup_manifest(key, DRY_RUN_UID, len(workers), owner, options))
    for replica in snapshot.replicas:
        spec = launcher.launch_spec(snapshot, job, replica)
        objects.append(pod_manifest(spec, owner, options))
    return objects
