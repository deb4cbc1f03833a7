"""The Kubernetes engine's contract: what a user of a cluster sees, through kubectl's API
and tidemill's. Runs on the emulated API server (tests/kube) always, and unchanged on a
real cluster when ``TIDEMILL_TEST_KUBECONFIG`` is set (see tests/e2e/kubernetes.py)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest
from kubernetes import client

from tests.e2e.harness import master_address, wait_for
from tests.e2e.kubernetes import Cluster, emulated, real, server
from tidemill.api.crd import to_custom_object
from tidemill.api.job import TrainingJob
from tidemill.client import ApiError
from tidemill.engines.kubernetes import names

pytestmark = pytest.mark.e2e
TARGETS = ["emulated", "real"]


@pytest.fixture(params=TARGETS)
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "real":
        found = real()
        if found is None:
            pytest.skip("no real cluster: set TIDEMILL_TEST_KUBECONFIG (tests/e2e/kubernetes.py)")
        yield found
        return
    yield from emulated(tmp_path)


def test_the_digits_example_trains_to_its_accuracy_on_pods_tidemill_bound(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.example("digits_ddp")
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        final = api.wait(job.metadata.name, timeout_s=240)
        assert final.phase == "Succeeded", final.message
        log = "\n".join(api.logs(job.metadata.name))
        accuracy = float(re.findall(r"test accuracy: ([0-9.]+)", log)[-1])
        assert accuracy >= 0.9, log[-2000:]
        pods = cluster.pods(job.metadata.name)
        assert len(pods) == 2
        assert {r.pod for r in final.replicas} == {p.metadata.name for p in pods}
        assert {p.spec.scheduler_name for p in pods} == {"tidemill"}
        assert all(p.spec.node_name for p in pods), "every pod was bound"
        status = wait_for(
            lambda: (cluster.job_object(job.metadata.name) or {}).get("status", {}).get("phase")
            == "Succeeded"
            and cluster.job_object(job.metadata.name),
            timeout_s=15,
            what="the TrainingJob status to say Succeeded",
        )["status"]
        assert status["replicas"]["worker"]["succeeded"] == 2
        uid = final.uid
        api.delete(job.metadata.name)
        wait_for(lambda: not cluster.children(uid), timeout_s=60, what="every child gone")
        wait_for(lambda: cluster.job_object(job.metadata.name) is None, timeout_s=30,
                 what="the TrainingJob object gone")


def test_kubectl_apply_and_kubectl_delete_reach_the_same_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.sleeper("applied")
    name = job.metadata.name
    with server(cluster, tmp_path / "state") as (_, api), cluster.api() as kube:
        objects = client.CustomObjectsApi(kube)
        objects.create_namespaced_custom_object(
            names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, to_custom_object(job)
        )
        running = wait_for(
            lambda: any(j.name == name and j.phase == "Running" for j in api.jobs())
            and api.get(name),
            timeout_s=90,
            what="the applied object running as a tidemill job",
        )
        events = [e.message for e in api.job_events(name)]
        assert any("kubectl" in message for message in events), events
        wait_for(
            lambda: (cluster.job_object(name) or {}).get("status", {}).get("phase") == "Running",
            timeout_s=15,
            what="the object's status to say Running",
        )
        objects.delete_namespaced_custom_object(
            names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, name
        )
        wait_for(lambda: name not in {j.name for j in api.jobs()}, timeout_s=30,
                 what="the job deleted with its object")
        wait_for(lambda: not cluster.children(running.uid), timeout_s=60,
                 what="every child gone")


def test_an_object_applied_to_a_full_namespace_waits_and_starts_once_there_is_room(
    cluster: Cluster, tmp_path: Path
) -> None:
    first, second = cluster.sleeper("first"), cluster.sleeper("second")
    with server(cluster, tmp_path / "state", max_jobs_per_namespace=1) as (_, api), \
            cluster.api() as kube:
        api.submit(first)
        objects = client.CustomObjectsApi(kube)
        objects.create_namespaced_custom_object(
            names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, to_custom_object(second)
        )
        status = wait_for(
            lambda: (cluster.job_object("second") or {}).get("status", {}).get("message")
            and cluster.job_object("second")["status"],
            timeout_s=30,
            what="the object's status to say why it waits",
        )
        assert status["phase"] == "Pending", status
        assert status["message"].startswith(
            f"waiting for room: namespace {cluster.namespace} holds 1 unfinished jobs"
        ), status
        time.sleep(2)  # a few more syncs: it still waits, and is not failed
        assert "second" not in {j.name for j in api.jobs()}
        assert cluster.job_object("second")["status"]["phase"] == "Pending"

        api.delete("first")
        wait_for(lambda: any(j.name == "second" and j.phase == "Running" for j in api.jobs()),
                 timeout_s=90, what="the waiting object submitted and running")
        objects.delete_namespaced_custom_object(
            names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, "second"
        )
        wait_for(lambda: "second" not in {j.name for j in api.jobs()}, timeout_s=30,
                 what="the job deleted with its object")


def test_a_finished_jobs_object_keeps_its_status_and_pods_and_kubectl_delete_removes_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The sync keeps what it derived from a finished job instead of reading its row each
    second: the object's final status, the job's pods (not taken for leaked), a
    spec.suspend patch that changes nothing, and kubectl delete all still hold."""
    job = cluster.finishing("done", replicas=2)
    path = (names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, "done")
    with server(cluster, tmp_path / "state") as (_, api), cluster.api() as kube:
        api.submit(job)
        assert api.wait("done", timeout_s=120).phase == "Succeeded"
        wait_for(lambda: (cluster.job_object("done") or {}).get("status", {}).get("phase")
                 == "Succeeded", timeout_s=15, what="the object's status to say Succeeded")
        pods = {p.metadata.name for p in cluster.pods("done")}
        assert len(pods) == 2, pods
        objects = client.CustomObjectsApi(kube)
        objects.patch_namespaced_custom_object(*path, {"spec": {"suspend": True}})
        wait_for(lambda: (cluster.job_object("done") or {})["metadata"]["annotations"].get(
                 names.SUSPEND_ANNOTATION) == names.flag(True), timeout_s=15,
                 what="the patch noted")
        time.sleep(3)  # syncs of a settled job
        assert api.get("done").phase == "Succeeded"
        final = cluster.job_object("done") or {}
        assert final["status"]["phase"] == "Succeeded", final
        assert final["status"]["replicas"]["worker"]["succeeded"] == 2, final
        assert {p.metadata.name for p in cluster.pods("done")} == pods, "no pod taken for leaked"
        objects.delete_namespaced_custom_object(*path)
        wait_for(lambda: "done" not in {j.name for j in api.jobs()}, timeout_s=30,
                 what="the finished job deleted with its object")


