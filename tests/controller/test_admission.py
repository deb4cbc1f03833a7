"""Admission refuses a gang that could never run on the cluster, with the numbers, so no
job waits forever; and ``--oversubscribe`` enlarges this machine to the gang instead."""

from __future__ import annotations

from typing import Any

import pytest

from tidemill.api.cluster import NodeSpec
from tidemill.api.errors import SpecError
from tidemill.api.job import TrainingJob
from tidemill.api.loader import job_from_document
from tidemill.controller.admission import admit, oversubscribe


def role(replicas: int = 1, **resources: Any) -> dict[str, Any]:
    return {"replicas": replicas, "command": ["x"], "resources": {"memory": "1Gi", **resources}}


def job(mode: str = "allreduce", **roles: dict[str, Any]) -> TrainingJob:
    return job_from_document(
        {
            "apiVersion": "tidemill/v1",
            "kind": "TrainingJob",
            "metadata": {"name": "gang"},
            "spec": {"mode": mode, "roles": roles},
        }
    )


def nodes(count: int = 1, cpu: float = 2, memory: str = "8Gi", **extra: Any) -> list[NodeSpec]:
    node = NodeSpec.model_validate({"name": "n", "cpu": cpu, "memory": memory, **extra})
    return node.model_copy(update={"count": count}).expand() if count > 1 else [node]


