"""The FGD paper's packing protocol on the openb trace: how full can a policy fill the cluster.

For one seed: shuffle the pods, then append pods drawn with replacement until the GPUs
asked reach ``1.3 x`` the cluster's; place them in that order, one by one, never
removing one, skipping a pod that does not fit. The figure is the GPUs allocated
(shares summed) as a percentage of the cluster's, read when the demand that has
arrived reaches 100%, 110%, 120% and 130% of capacity (Weng et al., USENIX ATC 2023,
and its artifact hkust-adsl/kubernetes-scheduler-simulator).

The pods between two reading points go to the policy as one batch, in one queue, at
one priority, in order. For ``schedule`` that is the same as one pod per call: nothing
ever ends, so free room only shrinks, and a job that does not fit is skipped, not
waited for; the baselines take the batch in order by construction. The expected pod mix
(``ClusterState.workload``, which fragmentation-aware placement keeps room for) is the
trace's pods unless the cluster brings one, as FGD takes it from the trace.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from tidemill.scheduler import ClusterState, JobRequest, QueueInfo, RunningJob
from tidemill.scheduler.fragmentation import mix_of
from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.policies import Policy
from tidemill.scheduler.sim.replay import requests
from tidemill.scheduler.sim.trace import TraceJob
from tidemill.scheduler.types import PodType

DEMAND_POINTS = (1.0, 1.1, 1.2, 1.3)
QUEUE = "openb"


def workload(
    pods: Sequence[TraceJob], total_gpus: float, seed: int, demand: float
) -> list[TraceJob]:
    """The pods in this seed's order, topped up with draws until they ask ``demand x`` GPUs."""
    if not any(p.gpus > 0 for p in pods):
        raise SimInputError("trace", None, "no job asks a GPU; packing measures GPU allocation")
    rng = random.Random(seed)
    order = list(pods)
    rng.shuffle(order)
    asked = sum(p.gpus for p in order)
    while asked < demand * total_gpus:
        drawn = rng.choice(pods)
        order.append(replace(drawn, name=f"{drawn.name}-{len(order)}"))
        asked += drawn.gpus
    return order


def trace_mix(pods: Sequence[TraceJob]) -> tuple[PodType, ...]:
    """The pod types of ``pods``, weighted by how many pods ask each."""
    return mix_of(pod for i, job in enumerate(pods) for pod in requests(job, i).pods)


def allocation_at_demand(
    cluster: ClusterState,
    pods: Sequence[TraceJob],
    policy: Policy,
    seed: int,
    points: Sequence[float] = DEMAND_POINTS,
) -> dict[float, float]:
    """Percent of the cluster's GPUs allocated when arrived demand reaches each of ``points``."""
    total = float(sum(n.gpus for n in cluster.nodes if n.schedulable))
    if total <= 0:
        raise SimInputError("cluster", None, "has no GPUs; packing measures GPU allocation")
    jobs = workload(pods, total, seed, max(points))
    mix = cluster.workload or trace_mix(pods)
    state = replace(cluster, queues={QUEUE: QueueInfo(QUEUE)}, running=(), workload=mix)
    running: list[RunningJob] = []
    allocated = 0.0
    asked = 0.0
    next_job = 0
    readings: dict[float, float] = {}
    for point in sorted(points):
        batch: list[JobRequest] = []
        while next_job < len(jobs) and asked < point * total:
            job = replace(jobs[next_job], queue=QUEUE, priority=0)
            batch.append(requests(job, next_job))
            asked += job.gpus
            next_job += 1
        decisions = policy(replace(state, running=tuple(running)), batch)
        for bind in decisions.binds:
            running.append(RunningJob(bind.job, QUEUE, 0, 0, bind.placements))
            allocated += sum(p.gpu_share * len(p.gpu_ids) for p in bind.placements)
        readings[point] = 100 * allocated / total
    return readings
