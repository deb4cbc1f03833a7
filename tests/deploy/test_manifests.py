"""deploy/kubernetes: every manifest is a valid Kubernetes object (strict, for the oldest
and newest supported versions), the kustomizations list their folders, the RBAC rules are
exactly the reviewed ones, and the Deployment, Service, PVC and Dockerfile fit together."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tidemill.engines.kubernetes.cluster import API_CALLS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
NOT_API_OBJECTS = {"Kustomization", "TrainingJob"}
"""Kustomize reads the first; tests/api/test_crd.py checks the second against the CRD."""


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


MANIFESTS = [
    pytest.param(doc, id=f"{path.relative_to(DEPLOY)}#{index}")
    for path in sorted(DEPLOY.rglob("*.yaml"))
    for index, doc in enumerate(documents(path))
    if doc["kind"] not in NOT_API_OBJECTS
]


def only(kind: str, name: str = "") -> dict[str, Any]:
    """The one object of ``kind`` in the base folder."""
    found = [
        doc
        for path in sorted(DEPLOY.glob("*.yaml"))
        for doc in documents(path)
        if doc["kind"] == kind and name in ("", doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_every_manifest_is_a_valid_kubernetes_object(
    manifest: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{manifest['kind']} {manifest['metadata']['name']}: {str(exc)[:800]}")


def test_every_yaml_file_is_validated_here_or_against_the_crd() -> None:
    kinds = {doc["kind"] for path in DEPLOY.rglob("*.yaml") for doc in documents(path)}
    assert kinds >= {"CustomResourceDefinition", "Deployment", "ClusterRole", "TrainingJob"}
    skipped = {
        str(path.relative_to(DEPLOY))
        for path in DEPLOY.rglob("*.yaml")
        for doc in documents(path)
        if doc["kind"] in NOT_API_OBJECTS
    }
    samples = {str(path.relative_to(DEPLOY)) for path in DEPLOY.glob("samples/*.yaml")}
    assert skipped == {"kustomization.yaml", "overlays/postgres/kustomization.yaml", *samples}


def test_the_base_kustomization_lists_every_file_in_its_folder() -> None:
    [kustomization] = documents(DEPLOY / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == "tidemill-system"
    listed = kustomization["resources"]
    present = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert len(set(listed)) == len(listed)
    assert listed.index("namespace.yaml") == 0  # the namespace before what lives in it


def test_the_postgres_overlay_builds_on_the_base_into_a_valid_deployment() -> None:
    folder = DEPLOY / "overlays" / "postgres"
    [kustomization] = documents(folder / "kustomization.yaml")
    assert [(folder / r).resolve() for r in kustomization["resources"]] == [DEPLOY]
    assert sorted(p.name for p in folder.iterdir()) == ["kustomization.yaml"]
    [patch] = kustomization["patches"]
    deployment = copy.deepcopy(only("Deployment"))
    assert patch["target"] == {"kind": "Deployment", "name": deployment["metadata"]["name"]}
    for op in yaml.safe_load(patch["patch"]):
        *parents, leaf = op["path"].strip("/").split("/")
        node: Any = deployment
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        assert op["op"] in ("test", "replace") and leaf in node, op
        if op["op"] == "test":
            assert node[leaf] == op["value"], op
        node[leaf] = op["value"]
    [env] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env["valueFrom"]["secretKeyRef"]["optional"] is False
    for version in VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)


def test_the_clusterrole_grants_exactly_the_calls_the_engine_makes() -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in only("ClusterRole")["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, no URLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert "*" not in {verb for verbs in granted.values() for verb in verbs}
    assert granted == {key: set(verbs) for key, verbs in API_CALLS.items()}, (
        "the ClusterRole grants exactly the engine's API_CALLS: change both together"
    )


def test_the_binding_gives_the_role_to_the_servers_service_account() -> None:
    binding = only("ClusterRoleBinding")
    account = only("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": only("ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tidemill", "namespace": "tidemill-system"}
    ]
    assert account["metadata"] == {**account["metadata"], "name": "tidemill"}
    pod = only("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def server_container() -> dict[str, Any]:
    container: dict[str, Any]
    [container] = only("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_server_runs_the_kubernetes_engine_with_auth_on_its_state_volume() -> None:
    container = server_container()
    assert container["image"] == "ghcr.io/tidemill/tidemill:0.1.0"
    assert shlex.join(container["args"]) == (
        "server --engine kubernetes --host 0.0.0.0 --port 8500 --auth --state-dir /var/lib/tidemill"
        " --advertise-url http://tidemill.tidemill-system.svc:8500"
        " --default-image ghcr.io/tidemill/tidemill:0.1.0"
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    pod = only("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    state = volumes[mounts["/var/lib/tidemill"]]
    assert (
        state["persistentVolumeClaim"]["claimName"]
        == only("PersistentVolumeClaim")["metadata"]["name"]
    )
    assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root still needs a /tmp"


def test_the_store_is_postgres_when_the_optional_secret_names_it() -> None:
    [env] = server_container()["env"]
    assert env == {
        "name": "TIDEMILL_STORE_URL",
        "valueFrom": {"secretKeyRef": {"name": "tidemill-store", "key": "url", "optional": True}},
    }


def test_one_replica_replaced_not_rolled_because_sqlite_has_one_writer() -> None:
    spec = only("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    claim = only("PersistentVolumeClaim")["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"


def test_the_server_is_probed_on_healthz_and_locked_down() -> None:
    container = server_container()
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8500, "protocol": "TCP"}]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    pod = only("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0


def test_the_service_reaches_the_server_pods_on_8500() -> None:
    service = only("Service")["spec"]
    template = only("Deployment")["spec"]["template"]
    assert service["type"] == "ClusterIP"
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert service["selector"] == only("Deployment")["spec"]["selector"]["matchLabels"]
    assert service["ports"] == [
        {"name": "http", "port": 8500, "targetPort": "http", "protocol": "TCP"}
    ]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in joined.splitlines()
        if line.strip()
    ]


def test_the_dockerfile_copies_files_that_exist_and_runs_tidemill() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    copied = [
        source
        for name, args in instructions
        if name == "COPY"
        for source in shlex.split(args)[:-1]
        if not source.startswith("--")
    ]
    assert copied, "the image needs the project's files"
    assert [s for s in copied if not (ROOT / s).exists()] == []
    assert {"pyproject.toml", "src"} <= set(copied)
    entrypoint = [args for name, args in instructions if name == "ENTRYPOINT"]
    assert entrypoint == ['["tidemill"]']
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "tidemill" in project["scripts"]
    install = next(args for name, args in instructions if name == "RUN" and '".[' in args)
    extras = re.search(r'"\.\[([^\]]+)\]"', install)
    assert extras is not None
    assert set(extras[1].split(",")) == {"kubernetes", "postgres", "train"}
    assert set(extras[1].split(",")) <= set(project["optional-dependencies"])


def test_the_image_takes_a_swappable_cpu_torch_and_runs_as_the_deployments_user() -> None:
    instructions = dockerfile_instructions()
    args = dict(arg.split("=", 1) for name, arg in instructions if name == "ARG")
    assert args["TORCH_SPEC"] == '"torch==2.13.0"'
    assert args["TORCH_INDEX"] == '"https://download.pytorch.org/whl/cpu"'
    [user] = [arg for name, arg in instructions if name == "USER"]
    pod = only("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"


def test_the_samples_run_examples_the_image_holds() -> None:
    for path in sorted(DEPLOY.glob("samples/*.yaml")):
        for role in documents(path)[0]["spec"]["roles"].values():
            folder = role["workingDir"].removeprefix("/opt/tidemill/")
            assert (ROOT / folder / role["command"][1]).is_file(), (path.name, folder)