def test_a_gang_that_does_not_fit_now_waits_with_a_reason_and_no_pod(
    cluster: Cluster, tmp_path: Path
) -> None:
    with server(cluster, tmp_path / "state") as (_, api):
        nodes = api.nodes()
        per_node = min(node.capacity.cpu for node in nodes)
        hog = cluster.sleeper("hog", replicas=len(nodes), cpu=per_node * 0.6)
        api.submit(hog)
        wait_for(lambda: api.get("hog").phase == "Running", timeout_s=90,
                 what="the first gang running")
        api.submit(cluster.sleeper("waiting", replicas=len(nodes), cpu=per_node * 0.6))
        view = wait_for(
            lambda: (v := api.get("waiting")).pending_reason and v, timeout_s=30,
            what="a pending reason",
        )
        assert view.phase == "Pending"
        assert "cpu" in f"{view.pending_reason.message} {view.message}".lower()
        assert cluster.pods("waiting") == [], "a waiting gang holds no pod"
        api.delete("hog")
        wait_for(lambda: api.get("waiting").phase == "Running", timeout_s=90,
                 what="the waiting gang bound once the first left")


def test_a_suspended_job_has_no_pod_and_says_so_in_its_status_until_resumed(
    cluster: Cluster, tmp_path: Path
) -> None:
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(cluster.sleeper("napping", replicas=2))
        wait_for(lambda: api.get("napping").phase == "Running", timeout_s=90,
                 what="the job running")
        before = {p.metadata.name for p in cluster.pods("napping")}
        assert len(before) == 2
        api.suspend("napping")
        wait_for(lambda: api.get("napping").phase == "Suspended", timeout_s=60,
                 what="the job suspended")
        wait_for(lambda: cluster.pods("napping") == [], timeout_s=60, what="its pods gone")
        wait_for(
            lambda: (cluster.job_object("napping") or {}).get("status", {}).get("phase")
            == "Suspended",
            timeout_s=15,
            what="the TrainingJob status to say Suspended",
        )
        wait_for(lambda: (cluster.job_object("napping") or {})["spec"].get("suspend") is True,
                 timeout_s=15, what="the object's spec.suspend to say what tidemill did")
        api.resume("napping")
        wait_for(lambda: api.get("napping").phase == "Running", timeout_s=90,
                 what="the job running again")
        wait_for(lambda: (cluster.job_object("napping") or {})["spec"]["suspend"] is False,
                 timeout_s=15, what="spec.suspend written back by tidemill's resume")
        after = cluster.pods("napping")
        assert len(after) == 2 and all(p.spec.node_name for p in after), "bound again"
        assert not before & {p.metadata.name for p in after}, "new pods, not the old ones"


