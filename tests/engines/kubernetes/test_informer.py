"""The informer's copy stays right through what watches do to it: history compacted
(410 Gone: list again), events dropped (healed by the periodic list), events repeated
(ignored), a closed stream (resumed from where it was). Against the emulated API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import wait_for
from tests.kube import KubeEmulator
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.informer import Informer
from tidemill.engines.kubernetes.options import KubernetesOptions


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[tuple[KubeEmulator, Cluster]]:
    emulator = KubeEmulator(bookmark_interval=30).start()
    options = KubernetesOptions(kubeconfig=emulator.write_kubeconfig(str(tmp_path / "kc")))
    cluster = Cluster(options)
    try:
        yield emulator, cluster
    finally:
        cluster.api_client.close()
        emulator.close()


def config_map(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "data": {"k": name}}


def names_in(informer: Informer) -> set[str]:
    return {name for _, name in informer.objects}


def test_a_watch_behind_a_compacted_history_lists_again(
    kube: tuple[KubeEmulator, Cluster],
) -> None:
    emulator, cluster = kube
    informer = Informer(cluster, "nodes", cluster.core.list_node, relist_s=3600).start()
    try:
        assert informer.wait_synced(10) and informer.lists == 1
        emulator.add_node("a")
        wait_for(lambda: names_in(informer) == {"a"}, timeout_s=10, what="node a seen")

        emulator.add_node("b")
        wait_for(lambda: names_in(informer) == {"a", "b"}, timeout_s=10, what="node b seen")
        emulator.compact()
        informer._version = "1"  # a watch that fell behind the compacted history
        emulator.close_watches()
        wait_for(lambda: informer.lists == 2, timeout_s=10, what="a new list after 410 Gone")
        assert names_in(informer) == {"a", "b"}
    finally:
        informer.stop()


def test_lost_events_heal_at_the_next_list_and_repeated_ones_change_nothing(
    kube: tuple[KubeEmulator, Cluster],
) -> None:
    emulator, cluster = kube
    core = cluster.core
    informer = Informer(cluster, "nodes", core.list_node, relist_s=1.0).start()
    try:
        assert informer.wait_synced(10)
        emulator.add_node("a")
        emulator.add_node("b")
        wait_for(lambda: names_in(informer) == {"a", "b"}, timeout_s=10, what="nodes seen")
        emulator.drop_watch_events(1)
        core.delete_node("a")
        wait_for(
            lambda: names_in(informer) == {"b"},
            timeout_s=10,
            what="the dropped deletion healed by the next list",
        )

        emulator.duplicate_watch_events(3)
        core.patch_node("b", {"metadata": {"labels": {"rack": "r1"}}})
        wait_for(
            lambda: informer.get("", "b")["metadata"]["labels"].get("rack") == "r1",
            timeout_s=10,
            what="the label seen",
        )
        assert names_in(informer) == {"b"}
    finally:
        informer.stop()


def test_a_watch_resumes_from_its_bookmark_without_listing(
    kube: tuple[KubeEmulator, Cluster],
) -> None:
    emulator, cluster = kube
    informer = Informer(cluster, "nodes", cluster.core.list_node, relist_s=3600).start()
    try:
        assert informer.wait_synced(10)
        emulator.add_node("a")
        wait_for(lambda: names_in(informer) == {"a"}, timeout_s=10, what="node a")
        emulator.close_watches()
        emulator.add_node("b")
        wait_for(lambda: names_in(informer) == {"a", "b"}, timeout_s=10, what="node b")
        assert informer.lists == 1, "a closed watch resumed from its resourceVersion"
    finally:
        informer.stop()
