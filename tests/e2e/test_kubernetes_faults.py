"""The Kubernetes engine under faults only an emulated API server can inject (tests/kube):
binds refused, watch events dropped or repeated, the API answering 5xx, the server
killed between a launch and its record, a leaked pod, a pod stuck on its image seen
first by a look for its pid; and every call it makes checked
against the ClusterRole deploy/kubernetes ships."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import ServerProcess
from tests.e2e.harness import wait_for
from tests.e2e.kubernetes import PODGROUP_CRD, ROOT, Cluster, emulated, server
from tests.kube import KubeEmulator
from tidemill.api.crd import to_custom_object
from tidemill.client import Client
from tidemill.controller.launches import FAULT_EXIT_CODE, FAULT_VAR
from tidemill.engines.base import LaunchSpec, Observation
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.cluster import API_CALLS
from tidemill.engines.kubernetes.engine import KubernetesEngine
from tidemill.engines.kubernetes.options import KubernetesOptions

pytestmark = pytest.mark.e2e
BINDING = r"/pods/[^/]+/binding$"
CLUSTER_ROLE = ROOT / "deploy" / "kubernetes" / "clusterrole.yaml"
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from emulated(tmp_path)


def kube_of(cluster: Cluster) -> KubeEmulator:
    assert cluster.emulator is not None
    return cluster.emulator


def pod_creates(kube: KubeEmulator) -> int:
    made = [(c.verb, c.resource, c.subresource) for c in kube.calls]
    return made.count(("create", "pods", ""))


def test_a_refused_bind_deletes_the_gang_and_requeues_it_then_it_binds_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = kube_of(cluster)
    kube.inject("POST", BINDING, 409, times=1)  # a conflict is not retried
    kube.inject("POST", BINDING, 500, times=4)  # nor a 5xx, past the client's retries
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(cluster.sleeper("gang", replicas=3))
        wait_for(lambda: api.get("gang").phase == "Running", timeout_s=60, what="running")
        reasons = [e.reason for e in api.job_events("gang")]
        assert reasons.count("BindFailed") == 2, reasons
        pods = cluster.pods("gang")
        assert len(pods) == 3 and all(p.spec.node_name for p in pods)
        assert pod_creates(kube) == 9, "two gangs of 3 made and deleted whole, then one bound"
        assert len({p.metadata.name for p in pods}) == 3


def test_lost_and_repeated_watch_events_change_nothing(cluster: Cluster, tmp_path: Path) -> None:
    kube = kube_of(cluster)
    job = cluster.example("digits_ddp")
    with server(cluster, tmp_path / "state") as (_, api):
        kube.drop_watch_events(15)
        kube.duplicate_watch_events(30)
        api.submit(job)
        final = api.wait(job.metadata.name, timeout_s=120)
        assert final.phase == "Succeeded", final.message
        events = [f"{e.reason}: {e.message}" for e in api.job_events(job.metadata.name)]
        assert pod_creates(kube) == 2, f"a replica launched twice; the job's events: {events}"


def test_an_api_answering_503_degrades_health_loses_nothing_and_recovers(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = kube_of(cluster)
    with server(cluster, tmp_path / "state") as (runner, api):
        api.submit(cluster.sleeper("steady"))
        wait_for(lambda: api.get("steady").phase == "Running", timeout_s=60, what="running")
        before = {p.metadata.uid for p in cluster.pods("steady")}
        kube.inject("*", ".*", 503, times=40)
        api.submit(cluster.sleeper("late"))
        health = wait_for(
            lambda: (r := httpx.get(f"{runner.url}/healthz")).status_code == 503 and r.json(),
            timeout_s=30,
            what="/healthz degraded",
        )
        assert "Kubernetes API unavailable" in health["engine"]
        wait_for(lambda: api.get("late").phase == "Running", timeout_s=90, what="late running")
        wait_for(lambda: httpx.get(f"{runner.url}/healthz").status_code == 200, timeout_s=30,
                 what="/healthz ok again")
        assert {p.metadata.uid for p in cluster.pods("steady")} == before
        assert api.get("steady").phase == "Running"


def test_a_server_killed_between_a_launch_and_its_record_leaves_one_pod_per_replica(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = kube_of(cluster)
    state = tmp_path / "state"
    state.mkdir()
    args = ("--engine", "kubernetes", "--kubeconfig", cluster.kubeconfig,
            "--default-image", cluster.image)
    monkeypatch.setenv(FAULT_VAR, "exit")
    crashing = ServerProcess(state, None, args=args)
    crashing.start()
    monkeypatch.delenv(FAULT_VAR)
    try:
        with Client(crashing.url) as api:
            api.submit(cluster.sleeper("once", replicas=3))
        assert crashing.process is not None
        assert crashing.process.wait(timeout=60) == FAULT_EXIT_CODE
        assert len(cluster.pods("once")) == 3, "the gang was made and bound, not recorded"
        crashing.start()
        with Client(crashing.url) as api:
            view = wait_for(
                lambda: (v := api.get("once")).phase == "Running" and v, timeout_s=60,
                what="the job running after the restart",
            )
            time.sleep(2)  # more cycles: nothing launched again
            assert pod_creates(kube) == 3
            assert [e.reason for e in api.job_events("once")].count("ReplicaAdopted") == 3
            api.delete("once")
            wait_for(lambda: not cluster.children(view.uid), timeout_s=60, what="no leftovers")
    finally:
        crashing.stop()


def test_a_pod_no_replica_launched_is_deleted(cluster: Cluster, tmp_path: Path) -> None:
    with server(cluster, tmp_path / "state") as (_, api), cluster.api() as kube_api:
        api.submit(cluster.sleeper("owner"))
        view = wait_for(lambda: (v := api.get("owner")).phase == "Running" and v, timeout_s=60,
                        what="running")
        stray = cluster.pods("owner")[0].to_dict()
        labels = {**stray["metadata"]["labels"], names.LAUNCH_LABEL: "not-a-launch"}
        core = client.CoreV1Api(kube_api)
        core.create_namespaced_pod(
            cluster.namespace,
            {
                "metadata": {"name": "stray", "labels": labels},
                "spec": {
                    "containers": [{"name": "c", "image": cluster.image,
                                    "command": ["python", "-c", "import time; time.sleep(60)"]}],
                    "schedulerName": "tidemill",
                },
            },
        )
        wait_for(lambda: "stray" not in {p.metadata.name for p in cluster.pods("owner")},
                 timeout_s=30, what="the stray pod deleted")
        assert len(cluster.pods("owner")) == 2
        assert api.get("owner").uid == view.uid


def test_every_call_the_engine_makes_is_allowed_by_the_shipped_cluster_role(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = kube_of(cluster)
    rules: list[dict[str, Any]] = yaml.safe_load(CLUSTER_ROLE.read_text())["rules"]
    with cluster.api() as kube_api:
        client.ApiextensionsV1Api(kube_api).create_custom_resource_definition(PODGROUP_CRD)
        objects = client.CustomObjectsApi(kube_api)
        with server(cluster, tmp_path / "state") as (_, api):
            start = len(kube.calls)
            job = cluster.example("digits_ddp")
            api.submit(job)
            api.wait(job.metadata.name, timeout_s=120)
            assert "".join(api.logs(job.metadata.name))
            objects.create_namespaced_custom_object(
                names.GROUP, names.VERSION, cluster.namespace, names.PLURAL,
                to_custom_object(cluster.sleeper("applied")),
            )
            wait_for(
                lambda: any(j.name == "applied" and j.phase == "Running" for j in api.jobs()),
                timeout_s=60,
                what="the applied job running",
            )
            objects.delete_namespaced_custom_object(
                names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, "applied"
            )
            api.delete(job.metadata.name)
            wait_for(lambda: not api.jobs(), timeout_s=30, what="every job gone")
            engine_calls = kube.calls[start:]
        with server(cluster, tmp_path / "volcano", gang_scheduler="volcano") as (_, api):
            start = len(kube.calls)
            api.submit(cluster.sleeper("volcano-gang"))
            wait_for(lambda: len(cluster.pods("volcano-gang")) == 2, timeout_s=30,
                     what="pods for Volcano to bind")
            engine_calls += kube.calls[start:]
    made = Counter((c.verb, c.resource, c.subresource) for c in engine_calls)
    assert made[("create", "pods", "binding")] >= 2
    assert made[("create", "podgroups", "")] == 1
    assert [c for c in kube.allowed_by(rules) if c in engine_calls] == []
    for call in engine_calls:
        resource = "/".join(filter(None, (call.resource, call.subresource)))
        assert call.verb in API_CALLS.get((call.api_group, resource), ()), call


def test_a_fixed_gang_that_loses_a_node_is_placed_again_whole(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = kube_of(cluster)
    kube.add_node("node-spare", cpu="4", memory="16Gi")
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(cluster.sleeper("fixed", replicas=2, cpu=3))  # one pod per node
        wait_for(lambda: api.get("fixed").phase == "Running", timeout_s=60, what="running")
        lost = cluster.pods("fixed")[0].spec.node_name
        kube.lose_node(lost)
        wait_for(
            lambda: (pods := cluster.pods("fixed"))
            and len(pods) == 2
            and all(p.status.phase == "Running" and p.spec.node_name != lost for p in pods)
            # The job turns Running at the controller's next look at the new pods.
            and api.get("fixed").phase == "Running",
            timeout_s=90,
            what="the gang running again, off the lost node, and the job Running",
        )
        events = [f"{e.reason}: {e.message}" for e in api.job_events("fixed")]
        assert any(lost in e for e in events), events


def test_a_cluster_without_metrics_server_gives_no_usage_and_stays_healthy(
    tmp_path: Path,
) -> None:
    """Usage is an extra: without metrics.k8s.io the job view has no figures (never
    zeros), /healthz stays ok, and the API is asked once a minute, not once a scrape."""
    for cluster in emulated(tmp_path, metrics_server=False):
        kube = kube_of(cluster)
        with server(cluster, tmp_path / "state") as (runner, api):
            api.submit(cluster.sleeper("quiet", replicas=1))
            wait_for(lambda: api.get("quiet").phase == "Running", timeout_s=60, what="running")
            views = [api.get("quiet") for _ in range(5)]
            assert all(r.usage is None for view in views for r in view.replicas)
            assert httpx.get(f"{runner.url}/healthz").json() == {"status": "ok"}
            asked = [c for c in kube.calls if c.api_group == "metrics.k8s.io"]
            assert [(c.verb, c.resource) for c in asked] == [("list", "pods")]
            api.delete("quiet")


def test_a_pod_that_cannot_start_says_why_to_every_later_look(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``observe`` deletes a pod stuck on its image and says why. The launcher and an
    adoption look only for a pid: when one of them is the first to see the pod stuck, the
    controller's next look, at a pod already deleted, must still name the reason (on a
    busy server it said only "lost (deleted)")."""
    image = "registry.invalid/does-not-exist:1"
    job = cluster.sleeper("stuck", replicas=1)
    engine = KubernetesEngine(tmp_path / "state", KubernetesOptions(kubeconfig=cluster.kubeconfig))
    engine.setup.job_of = lambda uid: job
    spec = LaunchSpec(
        job="default/stuck", job_uid="7e0d5c", launch_id="first", role="worker", index=0,
        argv=("sleep", "600"), env={}, working_dir="", node="node-0", image=image, cpu=1.0,
        memory_bytes=256 << 20,
    )  # fmt: skip
    try:
        handle = engine.launch(spec)

        def waiting_reason() -> str | None:
            for pod in cluster.pods("stuck"):
                for status in pod.status.container_statuses or []:
                    if status.state.waiting is not None:
                        return str(status.state.waiting.reason)
            return None

        wait_for(lambda: waiting_reason() == "ErrImagePull", what="the image pull to fail")

        def stuck() -> Observation | None:
            """The engine's look once its watch has the status this test read."""
            seen = engine.observe(handle)  # the launcher's look, for the pid only
            return None if seen.running else seen

        first = wait_for(stuck, timeout_s=10, what="the engine to see the pod stuck")
        assert isinstance(first, Observation)
        assert "cannot start: ErrImagePull" in first.message
        wait_for(lambda: cluster.pods("stuck") == [], what="the stuck pod to be deleted")
        later = engine.observe(handle)
        assert not later.running
        assert later.message == first.message
    finally:
        engine.close()



