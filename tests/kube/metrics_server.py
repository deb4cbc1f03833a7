"""An emulated metrics-server: ``metrics.k8s.io/v1beta1`` PodMetrics for the pods the
simulated kubelets run, measured from their processes.

As the real one: read-only (get and list), namespaced, a pod appears once its container
runs, cpu in nanocores averaged over a window (here: since the pod's previous reading,
or since its process started) and memory as the working set (here: resident memory of
the container's process tree) in Ki. A cluster without metrics-server answers 404 for
the whole group; ``KubeEmulator(metrics_server=False)`` is that cluster.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

import psutil

from .errors import ApiError
from .kubelet import Kubelets, PodRun

API_VERSION = "metrics.k8s.io/v1beta1"


class MetricsServer:
    def __init__(self, kubelets: Kubelets) -> None:
        self.kubelets = kubelets
        self._last: dict[str, tuple[float, float]] = {}  # pod uid -> (time, cpu seconds)
        self._lock = threading.Lock()

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        """PodMetrics of every running pod in ``namespace``."""
        with self.kubelets.lock:
            runs = [r for r in self.kubelets.runs.values() if r.namespace == namespace]
        found = [self._measure(run) for run in runs]
        return [item for item in found if item is not None]

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        for item in self.pods(namespace):
            if item["metadata"]["name"] == name:
                return item
        raise ApiError(404, f'podmetrics.metrics.k8s.io "{name}" not found')

    def _measure(self, run: PodRun) -> dict[str, Any] | None:
        proc = run.proc
        if not run.started or proc is None or proc.poll() is not None:
            return None
        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
            started = root.create_time()
        except psutil.Error:
            return None
        cpu_seconds = 0.0
        memory = 0
        for process in tree:
            try:
                times = process.cpu_times()
                cpu_seconds += times.user + times.system
                memory += process.memory_info().rss
            except psutil.Error:
                continue
        now = time.time()
        with self._lock:
            since, before = self._last.get(run.uid, (started, 0.0))
            self._last[run.uid] = (now, cpu_seconds)
        window = max(now - since, 1e-3)
        cores = max(cpu_seconds - before, 0.0) / window
        return {
            "kind": "PodMetrics",
            "apiVersion": API_VERSION,
            "metadata": {"name": run.name, "namespace": run.namespace},
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "window": f"{window:.3f}s",
            "containers": [
                {
                    "name": run.container,
                    "usage": {"cpu": f"{round(cores * 1e9)}n", "memory": f"{memory // 1024}Ki"},
                }
            ],
        }