def test_kubectl_patching_spec_suspend_suspends_and_resumes_the_job_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    name = "patched"
    path = (names.GROUP, names.VERSION, cluster.namespace, names.PLURAL, name)

    def suspend(value: bool) -> None:
        with cluster.api() as kube:
            client.CustomObjectsApi(kube).patch_namespaced_custom_object(
                *path, {"spec": {"suspend": value}}
            )

    def object_phase() -> str | None:
        return (cluster.job_object(name) or {}).get("status", {}).get("phase")

    with server(cluster, tmp_path / "state") as (_, api), cluster.api() as kube:
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            *path[:4], to_custom_object(cluster.sleeper(name))
        )
        wait_for(lambda: name in {j.name for j in api.jobs()} and api.get(name).phase
                 == "Running", timeout_s=90, what="the applied object running")
        suspend(True)
        wait_for(lambda: object_phase() == "Suspended", timeout_s=60,
                 what="the object's status to say Suspended")
        wait_for(lambda: cluster.pods(name) == [], timeout_s=60, what="its pods gone")
        assert any("kubectl" in e.message for e in api.job_events(name) if e.reason == "Suspending")
        api.resume(name)  # through tidemill: the object's spec.suspend follows, not undoes it
        wait_for(lambda: object_phase() == "Running", timeout_s=90, what="running again")
        wait_for(lambda: (cluster.job_object(name) or {})["spec"]["suspend"] is False,
                 timeout_s=15, what="spec.suspend written back by tidemill's resume")
    with server(cluster, tmp_path / "state") as (_, api):  # a restart reads it all again
        time.sleep(3)
        assert api.get(name).phase == "Running"
        api.suspend(name)
        wait_for(lambda: object_phase() == "Suspended", timeout_s=60, what="suspended again")
        wait_for(lambda: (cluster.job_object(name) or {})["spec"]["suspend"] is True,
                 timeout_s=15, what="spec.suspend written by tidemill's suspend")
        suspend(False)
        wait_for(lambda: object_phase() == "Running", timeout_s=90,
                 what="the object's status to say Running once spec.suspend is false")
        assert len(cluster.pods(name)) == 2


