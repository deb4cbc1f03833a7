"""``tidemill exec`` on Kubernetes reads a command's whole output from ``pods/exec``,
however the container writes it: in pieces, up to the moment it exits, and in UTF-8
characters cut between two writes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.kube import KubeEmulator
from tests.kube.fixtures import kube
from tests.kube.helpers import api, bind, phase, pod, until
from tidemill.engines.base import ReplicaHandle
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.engines.kubernetes.pod_exec import PodCommand

__all__ = ["kube"]
NS = "default"
# Pieces apart in time, the last right before the exit: each arrives in its own frame,
# the last with the exit status and the close; stderr says something once, first.
PIECES = (
    "import os, sys, time\n"
    "os.write(2, b'warning\\n')\n"
    "for piece in (b'index', b' 1', b' \\xc3', b'\\xa9t\\xc3\\xa9\\n'):\n"
    "    os.write(1, piece); time.sleep(0.15)\n"
    "os.write(1, b'last words\\n'); sys.exit(3)\n"
)


@pytest.fixture
def running(kube: KubeEmulator) -> Iterator[tuple[Cluster, ReplicaHandle]]:
    kube.add_node("n1")
    v1 = client.CoreV1Api(api(kube))
    v1.create_namespaced_pod(
        NS, pod("shell", [sys.executable, "-c", "import time; time.sleep(60)"])
    )
    bind(v1, NS, "shell", "n1")
    until(lambda: phase(v1, NS, "shell") == "Running")
    cluster = Cluster(KubernetesOptions(kubeconfig=kube.kubeconfig))  # type: ignore[attr-defined]
    yield cluster, ReplicaHandle(engine="kubernetes", data={"namespace": NS, "pod": "shell"})
    v1.delete_namespaced_pod("shell", NS, grace_period_seconds=0)


def test_every_byte_written_before_the_exit_arrives_in_order_with_the_exit_code(
    running: tuple[Cluster, ReplicaHandle],
) -> None:
    cluster, handle = running
    command = PodCommand(cluster, handle, [sys.executable, "-c", PIECES])
    output = b"".join(command.output())
    assert command.wait() == 3
    text = output.decode()  # stdout and stderr are two pipes: no order between them
    assert text.count("warning\n") == 1
    assert text.replace("warning\n", "") == "index 1 été\nlast words\n"
