"""A pod that prints without end cannot fill the server's volume: its log mirror is
trimmed past a size, and a follower that reconnects, or a restarted server, copies on
from where the mirror left off, nothing twice."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.harness import wait_for
from tests.kube import KubeEmulator
from tests.kube.fixtures import kube
from tests.kube.helpers import api, bind, phase, pod, until
from tidemill.engines.base import ReplicaHandle
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.options import KubernetesOptions
from tidemill.engines.kubernetes.pod_logs import MirrorStart, PodLogs
from tidemill.engines.log_trim import older_log

__all__ = ["kube"]
NS = "default"
LINES = 300_000
MAX_BYTES, KEPT_BYTES = 1 << 20, 64 << 10
PRINTER = (
    "import sys, time\n"
    f"sys.stdout.write(''.join(f'line {{i:07d}}\\n' for i in range({LINES})))\n"
    "sys.stdout.flush()\n"
    "time.sleep(3)\n"
    "print('after the trim', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def printing(kube: KubeEmulator) -> Iterator[tuple[client.CoreV1Api, Cluster, ReplicaHandle]]:
    kube.add_node("n1")
    v1 = client.CoreV1Api(api(kube))
    v1.create_namespaced_pod(NS, pod("printer", [sys.executable, "-c", PRINTER]))
    bind(v1, NS, "printer", "n1")
    until(lambda: phase(v1, NS, "printer") == "Running")
    cluster = Cluster(KubernetesOptions(kubeconfig=kube.kubeconfig))  # type: ignore[attr-defined]
    handle = ReplicaHandle(
        engine="kubernetes", data={"namespace": NS, "pod": "printer", "job_uid": "j1"}
    )
    yield v1, cluster, handle
    v1.delete_namespaced_pod("printer", NS, grace_period_seconds=0)


def test_a_mirror_is_trimmed_and_a_restarted_follower_copies_nothing_twice(
    printing: tuple[client.CoreV1Api, Cluster, ReplicaHandle], tmp_path: Path
) -> None:
    _, cluster, handle = printing

    def follower() -> PodLogs:
        return PodLogs(cluster, tmp_path, lambda ns, p: False, MAX_BYTES, KEPT_BYTES)

    first = follower()
    mirror = Path(first.path(handle))
    wait_for(lambda: mirror.read_text().endswith("after the trim\n"), 60, what="the last line")
    first.close()
    second = follower()  # a restarted server: it reads the whole stream again
    assert second.path(handle) == str(mirror)
    wait_for(lambda: "after the trim" in mirror.read_text(), 10)
    time.sleep(2)  # time to copy anything it wrongly took for new
    second.close()

    text = mirror.read_text()
    note, *lines = text.splitlines()
    assert re.match(
        r"\[tidemill: this log passed 1048576 bytes; its last 655[0-3][0-9] bytes", note
    )
    assert lines[-1] == "after the trim" and text.count("after the trim") == 1
    # the trim falls between two chunks of the stream, so the first line may be a piece
    numbers = [int(line.split()[1]) for line in lines[1:-1]]
    assert numbers == list(range(numbers[0], LINES)), "the stream's end, in order, once"
    assert mirror.stat().st_size <= MAX_BYTES + 64 * 1024
    kept = older_log(mirror).read_bytes()
    assert KEPT_BYTES - 100 < len(kept) <= KEPT_BYTES and kept.startswith(b"line ")
    streamed = LINES * len("line 0000000\n") + len("after the trim\n")
    start = MirrorStart.read(mirror)
    assert start.copied(mirror.stat().st_size) == streamed