def test_a_missing_image_is_an_event_naming_the_replica_and_the_policy_decides(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.example("digits_ddp", image="registry.invalid/does-not-exist:1")
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        final = api.wait(job.metadata.name, timeout_s=120)
        assert final.phase == "Failed"
        warnings = [
            f"{e.replica} {e.message}"
            for e in api.job_events(job.metadata.name)
            if e.type == "Warning"
        ]
        assert any(
            re.search(r"worker-\d.*(ErrImagePull|ImagePullBackOff)", m) for m in warnings
        ), warnings


def test_a_namespace_the_engine_may_not_use_no_image_or_a_resource_no_node_has_are_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    job = cluster.example("digits_ddp")
    elsewhere = job.metadata.model_copy(update={"namespace": "elsewhere"})
    other = job.model_copy(update={"metadata": elsewhere})
    with server(cluster, tmp_path / "state", namespaces=(cluster.namespace,)) as (_, api):
        with pytest.raises(ApiError) as refused:
            api.submit(other)
        assert refused.value.status == 422
        assert [e.path for e in refused.value.errors] == ["metadata.namespace"]
        with pytest.raises(ApiError) as no_image:
            api.submit(cluster.example("digits_ddp", image=None))
        assert [e.path for e in no_image.value.errors] == ["spec.roles.worker.image"]
        gpus = max(node.capacity.gpu for node in api.nodes()) + 1
        with pytest.raises(ApiError) as too_big:
            api.submit(cluster.example("digits_ddp", resources={"cpu": 1, "gpu": gpus}))
        assert too_big.value.status == 422
        assert "gpu" in str(too_big.value).lower()
        assert cluster.job_object(job.metadata.name) is None
        assert api.jobs() == []


def test_logs_follow_a_running_pod_through_the_pod_log_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    ticker = cluster.sleeper("ticker", replicas=1).model_dump(by_alias=True, mode="json")
    ticker["spec"]["roles"]["worker"]["command"] = [
        "python",
        "-c",
        "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.2)",
    ]
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(ticker)
        wait_for(lambda: api.get("ticker").phase == "Running", timeout_s=60, what="running")
        started = time.monotonic()
        seen = []
        for line in api.logs("ticker", role="worker", index=0, follow=True):
            seen.append(line)
            if len(seen) == 8:
                break
        assert seen == [f"tick {i}" for i in range(8)]
        assert time.monotonic() - started >= 0.8, "lines arrived as the pod printed them"
        later = list(api.logs("ticker", role="worker", index=0, tail_lines=2))
        assert int(later[-1].split()[1]) >= 7


def test_a_gang_asking_an_extended_resource_lands_on_the_node_offering_it_or_waits(
    tmp_path: Path,
) -> None:
    fpga = "example.com/fpga"
    for cluster in emulated(tmp_path):
        assert cluster.emulator is not None
        cluster.emulator.add_node("fpga-0", cpu="4", memory="16Gi", extended={fpga: "4"})
        options = {"extended_resources": (fpga,)}
        with server(cluster, tmp_path / "state", **options) as (_, api):
            offered = {node.name: node for node in api.nodes()}
            assert set(offered) >= {"node-0", "node-1", "fpga-0"}
            wide = cluster.sleeper("wide", replicas=2, cpu=0.5)
            api.submit(with_extended(wide, {fpga: 2}))
            wait_for(lambda: api.get("wide").phase == "Running", timeout_s=90,
                     what="the fpga gang running")
            assert {p.spec.node_name for p in cluster.pods("wide")} == {"fpga-0"}
            api.submit(with_extended(cluster.sleeper("more", replicas=1, cpu=0.5), {fpga: 1}))
            view = wait_for(
                lambda: (v := api.get("more")).pending_reason and v, timeout_s=30,
                what="a pending reason",
            )
            assert view.phase == "Pending"
            assert view.pending_reason.code == "InsufficientExtendedResource"
            assert fpga in view.pending_reason.message
            assert cluster.pods("more") == [], "a waiting gang holds no pod"
            with pytest.raises(ApiError) as refused:
                api.submit(with_extended(cluster.sleeper("huge", replicas=1), {fpga: 5}))
            assert refused.value.status == 422
            assert [e.path for e in refused.value.errors] == [
                "spec.roles.worker.resources.extended"
            ]
            api.delete("wide")
            wait_for(lambda: api.get("more").phase == "Running", timeout_s=90,
                     what="the waiting job bound once the fpgas were free")


def with_extended(job: TrainingJob, extended: dict[str, int]) -> TrainingJob:
    document = job.to_document()
    for role in document["spec"]["roles"].values():
        role["resources"]["extended"] = extended
    return TrainingJob.model_validate(document)


SPIN = """
held = bytearray(64 * 2**20)
for i in range(0, len(held), 4096):
    held[i] = 1
while True:
    pass
"""


def test_what_a_pod_uses_comes_from_the_clusters_metrics_server(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A spinning pod's cores and memory reach the job view and /metrics through
    metrics.k8s.io (metrics-server on a real cluster; the emulator's otherwise)."""
    if cluster.emulator is None and not has_metrics_server(cluster):
        pytest.skip("this cluster runs no metrics-server (metrics.k8s.io is not served)")
    spinner = cluster.sleeper("spinner", replicas=1).model_dump(by_alias=True, mode="json")
    spinner["spec"]["roles"]["worker"]["command"] = ["python", "-c", SPIN]
    with server(cluster, tmp_path / "state") as (runner, api):
        api.submit(spinner)
        wait_for(lambda: api.get("spinner").phase == "Running", timeout_s=60, what="running")

        def measured() -> object:
            usage = api.get("spinner").replicas[0].usage
            spinning = usage is not None and (usage.cpu_cores or 0) > 0.3
            return spinning and usage.memory_bytes > 64 * 2**20 and usage

        wait_for(measured, timeout_s=90, what="the pod measured spinning with 64 MiB")
        text = httpx.get(f"{runner.url}/metrics").text
        assert 'tidemill_replica_cpu_cores{job_name="spinner"' in text
        api.delete("spinner")


def has_metrics_server(cluster: Cluster) -> bool:
    with cluster.api() as api:
        try:
            client.CustomObjectsApi(api).list_namespaced_custom_object(
                "metrics.k8s.io", "v1beta1", cluster.namespace, "pods"
            )
        except client.ApiException:
            return False
    return True


def test_exec_runs_a_command_in_a_replicas_container_and_passes_its_exit_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``tidemill exec`` on Kubernetes goes through ``pods/exec``: the command sees the
    container's environment, its output streams back, and its exit code is returned."""
    probe = "import os, sys; print('index', os.environ['TIDEMILL_INDEX']); sys.exit(3)"
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(cluster.sleeper("shell", replicas=2))
        wait_for(lambda: api.get("shell").phase == "Running", timeout_s=60, what="running")
        seen: list[str] = []
        code = api.exec("shell", "worker", 1, ["python", "-c", probe], seen.append)
        assert (code, "".join(seen).split()) == (3, ["index", "1"])
        missing = api.exec("shell", "worker", 0, ["no-such-program"], seen.append)
        assert missing != 0
        api.delete("shell")


def test_under_auth_an_elastic_job_trains_with_its_credential_from_its_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    """As deploy/kubernetes runs it (auth on): the job's credential reaches its master and
    workers through its Secret, the workers prove it to the master, which refuses a
    connection that cannot (checked where this test reaches pod IPs: the emulator), and
    the master posts its events with it."""
    result = tmp_path / "result.json"
    job = cluster.example(
        "elastic",
        args=["--steps", "200", "--step-time", "0.05", "--result", str(result)],
        resources={"cpu": 0.5, "memory": "512Mi"},
    )
    name = job.metadata.name
    with server(cluster, tmp_path / "state", auth=True) as (_, api):
        api.submit(job)
        address = wait_for(lambda: master_address(api, name), timeout_s=120, what="the master")
        _, port = cast(tuple[str, int], address)
        if cluster.emulator is not None:
            [master] = [
                pod for pod in cluster.pods(name)
                if pod.metadata.labels[names.ROLE_LABEL] == "master"
            ]
            stranger = {"op": "register", "replica": "worker-0", "pid": 1, "status": "new"}
            with socket.create_connection((master.status.pod_ip, port), timeout=10) as sock:
                sock.sendall(json.dumps(stranger).encode() + b"\n")
                answer = json.loads(sock.makefile("rb").readline())
            assert answer["op"] == "refused" and "sent no proof" in answer["message"], answer
        final = api.wait(name, timeout_s=240)
        assert final.phase == "Succeeded", final.message
        reasons = {event.reason for event in api.job_events(name)}
        assert "EpochStarted" in reasons, reasons  # posted by the master with the credential
        children = cluster.children(final.uid)
        assert sum(child.startswith("secret/") for child in children) == 1, children
        api.delete(name)
        wait_for(lambda: not cluster.children(final.uid), timeout_s=60, what="every child gone")
    if cluster.emulator is not None:
        assert json.loads(result.read_text())["committed_step"] == 200


LISTENER = (
    "import os, socket\n"
    "server = socket.create_server((os.environ['TIDEMILL_POD_IP'], 8080))\n"
    "while True:\n"
    "    server.accept()[0].close()\n"
)


def listening(cluster: Cluster, name: str) -> TrainingJob:
    """A two-pod job whose pods accept TCP connections on their pod IP, port 8080."""
    document = cluster.sleeper(name).to_document()
    document["spec"]["roles"]["worker"]["command"] = ["python", "-c", LISTENER]
    return TrainingJob.model_validate(document)


def test_a_jobs_network_policy_admits_only_its_own_pods_and_goes_with_the_job(
    cluster: Cluster, tmp_path: Path
) -> None:
    """One NetworkPolicy per job selects exactly its pods and lets in only its pods
    (PyTorch's rendezvous store authenticates no peer)."""
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(cluster.sleeper("guarded"))
        api.submit(cluster.sleeper("neighbour", replicas=1))
        for name in ("guarded", "neighbour"):
            wait_for(lambda n=name: api.get(n).phase == "Running", timeout_s=90, what=name)
        guarded = api.get("guarded")
        [policy] = cluster.network_policies(guarded.uid)
        selector = policy.spec.pod_selector.match_labels
        pods = cluster.pods("guarded")
        assert len(pods) == 2
        assert all(selector.items() <= pod.metadata.labels.items() for pod in pods)
        [other] = cluster.pods("neighbour")
        assert not selector.items() <= other.metadata.labels.items()
        assert policy.spec.policy_types == ["Ingress"]
        assert [[peer.pod_selector.match_labels for peer in rule._from]
                for rule in policy.spec.ingress] == [[selector]]
        assert policy.metadata.owner_references[0].kind == names.KIND
        api.delete("guarded")
        wait_for(lambda: not cluster.children(guarded.uid), timeout_s=60,
                 what="every child gone, the NetworkPolicy too")
        assert len(cluster.network_policies(api.get("neighbour").uid)) == 1


def test_another_jobs_pod_cannot_connect_to_a_jobs_pods_but_its_own_can(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The policy enforced: only on a real cluster whose network plugin implements
    NetworkPolicy (``TIDEMILL_TEST_NETWORK_POLICY=1``); emulated pods share the host's
    network, so the emulator stores policies without enforcing them."""
    if cluster.emulator is not None or not os.environ.get("TIDEMILL_TEST_NETWORK_POLICY"):
        pytest.skip("needs a real cluster that enforces NetworkPolicy "
                    "(set TIDEMILL_TEST_NETWORK_POLICY=1 with TIDEMILL_TEST_KUBECONFIG)")
    probe = (  # tries for 15 s: the target may still be starting its listener
        "import socket, sys, time\n"
        "deadline = time.monotonic() + 15\n"
        "while True:\n"
        "    try:\n"
        "        socket.create_connection((sys.argv[1], 8080), timeout=3).close()\n"
        "        sys.exit(0)\n"
        "    except OSError as exc:\n"
        "        if time.monotonic() > deadline:\n"
        "            sys.exit(f'blocked: {exc}')\n"
        "        time.sleep(0.5)\n"
    )
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(listening(cluster, "guarded"))
        api.submit(listening(cluster, "outsider"))
        for name in ("guarded", "outsider"):
            wait_for(lambda n=name: api.get(n).phase == "Running", timeout_s=90, what=name)
        target = next(
            pod.status.pod_ip
            for pod in cluster.pods("guarded")
            if pod.metadata.labels[names.INDEX_LABEL] == "0"
        )
        seen: list[str] = []
        own = api.exec("guarded", "worker", 1, ["python", "-c", probe, target], seen.append)
        assert own == 0, "".join(seen)  # so the target listens: the outsider is blocked
        outsider = api.exec("outsider", "worker", 0, ["python", "-c", probe, target], seen.append)
        assert outsider != 0, "a pod of another job connected"
        api.delete("guarded")
        api.delete("outsider")
