"""Where the Kubernetes contract suite runs: the emulated API server (tests/kube), always;
a real cluster too when ``TIDEMILL_TEST_KUBECONFIG`` names its kubeconfig.

A real cluster also needs ``TIDEMILL_TEST_IMAGE`` (an image with tidemill, torch,
scikit-learn and the examples, e.g. built from deploy/kubernetes/Dockerfile),
``TIDEMILL_TEST_EXAMPLES`` (where the examples are in that image; default
/opt/tidemill/examples), ``TIDEMILL_TEST_ADVERTISE_URL`` (how pods reach the test's
server) and ``TIDEMILL_TEST_NAMESPACE`` (default ``default``). The tests then use only the
kubeconfig, the official client and tidemill's REST API, exactly as against the emulator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.kube import KubeEmulator
from tidemill.api.job import TrainingJob
from tidemill.api.limits import MAX_JOBS_PER_NAMESPACE
from tidemill.api.loader import load_job_file
from tidemill.client import Client
from tidemill.controller.reconciler import ControllerConfig
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.server.runner import ServerRunner

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "deploy" / "kubernetes" / "crd.yaml"
EMULATED_IMAGE = "tidemill/runtime:test"
PODGROUP_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.volcano.sh"},
    "spec": {
        "group": "scheduling.volcano.sh",
        "scope": "Namespaced",
        "names": {
            "kind": "PodGroup",
            "listKind": "PodGroupList",
            "plural": "podgroups",
            "singular": "podgroup",
        },
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
                "subresources": {"status": {}},
            }
        ],
    },
}
"""Volcano's PodGroup kind, minimal (no Volcano runs here): for --gang-scheduler volcano."""


@dataclass
class Cluster:
    """A Kubernetes API to test against, and how its pods find the examples."""

    kubeconfig: str
    namespace: str
    image: str
    examples: Path
    advertise_url: str | None = None
    emulator: KubeEmulator | None = None

    @property
    def name(self) -> str:
        return "emulated" if self.emulator is not None else "real"

    def api(self) -> client.ApiClient:
        configuration = client.Configuration()
        config.load_kube_config(config_file=self.kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)

    def example(self, name: str, **changes: Any) -> TrainingJob:
        """An example job, in this cluster's namespace, its folder as pods see it;
        ``changes`` (job-file field names) replace fields of every role."""
        document = load_job_file(ROOT / "examples" / name / "job.yaml").to_document()
        document["metadata"]["namespace"] = self.namespace
        for role in document["spec"]["roles"].values():
            role.update({"workingDir": str(self.examples / name), "image": self.image, **changes})
        return TrainingJob.model_validate(document)

    def sleeper(self, name: str, replicas: int = 2, cpu: float = 1) -> TrainingJob:
        """A fixed-size job whose pods sleep until deleted."""
        return TrainingJob.model_validate(
            {
                "apiVersion": "tidemill/v1",
                "kind": "TrainingJob",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {
                    "roles": {
                        "worker": {
                            "replicas": replicas,
                            "image": self.image,
                            "resources": {"cpu": cpu, "memory": "256Mi"},
                            "command": ["python", "-c", "import time; time.sleep(600)"],
                        }
                    }
                },
            }
        )

    def finishing(self, name: str, replicas: int = 1) -> TrainingJob:
        """A fixed-size job whose pods print a line and exit 0."""
        document = self.sleeper(name, replicas).model_dump(mode="json", by_alias=True)
        document["spec"]["roles"]["worker"]["command"] = ["python", "-c", "print('done')"]
        return TrainingJob.model_validate(document)

    def children(self, job_uid: str) -> list[str]:
        """``kind/name`` of every object still labelled with the job's uid."""
        selector = f"{names.UID_LABEL}={names.label_value(job_uid)}"
        found = []
        with self.api() as api:
            core = client.CoreV1Api(api)
            for kind, lister in (
                ("pod", core.list_namespaced_pod),
                ("service", core.list_namespaced_service),
                ("secret", core.list_namespaced_secret),
                ("networkpolicy", client.NetworkingV1Api(api).list_namespaced_network_policy),
            ):
                for item in lister(self.namespace, label_selector=selector).items:
                    found.append(f"{kind}/{item.metadata.name}")
        return found

    def network_policies(self, job_uid: str) -> list[Any]:
        """The NetworkPolicies labelled with the job's uid."""
        selector = f"{names.UID_LABEL}={names.label_value(job_uid)}"
        with self.api() as api:
            return list(
                client.NetworkingV1Api(api)
                .list_namespaced_network_policy(self.namespace, label_selector=selector)
                .items
            )

    def job_object(self, name: str) -> dict[str, Any] | None:
        with self.api() as api:
            try:
                obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
                    names.GROUP, names.VERSION, self.namespace, names.PLURAL, name
                )
                return obj
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def pods(self, job_name: str) -> list[Any]:
        with self.api() as api:
            return list(
                client.CoreV1Api(api)
                .list_namespaced_pod(
                    self.namespace, label_selector=f"{names.JOB_LABEL}={job_name}"
                )
                .items
            )


