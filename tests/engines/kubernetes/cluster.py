"""A tidemill server on the Kubernetes engine against the emulated API server
(tests/kube): the CRD applied as deploy/kubernetes ships it, nodes added, the server
talking to it through a kubeconfig exactly as to a real cluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from tests.kube import KubeEmulator
from tidemill.client import Client
from tidemill.controller.reconciler import ControllerConfig
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.server.runner import ServerRunner

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "deploy" / "kubernetes" / "crd.yaml"
IMAGE = "tidemill/runtime:test"


def api_client(kubeconfig: str) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def apply_crd(kubeconfig: str) -> None:
    with api_client(kubeconfig) as api:
        client.ApiextensionsV1Api(api).create_custom_resource_definition(
            yaml.safe_load(CRD.read_text())
        )


@contextmanager
def kubernetes_server(
    kube: KubeEmulator, state_dir: Path, **options: Any
) -> Iterator[tuple[ServerRunner, Client]]:
    """A started server whose engine is Kubernetes on ``kube``; stopped afterwards."""
    kubeconfig = kube.write_kubeconfig(str(state_dir.parent / f"{state_dir.name}.kubeconfig"))
    engine_options = KubernetesOptions(kubeconfig=kubeconfig, default_image=IMAGE, **options)
    runner = ServerRunner(
        state_dir,
        port=0,
        engine="kubernetes",
        engine_options={"options": engine_options, "relist_s": 5.0},
        controller_config=ControllerConfig(tick_s=0.1),
    )
    url = runner.start()
    try:
        yield runner, Client(url)
    finally:
        runner.stop()


def wait_for(check: Callable[[], Any], timeout_s: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
