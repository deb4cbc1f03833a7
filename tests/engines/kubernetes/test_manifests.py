"""The objects the Kubernetes engine makes, checked against the official Kubernetes
schemas (kubernetes-validate, strict) for 1.29 and the newest it ships, and against
what the job asks for."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tidemill.api.loader import load_job_file, load_job_text
from tidemill.engines.base import LaunchSpec
from tidemill.engines.kubernetes import manifests, names
from tidemill.engines.kubernetes.options import KubernetesOptionError, KubernetesOptions
from tidemill.engines.kubernetes.plan import job_manifests

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*/job.yaml"))
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
IMAGE = "ghcr.io/tidemill/tidemill:0.1.0"


def validate(obj: dict[str, object]) -> None:
    if obj["kind"] in ("TrainingJob", "PodGroup"):
        return  # custom objects: tests/api/test_crd.py checks TrainingJobs against the CRD
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("gang", ["tidemill", "volcano"])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_every_object_for_every_example_is_valid_kubernetes(example: Path, gang: str) -> None:
    job = load_job_file(example)
    objects = job_manifests(job, KubernetesOptions(default_image=IMAGE, gang_scheduler=gang))
    kinds = [o["kind"] for o in objects]
    assert kinds[:4] == ["TrainingJob", "Service", "Secret", "NetworkPolicy"]
    assert ("PodGroup" in kinds) == (gang == "volcano")
    for obj in objects:
        validate(obj)
    pods = [o for o in objects if o["kind"] == "Pod"]
    scheduler = "volcano" if gang == "volcano" else "tidemill"
    assert {p["spec"]["schedulerName"] for p in pods} == {scheduler}
    assert all(not p["spec"].get("nodeName") for p in pods), "pods are created unbound"


def test_the_network_policy_lets_into_the_jobs_pods_only_its_own_pods() -> None:
    job = load_job_file(ROOT / "examples" / "ctr_ps" / "job.yaml")
    objects = job_manifests(job, KubernetesOptions(default_image=IMAGE))
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    same_job = {"matchLabels": {names.UID_LABEL: "dry-run"}}
    assert policy["spec"] == {
        "podSelector": same_job,
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": same_job}]}],
    }
    pods = [o for o in objects if o["kind"] == "Pod"]
    assert {p["metadata"]["labels"][names.ROLE_LABEL] for p in pods} == {"master", "ps", "worker"}
    assert all(p["metadata"]["labels"][names.UID_LABEL] == "dry-run" for p in pods)
    assert policy["metadata"]["ownerReferences"][0]["kind"] == names.KIND
    without = job_manifests(job, KubernetesOptions(default_image=IMAGE, network_policy=False))
    assert "NetworkPolicy" not in {o["kind"] for o in without}


def test_a_pod_carries_labels_owner_dns_and_the_role_resources() -> None:
    job = load_job_text(
        """
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: ctr, namespace: ads}
spec:
  roles:
    worker:
      replicas: 2
      minReplicas: 1
      maxReplicas: 3
      image: registry.example/ctr:7
      resources: {cpu: 2.5, memory: 3Gi, gpu: 2}
      command: [python, train.py]
"""
    )
    objects = job_manifests(job, KubernetesOptions())
    service = next(o for o in objects if o["kind"] == "Service")
    labels = [(o, o["metadata"]["labels"]) for o in objects if o["kind"] == "Pod"]
    pods = {lab[names.ROLE_LABEL] + lab[names.INDEX_LABEL]: o for o, lab in labels}
    assert sorted(pods) == ["master0", "worker0", "worker1", "worker2"]
    assert service["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {names.UID_LABEL: "dry-run"},
    }
    worker = pods["worker1"]
    spec = worker["spec"]
    container = spec["containers"][0]
    assert spec["hostname"] == "ctr-worker-1" and spec["subdomain"] == "ctr"
    assert spec["restartPolicy"] == "Never"
    assert container["image"] == "registry.example/ctr:7"
    assert container["resources"]["requests"] == {
        "cpu": "2500m",
        "memory": str(3 * 2**30),
        "nvidia.com/gpu": "2",
    }
    assert container["resources"]["limits"] == container["resources"]["requests"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MASTER_ADDR"]["value"] == "ctr-worker-0.ctr.ads.svc"
    assert env["TIDEMILL_MASTER_ADDR"]["value"] == "ctr-master-0.ctr.ads.svc:29400"
    assert env["LOCAL_RANK"]["value"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in env, "the device plugin sets it in a pod"
    assert env["TIDEMILL_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ctr-tidemill-token"
    owner = worker["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "ctr", True)
    master = pods["master0"]["spec"]["containers"][0]
    master_env = {e["name"]: e.get("value") for e in master["env"]}
    assert master["command"] == ["python", "-m", "tidemill.master"]
    assert master_env["TIDEMILL_MASTER_BIND"] == "0.0.0.0"
    assert master_env["TIDEMILL_MASTER_HOST"] == "ctr-master-0.ctr.ads.svc"


def test_a_ps_role_with_tables_runs_tidemill_s_server_and_every_pod_knows_the_servers() -> None:
    job = load_job_text(
        """
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: ctr, namespace: ads}
spec:
  mode: ps
  roles:
    ps:
      replicas: 2
      tables: [{name: user, dim: 8, optimizer: {name: adagrad, lr: 0.05}}]
    worker: {replicas: 2, command: [python, train.py]}