def refusal(the_job: TrainingJob, cluster: list[NodeSpec]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        admit(the_job, cluster, {}, {})
    return [str(error) for error in caught.value.errors]


REFUSED = {
    "three 1-cpu workers on a 2-cpu machine": (
        job(worker=role(3, cpu=1)),
        nodes(1, cpu=2),
        "spec.roles: needs 3 cpu as a gang (3 worker x 1 cpu); the cluster has 2 cpu in all "
        "(1 node), so the job could never start",
    ),
    "a chief and workers whose memory adds up beyond every node together": (
        job(chief=role(1, memory="6Gi"), worker=role(2, memory="6Gi")),
        nodes(2, memory="8Gi"),
        "spec.roles: needs 18Gi memory as a gang (1 chief x 6Gi + 2 worker x 6Gi); the "
        "cluster has 16Gi memory in all (2 nodes)",
    ),
    "whole GPUs do not split across nodes (3 x 2 gpu on two 3-gpu nodes)": (
        job(worker=role(3, gpu=2)),
        nodes(2, cpu=8, gpus=3),
        "spec.roles.worker.replicas: the gang needs 3 worker replicas at once (1 cpu, 1Gi, "
        "2 gpu each); replicas do not split across nodes and the nodes hold at most 2 "
        "(1 on n-0, 1 on n-1): ask for at most 2",
    ),
    "cores do not split across nodes either (3 x 1.2 cpu on two 2-cpu nodes)": (
        job(worker=role(3, cpu=1.2)),
        nodes(2, cpu=2),
        "spec.roles.worker.replicas: the gang needs 3 worker replicas at once (1.2 cpu",
    ),
    "shared GPUs beyond the devices (5 x 0.5 on 2 gpus)": (
        job(worker=role(5, cpu=0.1, gpu=0.5)),
        nodes(1, gpus=2),
        "spec.roles: needs 2.5 gpu as a gang (5 worker x 0.5 gpu); the cluster has 2 gpu in all",
    ),
    "shares that do not pack (5 x 0.4 on 2 gpus: two per device)": (
        job(worker=role(5, cpu=0.1, gpu=0.4)),
        nodes(1, gpus=2),
        "the nodes hold at most 4 (4 on n)",
    ),
    "GPUs of another model do not count": (
        job(worker=role(3, cpu=0.1, gpu=1, gpuModel="A100")),
        [
            NodeSpec(name="a", cpu=8, memory=2**34, gpus=2, gpu_model="A100"),
            NodeSpec(name="h", cpu=8, memory=2**34, gpus=8, gpu_model="H100"),
        ],
        "spec.roles: needs 3 A100 gpu as a gang (3 worker x 1 gpu); the cluster has 2 A100 "
        "gpu in all (1 node)",
    ),
    "an elastic role's minimum is the gang": (
        job(worker={**role(4, cpu=1), "minReplicas": 3, "maxReplicas": 8}),
        nodes(1, cpu=2),
        "spec.roles: needs 3 cpu as a gang (3 worker x 1 cpu)",
    ),
    "the elastic minimum is named when it does not pack": (
        job(worker={**role(3, gpu=2), "minReplicas": 3, "maxReplicas": 4}),
        nodes(2, cpu=8, gpus=3),
        "spec.roles.worker.minReplicas: the gang needs 3 worker replicas at once",
    ),
    "a replica larger than every node keeps its own message": (
        job(worker=role(1, cpu=4)),
        nodes(2, cpu=2),
        "spec.roles.worker.resources.cpu: asks 4 cpu per replica; the largest node has 2",
    ),
    "an extended resource no node offers": (
        job(worker=role(1, cpu=1, extended={"example.com/fpga": 1})),
        nodes(2, cpu=2),
        "spec.roles.worker.resources.extended: asks 1 example.com/fpga per replica; no node "
        "offers example.com/fpga: ask for at most 0, or add nodes offering it (extended: in "
        "the cluster file; on Kubernetes, tidemill server --extended-resource example.com/fpga)",
    ),
    "more of an extended resource per replica than any node has": (
        job(worker=role(1, cpu=1, extended={"rdma/hca": 2})),
        [*nodes(1, cpu=2), *nodes(1, cpu=2, name="m", extended={"rdma/hca": 1})],
        "spec.roles.worker.resources.extended: asks 2 rdma/hca per replica; the largest node "
        "offers 1 (m): ask for at most 1",
    ),
    "extended resources do not split across nodes (3 x 2 fpga on two 3-fpga nodes)": (
        job(worker=role(3, cpu=0.1, extended={"example.com/fpga": 2})),
        nodes(2, cpu=8, extended={"example.com/fpga": 3}),
        "spec.roles.worker.replicas: the gang needs 3 worker replicas at once",
    ),
    "cpu on one node and the extended resource on another": (
        job(worker=role(1, cpu=4, extended={"rdma/hca": 1})),
        [*nodes(1, cpu=4), *nodes(1, cpu=2, name="m", extended={"rdma/hca": 1})],
        "spec.roles.worker.resources: no single node has 4 cpu, 1Gi memory and 0 gpu, "
        "1 rdma/hca together",
    ),
}


@pytest.mark.parametrize(("the_job", "cluster", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_a_gang_that_can_never_fit_is_refused_with_the_numbers(
    the_job: TrainingJob, cluster: list[NodeSpec], expected: str
) -> None:
    errors = refusal(the_job, cluster)

    assert any(expected in error for error in errors), errors


ADMITTED = {
    "a gang spread over nodes that each hold one replica": (
        job(worker=role(3, cpu=1)),
        nodes(3, cpu=1, memory="2Gi"),
    ),
    "an elastic role whose minimum fits though its maximum does not": (
        job(worker={**role(2, cpu=1), "minReplicas": 2, "maxReplicas": 50}),
        nodes(1, cpu=2),
    ),
    "an elastic role that may shrink to nothing": (
        job(chief=role(1, cpu=1), worker={**role(1, cpu=1), "minReplicas": 0, "maxReplicas": 9}),
        nodes(1, cpu=1),
    ),
    "shared GPUs that pack onto the devices (4 x 0.5 on 2 gpus)": (
        job(worker=role(4, cpu=0.1, gpu=0.5)),
        nodes(1, gpus=2),
    ),
    "whole GPUs that fill every node exactly": (
        job(worker=role(4, cpu=0.1, gpu=2)),
        nodes(2, cpu=8, gpus=4),
    ),
    "two replicas of 2 fpga on the one node offering 4": (
        job(worker=role(2, cpu=0.1, extended={"example.com/fpga": 2})),
        [*nodes(1, cpu=8), *nodes(1, cpu=8, name="m", extended={"example.com/fpga": 4})],
    ),
    "requests of zero (Kubernetes BestEffort) fit anywhere": (
        job(worker=role(100, cpu=0, memory=0)),
        nodes(1, cpu=1, memory="1Gi"),
    ),
}


@pytest.mark.parametrize(("the_job", "cluster"), ADMITTED.values(), ids=ADMITTED.keys())
def test_a_gang_that_fits_the_cluster_is_admitted(
    the_job: TrainingJob, cluster: list[NodeSpec]
) -> None:
    assert admit(the_job, cluster, {}, {}).queue == "default"


def test_a_job_that_fits_this_machine_is_not_oversubscribed() -> None:
    assert oversubscribe(nodes(1, cpu=4)[0], job(worker=role(2, cpu=1))) is None


def test_oversubscribing_enlarges_the_machine_to_the_gang_and_says_by_how_much() -> None:
    machine = nodes(1, cpu=2, memory="4Gi")[0]
    big = job(chief=role(1, cpu=1, memory="2Gi"), worker=role(3, cpu=1, memory="2Gi", gpu=0.5))

    result = oversubscribe(machine, big)

    assert result is not None
    assert (result.node.cpu, result.node.memory, result.node.gpus) == (4.0, 8 * 2**30, 2)
    admit(big, [result.node], {}, {})
    assert result.message == (
        "this machine has 2 cpu, 4Gi memory and 0 gpu; the job asks 4 cpu, 8Gi memory and "
        "2 gpu as a gang (1 chief x 1 cpu, 2Gi, 0 gpu + 3 worker x 1 cpu, 2Gi, 0.5 gpu); "
        "running it anyway (--oversubscribe): replicas share what the machine has and may "
        "run slowly or out of memory"
    )


def test_oversubscribing_keeps_what_the_machine_has_beyond_the_gang() -> None:
    machine = nodes(1, cpu=64, memory="1Ti")[0]

    result = oversubscribe(machine, job(worker=role(1, cpu=1, gpu=1)))

    assert result is not None
    assert (result.node.cpu, result.node.memory, result.node.gpus) == (64.0, 2**40, 1)


def test_gpus_of_two_models_cannot_be_one_machine() -> None:
    two_models = job(
        mode="ps",
        worker=role(1, cpu=0.1, gpu=1, gpuModel="A100"),
        ps=role(1, cpu=0.1, gpu=1, gpuModel="H100"),
    )

    with pytest.raises(SpecError, match="no node has gpu model"):
        oversubscribe(nodes(1)[0], two_models)


def test_a_gang_beyond_any_machine_cannot_be_oversubscribed() -> None:
    huge = job(worker=role(10_000, cpu=1_000))

    with pytest.raises(SpecError) as caught:
        oversubscribe(nodes(1)[0], huge)

    assert str(caught.value).startswith(
        "spec.roles: too large to run even with --oversubscribe: cpu: 10000000.0 is more cpu "
        "than any machine has"
    )
