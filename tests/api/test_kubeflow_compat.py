"""Kubeflow PyTorchJob/TFJob manifests run as they are; problems point at their own fields."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tidemill.api.cluster import NodeSpec
from tidemill.api.compat.kubeflow import convert_kubeflow
from tidemill.api.errors import SpecError
from tidemill.api.job import Mode, RestartPolicy, SuccessPolicy, TrainingJob
from tidemill.api.loader import job_from_document, load_job_file
from tidemill.controller.admission import admit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubeflow"
WORKER = "spec.pytorchReplicaSpecs.Worker"


def replica(replicas: int = 1, **container: Any) -> dict[str, Any]:
    body = {"name": "pytorch", "image": "pytorch/pytorch:2.3.1", "command": ["python", "t.py"]}
    body.update(container)
    if body["command"] is None:
        del body["command"]
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {"spec": {"containers": [body]}},
    }


def pytorchjob(spec: dict[str, Any] | None = None, **replica_specs: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "pt", "namespace": "vision", "labels": {"team": "cv"}},
        "spec": {"pytorchReplicaSpecs": replica_specs, **(spec or {})},
    }


def tfjob(spec: dict[str, Any] | None = None, **replica_specs: Any) -> dict[str, Any]:
    document = pytorchjob(spec, **replica_specs)
    document["kind"] = "TFJob"
    document["spec"]["tfReplicaSpecs"] = document["spec"].pop("pytorchReplicaSpecs")
    return document


def load(document: dict[str, Any]) -> TrainingJob:
    return job_from_document(document)


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        job_from_document(document)
    return [str(error) for error in caught.value.errors]


def test_the_pytorchjob_example_becomes_a_chief_and_a_worker() -> None:
    job = load_job_file(EXAMPLES / "pytorchjob.yaml")

    chief, worker = job.spec.roles["chief"], job.spec.roles["worker"]
    assert (job.metadata.name, job.metadata.labels) == ("digits-pytorchjob", {"team": "vision"})
    assert job.spec.mode is Mode.ALLREDUCE
    assert (chief.replicas, worker.replicas) == (1, 1)
    assert chief.command == ["python", "../digits_ddp/train.py"]
    assert chief.env == {"OMP_NUM_THREADS": "1"}
    assert chief.image == "pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime"
    assert (chief.resources.cpu, chief.resources.memory) == (0.5, 2**30)
    assert (chief.max_restarts, worker.max_restarts) == (2, 2)
    assert (job.spec.active_deadline_seconds, job.spec.ttl_seconds_after_finished) == (600, 3600)
    assert (EXAMPLES / chief.working_dir / chief.command[1]).resolve().is_file()


def test_the_tfjob_example_with_a_parameter_server_runs_in_ps_mode() -> None:
    job = load_job_file(EXAMPLES / "tfjob.yaml")

    assert job.spec.mode is Mode.PS
    assert {name: role.replicas for name, role in job.spec.roles.items()} == {
        "ps": 1,
        "chief": 1,
        "worker": 2,
    }
    assert job.spec.roles["worker"].argv == ["python", "tf_task.py", "--steps", "3"]
    assert job.spec.roles["ps"].resources.memory == 256 * 2**20
    assert job.spec.success_policy is SuccessPolicy.ALL_WORKERS
    assert all(role.max_restarts == 1 for role in job.spec.roles.values())


def test_a_tfjob_without_ps_is_allreduce_with_master_as_chief_and_an_evaluator() -> None:
    job = load(tfjob(Master=replica(), Worker=replica(3), Evaluator=replica()))

    assert job.spec.mode is Mode.ALLREDUCE
    assert sorted(job.spec.roles) == ["chief", "evaluator", "worker"]
    assert job.spec.roles["worker"].replicas == 3


def test_the_converted_document_is_a_plain_tidemill_job_file() -> None:
    document = convert_kubeflow(pytorchjob(Worker=replica(2, args=["--lr", "0.1"])))

    assert document == {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "pt", "namespace": "vision", "labels": {"team": "cv"}},
        "spec": {
            "mode": "allreduce",
            "roles": {
                "worker": {
                    "replicas": 2,
                    "restartPolicy": "OnFailure",
                    "command": ["python", "t.py"],
                    "args": ["--lr", "0.1"],
                    "image": "pytorch/pytorch:2.3.1",
                    "resources": {"cpu": 0, "memory": 0, "gpu": 0},
                }
            },
        },
    }


def test_elastic_policy_bounds_the_workers_and_its_restarts_beat_backoff_limit() -> None:
    document = pytorchjob(
        {
            "elasticPolicy": {"minReplicas": 1, "maxReplicas": 6, "maxRestarts": 5},
            "runPolicy": {"backoffLimit": 2},
        },
        Master=replica(),
        Worker=replica(3),
    )

    job = load(document)

    worker = job.spec.roles["worker"]
    assert (worker.min_replicas, worker.replicas, worker.max_replicas) == (1, 3, 6)
    assert worker.is_elastic
    assert (worker.max_restarts, job.spec.roles["chief"].max_restarts) == (5, 2)


def test_a_gang_smaller_than_the_job_lets_workers_beyond_it_come_and_go() -> None:
    document = pytorchjob(
        {"runPolicy": {"schedulingPolicy": {"minAvailable": 3}}},
        Master=replica(),
        Worker=replica(4),
    )

    worker = load(document).spec.roles["worker"]

    assert (worker.min_bound, worker.max_bound) == (2, 4)


def test_a_gang_as_large_as_the_job_changes_nothing() -> None:
    document = pytorchjob(
        {"runPolicy": {"schedulingPolicy": {"minAvailable": 3}}}, Worker=replica(3)
    )

    assert not load(document).spec.roles["worker"].is_elastic


def test_queue_and_priority_class_come_from_the_scheduling_policy() -> None:
    policy = {"schedulingPolicy": {"queue": "vision", "priorityClass": "high"}}

    job = load(pytorchjob({"runPolicy": policy}, Worker=replica()))

    assert (job.spec.queue, job.spec.priority_class_name) == ("vision", "high")


def test_a_suspended_run_policy_submits_the_job_suspended() -> None:
    assert load(pytorchjob({"runPolicy": {"suspend": True}}, Worker=replica())).spec.suspend
    assert not load(pytorchjob({"runPolicy": {}}, Worker=replica())).spec.suspend


def test_gpu_limits_and_requests_become_resources() -> None:
    resources = {
        "limits": {"nvidia.com/gpu": 2, "cpu": "4", "memory": "16Gi"},
        "requests": {"cpu": "2"},
    }

    worker = load(pytorchjob(Worker=replica(resources=resources))).spec.roles["worker"]

    assert (worker.resources.gpu, worker.resources.cpu, worker.resources.memory) == (
        2,
        2.0,
        16 * 2**30,
    )


REQUESTS_AS_KUBERNETES = {
    "no resources at all reserve nothing (Kubernetes' BestEffort), not 1 cpu and 1Gi": (
        None,
        (0.0, 0, 0.0),
    ),
    "requests and limits left empty reserve nothing": (
        {"requests": {}, "limits": {}},
        (0.0, 0, 0.0),
    ),
    "a cpu request alone reserves no memory": ({"requests": {"cpu": "2"}}, (2.0, 0, 0.0)),
    "limits alone become the requests": (
        {"limits": {"cpu": "3", "memory": "4Gi", "nvidia.com/gpu": 1}},
        (3.0, 4 * 2**30, 1.0),
    ),
    "a request wins over its limit, and a limit fills the other resource": (
        {"requests": {"cpu": "500m"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        (0.5, 2**30, 0.0),
    ),
}


@pytest.mark.parametrize(
    ("resources", "expected"), REQUESTS_AS_KUBERNETES.values(), ids=REQUESTS_AS_KUBERNETES.keys()
)
def test_a_container_reserves_what_kubernetes_would(
    resources: dict[str, Any] | None, expected: tuple[float, int, float]
) -> None:
    container = {} if resources is None else {"resources": resources}
    worker = load(pytorchjob(Worker=replica(**container))).spec.roles["worker"]

    assert (worker.resources.cpu, worker.resources.memory, worker.resources.gpu) == expected


def test_a_container_without_requests_fits_a_cluster_with_little_room() -> None:
    job = load(pytorchjob(Master=replica(), Worker=replica(3)))
    small = NodeSpec(name="small", cpu=0.5, memory=2**28)

    assert admit(job, [small], {}, {}).queue == "vision"


def test_the_training_container_is_found_by_name_behind_a_sidecar() -> None:
    document = pytorchjob(Worker=replica())
    containers = document["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    containers["containers"].insert(0, {"name": "log-shipper", "image": "fluent-bit"})

    assert load(document).spec.roles["worker"].command == ["python", "t.py"]


def test_restart_policy_exit_code_is_kept() -> None:
    document = pytorchjob(Worker=replica())
    document["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "ExitCode"

    assert load(document).spec.roles["worker"].restart_policy is RestartPolicy.EXIT_CODE


def with_error(document: dict[str, Any], change: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    change(changed)
    return changed


BAD: dict[str, tuple[dict[str, Any], list[str]]] = {
    "a container without a command, which only an image entrypoint would supply": (
        pytorchjob(Worker=replica(command=None)),
        [
            f"{WORKER}.template.spec.containers[0].command: required: tidemill starts the "
            "process itself and cannot read an image's entrypoint; write it out, e.g. "
            "command: [python, train.py]"
        ],
    ),
    "an unknown replica type, reported with the other problems": (
        pytorchjob(Launcher=replica(), Worker=replica(command=None)),
        [
            "spec.pytorchReplicaSpecs.Launcher: unknown replica type 'Launcher'; a "
            "PyTorchJob has Master, Worker",
            f"{WORKER}.template.spec.containers[0].command: required: tidemill starts the "
            "process itself and cannot read an image's entrypoint; write it out, e.g. "
            "command: [python, train.py]",
        ],
    ),
    "one and a half gpus in the limits": (
        pytorchjob(Worker=replica(resources={"limits": {"nvidia.com/gpu": 1.5}})),
        [
            f"{WORKER}.template.spec.containers[0].resources.limits[nvidia.com/gpu]: 1.5 "
            "mixes whole and shared GPUs; ask for a whole number (1, 2, 8) or a fraction "
            "below 1 (0.5, 0.25)"
        ],
    ),
    "a cpu request with an unknown unit": (
        pytorchjob(Worker=replica(resources={"requests": {"cpu": "2 cores"}})),
        [
            f"{WORKER}.template.spec.containers[0].resources.requests.cpu: '2 cores' has "
            "unknown cpu unit 'cores'; use cores or 'm'"
        ],
    ),
    "a restart policy Kubernetes does not have": (
        with_error(
            pytorchjob(Worker=replica()),
            lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].update(restartPolicy="Maybe"),
        ),
        [f"{WORKER}.restartPolicy: Input should be 'Never', 'OnFailure', 'Always' or 'ExitCode'"],
    ),
    "an env value from a secret": (
        pytorchjob(Worker=replica(env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {}}}])),
        [
            f"{WORKER}.template.spec.containers[0].env[0].valueFrom: TOKEN: valueFrom "
            "(secrets, config maps, field refs) is not supported; give a literal value"
        ],
    ),
    "elastic bounds that exclude the declared replicas": (
        pytorchjob({"elasticPolicy": {"minReplicas": 4, "maxReplicas": 8}}, Worker=replica(2)),
        [f"{WORKER}: replicas=2 must lie within minReplicas=4 and maxReplicas=8"],
    ),
    "an elastic policy with no workers to scale": (
        pytorchjob({"elasticPolicy": {"maxReplicas": 2}}, Master=replica()),
        ["spec.elasticPolicy: scales the Worker replicas, but there is no Worker"],
    ),
    "a gang larger than the job": (
        pytorchjob({"runPolicy": {"schedulingPolicy": {"minAvailable": 5}}}, Worker=replica(2)),
        [
            "spec.runPolicy.schedulingPolicy.minAvailable: minAvailable=5 exceeds the 2 "
            "replica(s) the job declares, so it could never start; use at most 2"
        ],
    ),
    "a gang that would leave out parameter servers": (
        tfjob(
            {"runPolicy": {"schedulingPolicy": {"minAvailable": 1}}},
            PS=replica(2),
            Worker=replica(1),
        ),
        [
            "spec.runPolicy.schedulingPolicy.minAvailable: minAvailable=1 would leave out "
            "non-Worker replicas; only Workers can be missing from the gang, so use at least 2"
        ],
    ),
    "a gang size that is not a number": (
        pytorchjob({"runPolicy": {"schedulingPolicy": {"minAvailable": "all"}}}, Worker=replica()),
        [
            "spec.runPolicy.schedulingPolicy.minAvailable: 'all' is not a gang size; write a "
            "whole number of replicas >= 1"
        ],
    ),
    "a replica spec without a pod template": (
        with_error(
            pytorchjob(Worker=replica()),
            lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].pop("template"),
        ),
        [f"{WORKER}.template: required field is missing"],
    ),
    "a gang size that disagrees with the elastic minimum": (
        pytorchjob(
            {
                "elasticPolicy": {"minReplicas": 1},
                "runPolicy": {"schedulingPolicy": {"minAvailable": 3}},
            },
            Worker=replica(4),
        ),
        [
            "spec.runPolicy.schedulingPolicy.minAvailable: minAvailable=3 means 3 Worker(s) "
            "at least, but elasticPolicy.minReplicas=1; make them agree"
        ],
    ),
    "a negative backoff limit": (
        pytorchjob({"runPolicy": {"backoffLimit": -1}}, Worker=replica()),
        ["spec.runPolicy.backoffLimit: Input should be greater than or equal to 0"],
    ),
    "a TFJob with both Chief and Master": (
        tfjob(Chief=replica(), Master=replica(), Worker=replica()),
        ["spec.tfReplicaSpecs.Master: Chief and Master both name the chief; keep one of them"],
    ),
    "a TFJob with only parameter servers": (
        tfjob(PS=replica()),
        ["spec.tfReplicaSpecs: a job needs a 'worker' or a 'chief' role"],
    ),
    "a pod template without containers": (
        with_error(
            pytorchjob(Worker=replica()),
            lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"].update(
                containers=[]
            ),
        ),
        [f"{WORKER}.template.spec.containers: expected a list with one container"],
    ),
    "no replica specs at all": (
        pytorchjob({"pytorchReplicaSpecs": None}),
        ["spec.pytorchReplicaSpecs: required field is missing"],
    ),
    "an api version the converter does not know": (
        with_error(pytorchjob(Worker=replica()), lambda d: d.update(apiVersion="kubeflow.org/v2")),
        ["apiVersion: 'kubeflow.org/v2' is not supported for PyTorchJob; use 'kubeflow.org/v1'"],
    ),
    "a job name Kubernetes would refuse too": (
        with_error(pytorchjob(Worker=replica()), lambda d: d["metadata"].update(name="Big")),
        [
            "metadata.name: 'Big' is not a valid job name: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit (e.g. 'ctr-daily')"
        ],
    ),
}


@pytest.mark.parametrize(("document", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_manifests_are_refused_at_the_manifests_own_fields(
    document: dict[str, Any], expected: list[str]
) -> None:
    assert errors_of(document) == expected


def test_two_masters_are_refused_as_two_chiefs() -> None:
    assert errors_of(pytorchjob(Master=replica(2), Worker=replica())) == [
        "spec.pytorchReplicaSpecs: roles.chief: there is at most one chief (replicas: 1)"
    ]
