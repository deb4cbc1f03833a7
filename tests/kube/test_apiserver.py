"""The emulated API server through the official client: verbs, semantics, watches, faults."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from . import KubeEmulator
from .helpers import TRAININGJOB_CRD, api, bind, pod, until

NS = "default"


@pytest.fixture
def v1(kube: KubeEmulator) -> client.CoreV1Api:
    return client.CoreV1Api(api(kube))


def _crd(kube: KubeEmulator) -> client.CustomObjectsApi:
    client.ApiextensionsV1Api(api(kube)).create_custom_resource_definition(TRAININGJOB_CRD)
    return client.CustomObjectsApi(api(kube))


def _job(name: str, **spec: object) -> dict[str, object]:
    return {"apiVersion": "tidemill.io/v1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"replicas": 2, **spec}}


def test_load_kube_config_and_unauthorized(kube: KubeEmulator, tmp_path) -> None:
    from kubernetes import config

    cfg = client.Configuration()
    config.load_kube_config(config_file=kube.write_kubeconfig(str(tmp_path / "kc")),
                            client_configuration=cfg)
    assert [n.metadata.name for n in client.CoreV1Api(client.ApiClient(cfg)).list_namespace()
            .items] == ["default", "kube-system"]
    bad = client.Configuration(host=kube.url)
    with pytest.raises(ApiException) as e:
        client.CoreV1Api(client.ApiClient(bad)).list_namespace()
    assert e.value.status == 401


def test_create_get_list_update_conflict(v1: client.CoreV1Api) -> None:
    made = v1.create_namespaced_secret(NS, {"metadata": {"name": "s", "labels": {"a": "1"}},
                                            "stringData": {"k": "v"}})
    assert made.data == {"k": "dg=="} and made.metadata.uid
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}})
    assert e.value.status == 409 and "AlreadyExists" in e.value.body
    listed = v1.list_namespaced_secret(NS)
    assert int(listed.metadata.resource_version) >= int(made.metadata.resource_version)
    stale = v1.read_namespaced_secret("s", NS)
    fresh = copy.deepcopy(stale)
    fresh.metadata.labels = {"a": "2"}
    updated = v1.replace_namespaced_secret("s", NS, fresh)
    assert int(updated.metadata.resource_version) > int(stale.metadata.resource_version)
    stale.metadata.labels = {"a": "3"}
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_secret("s", NS, stale)
    assert e.value.status == 409 and "Conflict" in e.value.body
    stale.metadata.resource_version = None  # unconditional update is allowed
    assert v1.replace_namespaced_secret("s", NS, stale).metadata.labels == {"a": "3"}
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_secret("nowhere", {"metadata": {"name": "s"}})
    assert e.value.status == 404
    gen = v1.create_namespaced_secret(NS, {"metadata": {"generateName": "g-"}})
    assert gen.metadata.name.startswith("g-") and len(gen.metadata.name) == 7


def test_invalid_names_and_labels_are_rejected(v1: client.CoreV1Api) -> None:
    for meta in ({"name": "Bad_Name"}, {"name": "ok", "labels": {"a": "x" * 64}}):
        with pytest.raises(ApiException) as e:
            v1.create_namespaced_secret(NS, {"metadata": meta})
        assert e.value.status == 422


def test_patches_and_pod_immutability(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("p", ["true"], labels={"a": "1", "b": "2"}))
    out = v1.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out.metadata.labels == {"b": "2", "c": "3"}
    out = v1.patch_namespaced_pod("p", NS, [{"op": "add", "path": "/metadata/labels/d",
                                             "value": "4"}])
    assert out.metadata.labels["d"] == "4"
    out = v1.patch_namespaced_pod("p", NS, {"metadata": {"finalizers": ["x/y"]}})
    out = v1.patch_namespaced_pod("p", NS, {"metadata": {"finalizers": ["x/z"]}})
    assert out.metadata.finalizers == ["x/y", "x/z"]  # strategic merge: a set union
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("p", NS, {"spec": {"restartPolicy": "Always"}})
    assert e.value.status == 422
    # containers merge by name under strategic merge patch
    out = v1.patch_namespaced_pod("p", NS, {"spec": {"containers": [
        {"name": "main", "image": "python:3.12"}]}})
    assert out.spec.containers[0].image == "python:3.12"
    assert out.spec.containers[0].command == ["true"]
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod("p", NS, {"metadata": {"resourceVersion": "1"}})
    assert e.value.status == 409


def test_status_subresource_is_separate(kube: KubeEmulator) -> None:
    co = _crd(kube)
    job = co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs",
                                             {**_job("j"), "status": {"phase": "X"}})
    assert "status" not in job and job["metadata"]["generation"] == 1
    job["status"] = {"phase": "Running"}
    job["metadata"]["labels"] = {"ignored": "yes"}
    out = co.replace_namespaced_custom_object_status("tidemill.io", "v1", NS, "trainingjobs",
                                                     "j", job)
    assert out["status"] == {"phase": "Running"} and not out["metadata"].get("labels")
    assert out["metadata"]["generation"] == 1
    out["spec"]["replicas"] = 3
    out["status"] = {"phase": "Ignored"}
    again = co.replace_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs", "j",
                                                out)
    assert again["status"] == {"phase": "Running"} and again["metadata"]["generation"] == 2
    patched = co.patch_namespaced_custom_object_status("tidemill.io", "v1", NS, "trainingjobs",
                                                       "j", {"status": {"phase": "Done"}})
    assert patched["status"]["phase"] == "Done" and patched["spec"]["replicas"] == 3


def test_crd_schema_validation_pruning_defaults(kube: KubeEmulator) -> None:
    co = _crd(kube)
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs",
                                           _job("a", replicas="two"))
    assert e.value.status == 422 and "spec.replicas" in e.value.body
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs",
                                           _job("a", replicas=0))
    assert e.value.status == 422
    made = co.create_namespaced_custom_object(
        "tidemill.io", "v1", NS, "trainingjobs",
        _job("a", unknown=1, queue=None, port="http", extra={"free": {"x": 1}}))
    spec = made["spec"]
    assert "unknown" not in spec and spec["queue"] is None and spec["port"] == "http"
    assert spec["extra"] == {"free": {"x": 1}} and spec["mode"] == "allreduce"
    with pytest.raises(ApiException) as e:
        co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs",
                                           _job("b", port=[1]))
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:  # not served before its CRD
        co.list_namespaced_custom_object("scheduling.volcano.sh", "v1beta1", NS, "podgroups")
    assert e.value.status == 404
    listed = co.list_cluster_custom_object("tidemill.io", "v1", "trainingjobs")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]


def test_selectors_and_pagination(v1: client.CoreV1Api) -> None:
    for i, (tier, zone) in enumerate([("a", "x"), ("b", "x"), ("b", "y"), (None, "y")]):
        labels = {"zone": zone, **({"tier": tier} if tier else {})}
        v1.create_namespaced_pod(NS, pod(f"p{i}", ["true"], labels=labels))

    def names(**kw: str) -> list[str]:
        return [p.metadata.name for p in v1.list_namespaced_pod(NS, **kw).items]

    assert names(label_selector="tier=b") == ["p1", "p2"]
    assert names(label_selector="tier!=b") == ["p0", "p3"]
    assert names(label_selector="tier in (a,b),zone==x") == ["p0", "p1"]
    assert names(label_selector="tier notin (a)") == ["p1", "p2", "p3"]
    assert names(label_selector="!tier") == ["p3"]
    assert names(label_selector="tier") == ["p0", "p1", "p2"]
    assert names(field_selector="metadata.name=p2") == ["p2"]
    assert names(field_selector="status.phase=Pending,spec.nodeName=") == ["p0", "p1", "p2", "p3"]
    with pytest.raises(ApiException) as e:
        names(field_selector="spec.bogus=1")
    assert e.value.status == 400
    first = v1.list_namespaced_pod(NS, limit=3)
    assert len(first.items) == 3 and first.metadata._continue
    rest = v1.list_namespaced_pod(NS, limit=3, _continue=first.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p3"] and not rest.metadata._continue


def test_watch_from_resource_version_and_selector_transitions(v1: client.CoreV1Api) -> None:
    start = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("w", ["true"], labels={"k": "1"}))
    v1.patch_namespaced_pod("w", NS, {"metadata": {"labels": {"k": "2"}}})
    v1.patch_namespaced_pod("w", NS, {"metadata": {"labels": {"k": "1"}}})
    v1.delete_namespaced_pod("w", NS)
    events = list(watch.Watch().stream(v1.list_namespaced_pod, NS, label_selector="k=1",
                                       resource_version=start, timeout_seconds=1))
    seen = [(e["type"], e["object"].metadata.labels.get("k")) for e in events]
    # leaving the selector is a DELETED carrying the previous object at the new version
    assert seen == [("ADDED", "1"), ("DELETED", "1"), ("ADDED", "1"), ("DELETED", "1")]
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(set(versions))


def test_watch_initial_state_then_changes(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("a", ["true"]))
    w = watch.Watch()
    got: list[tuple[str, str]] = []

    def consume() -> None:
        for e in w.stream(v1.list_namespaced_pod, NS, timeout_seconds=3):
            got.append((e["type"], e["object"].metadata.name))
            if len(got) == 2:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    until(lambda: got)
    v1.create_namespaced_pod(NS, pod("b", ["true"]))
    t.join(5)
    assert got == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_gone_after_compact_raises_410(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("a", ["true"]))
    kube.compact()
    with pytest.raises(ApiException) as e:
        for _ in watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=rv):
            pass
    assert e.value.status == 410


def test_bookmarks_arrive(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube.api.bookmark_interval = 0.2
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    types = [e["type"] for e in watch.Watch().stream(
        v1.list_namespaced_pod, NS, resource_version=rv, allow_watch_bookmarks=True,
        timeout_seconds=1)]
    assert types.count("BOOKMARK") >= 2 and set(types) == {"BOOKMARK"}


def test_drop_and_duplicate_watch_events(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    got: list[str] = []
    w = watch.Watch()

    def consume() -> None:
        for e in w.stream(v1.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=3):
            got.append(e["object"].metadata.name)

    t = threading.Thread(target=consume)
    t.start()
    until(lambda: kube.api.watchers)
    kube.drop_watch_events(1)
    v1.create_namespaced_pod(NS, pod("lost", ["true"]))
    kube.duplicate_watch_events(1)
    v1.create_namespaced_pod(NS, pod("twice", ["true"]))
    until(lambda: len(got) == 2)
    kube.close_watches()
    t.join(5)
    assert got == ["twice", "twice"] and not t.is_alive()
    assert {p.metadata.name for p in v1.list_namespaced_pod(NS).items} == {"lost", "twice"}


def test_binding(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube.add_node("n1", run_pods=False)
    v1.create_namespaced_pod(NS, pod("b", ["true"]))
    bind(v1, NS, "b", "n1")
    got = v1.read_namespaced_pod("b", NS)
    assert got.spec.node_name == "n1"
    assert any(c.type == "PodScheduled" and c.status == "True" for c in got.status.conditions)
    with pytest.raises(ApiException) as e:
        bind(v1, NS, "b", "n2")
    assert e.value.status == 409 and "already assigned" in e.value.body
    with pytest.raises(ApiException) as e:
        bind(v1, NS, "nope", "n1")
    assert e.value.status == 404
    until(lambda: v1.read_namespaced_pod("b", NS).status.phase == "Running")


def test_owner_reference_cascade(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    co = _crd(kube)
    job = co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs", _job("j"))
    ref = {"apiVersion": "tidemill.io/v1", "kind": "TrainingJob", "name": "j",
           "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    p = pod("j-0", ["true"])
    p["metadata"]["ownerReferences"] = [ref]
    v1.create_namespaced_pod(NS, p)
    v1.create_namespaced_service(NS, {"metadata": {"name": "j", "ownerReferences": [ref]},
                                      "spec": {"clusterIP": "None", "selector": {"a": "b"}}})
    co.delete_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs", "j")
    until(lambda: not kube.objects("pods", NS) and not kube.objects("services", NS))


def _policy(name: str, **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": spec}


def test_network_policies_are_defaulted_validated_and_cascaded(kube: KubeEmulator) -> None:
    net = client.NetworkingV1Api(api(kube))
    same = {"matchLabels": {"job": "j"}}
    made = net.create_namespaced_network_policy(
        NS, _policy("ingress", podSelector=same, ingress=[{"from": [{"podSelector": same}],
                                                          "ports": [{"port": 29500}]}]))
    assert made.spec.policy_types == ["Ingress"]
    assert made.spec.ingress[0].ports[0].protocol == "TCP"
    assert made.metadata.generation == 1
    both = net.create_namespaced_network_policy(NS, _policy("both", podSelector={}, egress=[{}]))
    assert both.spec.policy_types == ["Ingress", "Egress"]
    bad = {
        "no-selector": ({"policyTypes": ["Ingress"]}, "spec.podSelector"),
        "two-peers": ({"podSelector": {}, "ingress": [{"from": [
            {"podSelector": same, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
            "spec.ingress[0].from[0]"),
        "no-peer": ({"podSelector": {}, "ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]"),
        "bad-type": ({"podSelector": {}, "policyTypes": ["Inbound"]}, "spec.policyTypes[0]"),
        "bad-cidr": ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0/33"}}]}]},
                     "spec.egress[0].to[0].ipBlock.cidr"),
        "bad-range": ({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
                      "spec.ingress[0].ports[0].endPort"),
        "bad-label": ({"podSelector": {"matchLabels": {"job": "-x-"}}},
                      "spec.podSelector.matchLabels"),
        "bad-operator": ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
                         "spec.podSelector.matchExpressions[0].operator"),
    }
    for name, (spec, field) in bad.items():
        with pytest.raises(ApiException) as e:
            net.create_namespaced_network_policy(NS, {"metadata": {"name": name}, "spec": spec})
        assert e.value.status == 422, name
        assert field in e.value.body, (name, e.value.body)
    co = _crd(kube)
    job = co.create_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs", _job("j"))
    ref = {"apiVersion": "tidemill.io/v1", "kind": "TrainingJob", "name": "j",
           "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    owned = _policy("owned", podSelector=same)
    owned["metadata"]["ownerReferences"] = [ref]  # type: ignore[index]
    net.create_namespaced_network_policy(NS, owned)
    co.delete_namespaced_custom_object("tidemill.io", "v1", NS, "trainingjobs", "j")
    until(lambda: sorted(p["metadata"]["name"] for p in kube.objects("networkpolicies", NS))
          == ["both", "ingress"])


def test_orphan_and_foreground(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    owner = v1.create_namespaced_secret(NS, {"metadata": {"name": "o"}})
    ref = {"apiVersion": "v1", "kind": "Secret", "name": "o", "uid": owner.metadata.uid}
    v1.create_namespaced_secret(NS, {"metadata": {"name": "d", "ownerReferences": [ref]}})
    v1.delete_namespaced_secret("o", NS, propagation_policy="Orphan")
    until(lambda: not v1.read_namespaced_secret("d", NS).metadata.owner_references)
    until(lambda: [s["metadata"]["name"] for s in kube.objects("secrets", NS)] == ["d"])
    owner = v1.create_namespaced_secret(NS, {"metadata": {"name": "f"}})
    ref = {"apiVersion": "v1", "kind": "Secret", "name": "f", "uid": owner.metadata.uid}
    v1.create_namespaced_secret(NS, {"metadata": {"name": "fd", "ownerReferences": [ref],
                                                  "finalizers": ["test/hold"]}})
    v1.delete_namespaced_secret("f", NS, propagation_policy="Foreground")
    held = until(lambda: v1.read_namespaced_secret("fd", NS).metadata.deletion_timestamp)
    assert held
    assert "foregroundDeletion" in v1.read_namespaced_secret("f", NS).metadata.finalizers
    v1.patch_namespaced_secret("fd", NS, {"metadata": {"$deleteFromPrimitiveList/finalizers":
                                                       ["test/hold"]}})
    until(lambda: [s["metadata"]["name"] for s in kube.objects("secrets", NS)] == ["d"])


def test_fault_injection_and_request_log(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube.inject("POST", r"/pods$", 503, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            v1.create_namespaced_pod(NS, pod("f", ["true"]))
        assert e.value.status == 503
    v1.create_namespaced_pod(NS, pod("f", ["true"]))
    kube.inject("*", r"/pods/f$", 500)
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_pod("f", NS)
    assert e.value.status == 500
    kube.add_node("n", run_pods=False)
    bind(v1, NS, "f", "n")
    v1.patch_namespaced_pod_status("f", NS, {"status": {"message": "x"}})
    v1.delete_namespaced_pod("f", NS)
    list(watch.Watch().stream(v1.list_pod_for_all_namespaces, timeout_seconds=1))
    calls = {tuple(c) for c in kube.calls}
    assert ("create", "", "pods", "", NS) in calls
    assert ("get", "", "pods", "", NS) in calls
    assert ("create", "", "pods", "binding", NS) in calls
    assert ("patch", "", "pods", "status", NS) in calls
    assert ("delete", "", "pods", "", NS) in calls
    assert ("watch", "", "pods", "", "") in calls
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/binding"],
              "verbs": ["create", "get", "list", "watch", "delete"]}]
    missing = {tuple(c) for c in kube.allowed_by(rules)}
    assert missing == {("patch", "", "pods", "status", NS)}
    assert not kube.allowed_by([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])


def test_finalizers_keep_objects(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "h", "finalizers": ["x/y"]}})
    v1.delete_namespaced_secret("h", NS)
    held = v1.read_namespaced_secret("h", NS)
    assert held.metadata.deletion_timestamp
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_secret("h", NS, {"metadata": {"finalizers": ["x/z"]}})
    assert e.value.status == 422
    v1.patch_namespaced_secret("h", NS, [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_secret("h", NS)
    assert e.value.status == 404


def test_many_requests_keep_alive(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube.add_node("n", run_pods=False)
    t0 = time.monotonic()
    for i in range(300):
        v1.create_namespaced_pod(NS, pod(f"p{i}", ["true"]))
        bind(v1, NS, f"p{i}", "n")
    assert time.monotonic() - t0 < 20
    assert len(v1.list_namespaced_pod(NS).items) == 300
