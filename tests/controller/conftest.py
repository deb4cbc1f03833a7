"""Controllers on a real store and the local engine, shared by the controller tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidemill.api.cluster import ClusterSpec, NodeSpec
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.engines.local import LocalEngine
from tidemill.store.store import Store


@pytest.fixture
def make_controller(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """Controllers on one store and one engine folder (a second one is a restart)."""
    made: list[tuple[Controller, LocalEngine]] = []
    store = Store.in_folder(tmp_path / "state")

    def make(
        cpu: float = 8, engine_class: type[LocalEngine] = LocalEngine, **config: Any
    ) -> Controller:
        engine = engine_class(tmp_path / "engine", warm_start=False)
        cluster = ClusterSpec(nodes=[NodeSpec(name="n", cpu=cpu, memory="8Gi")])
        settings = {"stop_grace_s": 1.0, "resync_s": 0.0, "schedule_pacing": 0.0, **config}
        controller = Controller(store, engine, cluster, ControllerConfig(**settings))
        made.append((controller, engine))
        return controller

    yield make
    controller, _ = made[-1]
    with store.read() as tx:
        jobs = [(row.namespace, row.name) for row in tx.jobs()]
    for namespace, name in jobs:
        controller.delete(namespace, name)
    for _, engine in made:
        engine.close()