def apply_crd(cluster: Cluster) -> None:
    with cluster.api() as api:
        extensions = client.ApiextensionsV1Api(api)
        try:
            extensions.create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
        except ApiException as exc:
            if exc.status != 409:
                raise


def emulated(
    tmp: Path,
    nodes: int = 2,
    cpu: str = "4",
    metrics_server: bool = True,
    podgc_quarantine_s: float = 0.0,
) -> Iterator[Cluster]:
    kube = KubeEmulator(metrics_server=metrics_server, podgc_quarantine_s=podgc_quarantine_s)
    kube.start()
    try:
        for i in range(nodes):
            kube.add_node(f"node-{i}", cpu=cpu, memory="16Gi", labels={"zone": f"z{i % 2}"})
        cluster = Cluster(
            kubeconfig=kube.write_kubeconfig(str(tmp / "kubeconfig")),
            namespace="default",
            image=EMULATED_IMAGE,
            examples=ROOT / "examples",
            emulator=kube,
        )
        apply_crd(cluster)
        yield cluster
    finally:
        kube.close()


def real() -> Cluster | None:
    kubeconfig = os.environ.get("TIDEMILL_TEST_KUBECONFIG")
    if not kubeconfig:
        return None
    return Cluster(
        kubeconfig=kubeconfig,
        namespace=os.environ.get("TIDEMILL_TEST_NAMESPACE", "default"),
        image=os.environ["TIDEMILL_TEST_IMAGE"],
        examples=Path(os.environ.get("TIDEMILL_TEST_EXAMPLES", "/opt/tidemill/examples")),
        advertise_url=os.environ.get("TIDEMILL_TEST_ADVERTISE_URL"),
    )


@contextmanager
def server(
    cluster: Cluster,
    state_dir: Path,
    auth: bool = False,
    max_jobs_per_namespace: int = MAX_JOBS_PER_NAMESPACE,
    **options: Any,
) -> Iterator[tuple[ServerRunner, Client]]:
    """A started tidemill server on the Kubernetes engine of ``cluster``; stopped after.
    With ``auth``, tokens are required (as deploy/kubernetes runs it) and the client
    holds the admin token the server wrote."""
    engine_options = KubernetesOptions(kubeconfig=cluster.kubeconfig, **options)
    runner = ServerRunner(
        state_dir,
        port=0,
        auth=auth,
        engine="kubernetes",
        engine_options={"options": engine_options, "relist_s": 5.0},
        controller_config=ControllerConfig(
            tick_s=0.1, max_jobs_per_namespace=max_jobs_per_namespace
        ),
        advertise_url=cluster.advertise_url,
    )
    url = runner.start()
    token = runner.admin_token_file.read_text().strip() if runner.admin_token_file else None
    try:
        with Client(url, token=token) as api:
            yield runner, api
    finally:
        runner.stop()