@pytest.fixture
def quarantined(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose pod GC waits 5 minutes, as a real one waits 40 s."""
    yield from emulated(tmp_path, podgc_quarantine_s=300)


def test_a_pod_whose_node_was_deleted_is_lost_at_once_not_after_the_pod_gc(
    quarantined: Cluster, tmp_path: Path
) -> None:
    """The pod GC removes a pod bound to a deleted node only after its quarantine; until
    then the API still says Running. The engine's inventory no longer has the node, so
    it reports the pod lost with it at once (and deletes it, as the pod GC would): the
    scheduler, which no longer counts the node, and the lifecycle agree."""
    cluster = quarantined
    job = cluster.sleeper("orphan", replicas=1)
    engine = KubernetesEngine(tmp_path / "state", KubernetesOptions(kubeconfig=cluster.kubeconfig))
    engine.setup.job_of = lambda uid: job
    spec = LaunchSpec(
        job="default/orphan", job_uid="0f1a2b", launch_id="first", role="worker", index=0,
        argv=("sleep", "600"), env={}, working_dir="", node="node-1", image=cluster.image,
        cpu=1.0, memory_bytes=256 << 20,
    )  # fmt: skip
    try:
        handle = engine.launch(spec)

        def phases() -> list[str]:
            return [p.status.phase for p in cluster.pods("orphan")]

        wait_for(lambda: phases() == ["Running"], timeout_s=30, what="the pod running")
        kube_of(cluster).lose_node("node-1")
        wait_for(lambda: engine.nodes_informer.get("", "node-1") is None, timeout_s=10,
                 what="the engine's inventory without node-1")
        assert phases() == ["Running"], "the pod GC has not removed it yet"

        seen = engine.observe(handle)

        assert not seen.running and seen.node_lost
        assert seen.message == f"pod {handle.data['pod']} was lost with its node node-1"
        wait_for(lambda: cluster.pods("orphan") == [], timeout_s=10, what="the pod deleted")
    finally:
        engine.close()