"""
    )
    objects = job_manifests(job, KubernetesOptions(default_image=IMAGE))
    for obj in objects:
        validate(obj)
    pods = {
        (p["metadata"]["labels"][names.ROLE_LABEL], p["spec"]["containers"][0]["command"][-1]): {
            e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]
        }
        for p in objects
        if p["kind"] == "Pod"
    }
    assert set(pods) == {
        ("master", "tidemill.master"),
        ("ps", "tidemill.ps"),
        ("worker", "train.py"),
    }
    servers = "ctr-ps-0.ctr.ads.svc:2222,ctr-ps-1.ctr.ads.svc:2222"
    assert pods[("worker", "train.py")]["TIDEMILL_PS_ADDRS"] == servers
    assert pods[("ps", "tidemill.ps")]["TIDEMILL_PS_ADDRS"] == servers
    assert pods[("master", "tidemill.master")]["TIDEMILL_PS_ADDRS"] == servers  # polls STATS
    tables = json.loads(pods[("worker", "train.py")]["TIDEMILL_PS"])
    assert (tables["replicas"], tables["consistency"], tables["tables"][0]["dim"]) == (2, "sync", 8)


@pytest.mark.parametrize(
    ("sharing", "expected"),
    [
        (
            "hami",
            {
                "nvidia.com/gpu": "1",
                "nvidia.com/gpucores": "50",
                "nvidia.com/gpumem-percentage": "50",
            },
        ),
        ("time-slicing", {"nvidia.com/gpu.shared": "1"}),
    ],
)
def test_a_fractional_gpu_maps_to_the_sharing_plugin(
    sharing: str, expected: dict[str, str]
) -> None:
    assert manifests.gpu_resources(0.5, KubernetesOptions(gpu_sharing=sharing)) == expected


def test_a_fractional_gpu_without_a_sharing_plugin_is_refused() -> None:
    with pytest.raises(ValueError, match="--gpu-sharing hami or time-slicing"):
        manifests.gpu_resources(0.5, KubernetesOptions(gpu_sharing="none"))
    with pytest.raises(KubernetesOptionError, match="expected one of hami"):
        KubernetesOptions(gpu_sharing="mps")


def test_a_role_s_extended_resources_are_requested_and_limited_and_the_pod_is_valid() -> None:
    job = load_job_text(
        """
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: fpga, namespace: ads}
spec:
  roles:
    worker:
      replicas: 2
      image: registry.example/fpga:1
      resources: {cpu: 1, memory: 1Gi, extended: {example.com/fpga: 2, rdma/hca: 1}}
      command: [python, train.py]
"""
    )
    objects = job_manifests(job, KubernetesOptions(default_image=IMAGE))
    pods = [o for o in objects if o["kind"] == "Pod"]
    worker = next(p for p in pods if p["metadata"]["labels"][names.ROLE_LABEL] == "worker")
    resources = worker["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {
        "cpu": "1",
        "memory": str(2**30),
        "example.com/fpga": "2",
        "rdma/hca": "1",
    }
    assert resources["limits"] == resources["requests"]
    for obj in pods:
        validate(obj)


def test_an_extended_resource_option_with_a_bad_name_is_refused() -> None:
    with pytest.raises(KubernetesOptionError, match="'fpga' is not an extended resource name"):
        KubernetesOptions(extended_resources=("fpga",))


def test_long_names_are_cut_to_dns_labels_and_stay_distinct() -> None:
    long = "a" * 60
    host = names.hostname(f"ns/{long}", "worker", 11)
    assert len(host) <= 63 and host != names.hostname(f"ns/{long}", "worker", 12)
    assert names.service_name("ns/7up") == "tj-7up"
    first = names.pod_name("ns/ctr", "worker", 0, "launch-1")
    assert first != names.pod_name("ns/ctr", "worker", 0, "launch-2")


def test_the_manifests_command_prints_valid_objects_and_refuses_a_job_without_image() -> None:
    example = str(ROOT / "examples" / "digits_ddp" / "job.yaml")
    run = [sys.executable, "-m", "tidemill", "manifests", example]
    done = subprocess.run(
        [*run, "--default-image", IMAGE], capture_output=True, text=True, timeout=60, check=True
    )
    objects = list(yaml.safe_load_all(done.stdout))
    kinds = ["TrainingJob", "Service", "Secret", "NetworkPolicy", "Pod", "Pod"]
    assert [o["kind"] for o in objects] == kinds
    for obj in objects:
        validate(obj)
    open_pods = subprocess.run(
        [*run, "--default-image", IMAGE, "--no-network-policy"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert [o["kind"] for o in yaml.safe_load_all(open_pods.stdout)] == [
        kind for kind in kinds if kind != "NetworkPolicy"
    ]
    as_json = subprocess.run(
        [*run, "--default-image", IMAGE, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(as_json.stdout) == objects
    refused = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "spec.roles.worker.image" in refused.stderr


def test_docstring_examples() -> None:
    for module in (names, manifests):
        failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failures == 0


def test_a_pod_pinned_beside_its_gpus_carries_the_numa_cpus_as_an_annotation() -> None:
    spec = LaunchSpec(
        job="ads/ctr",
        job_uid="u1",
        launch_id="l1",
        role="worker",
        index=0,
        argv=("python", "train.py"),
        env={},
        working_dir="",
        node="gpu-a1",
        gpu_ids=(4, 5),
        cpu_ids=(16, 17, 18, 19, 48),
        cpu=4,
        memory_bytes=2**30,
        gpus=2,
    )
    options = KubernetesOptions(default_image="registry.example/ctr:7")
    pod = manifests.pod_manifest(spec, manifests.Owner("ctr", "u1"), options)
    validate(pod)
    assert pod["metadata"]["annotations"][names.CPUSET_ANNOTATION] == "16-19,48"
    unpinned = manifests.pod_manifest(
        replace(spec, cpu_ids=()), manifests.Owner("ctr", "u1"), options
    )
    assert names.CPUSET_ANNOTATION not in unpinned["metadata"]["annotations"]
