"""What pods use, from the cluster's resource metrics API (``metrics.k8s.io``, served
by metrics-server): cores and working-set memory per pod, averaged over its window.

A cluster without metrics-server answers 404 (or 503 while it starts); then there are
no figures, and the API is asked again only after :data:`RETRY_S`, so that a missing
add-on costs one call a minute, not one per scrape. These calls never count against
the engine's health: usage is an extra, not what runs the jobs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from kubernetes import client
from kubernetes.utils import parse_quantity

from tidemill.engines.usage import ReplicaUsage, Watched

quantity: Callable[[str], Decimal] = parse_quantity
"""The client's reading of Kubernetes quantities ("250m", "123456n", "1024Ki")."""

GROUP, VERSION, PLURAL = "metrics.k8s.io", "v1beta1", "pods"
RETRY_S = 60.0
TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


class PodMetrics:
    def __init__(self, custom: client.CustomObjectsApi) -> None:
        self.custom = custom
        self._lock = threading.Lock()
        self._unavailable_until = 0.0

    def usage(self, replicas: Mapping[str, Watched]) -> dict[str, ReplicaUsage]:
        """Key -> usage for the pods of ``replicas`` that metrics-server has measured;
        one list call per namespace."""
        with self._lock:
            if time.monotonic() < self._unavailable_until:
                return {}
        by_namespace: dict[str, dict[str, str]] = {}
        for key, watched in replicas.items():
            data = watched.handle.data
            by_namespace.setdefault(str(data["namespace"]), {})[str(data["pod"])] = key
        found: dict[str, ReplicaUsage] = {}
        for namespace, keys in by_namespace.items():
            items = self._list(namespace)
            if items is None:
                return {}
            for item in items:
                pod = str(item.get("metadata", {}).get("name", ""))
                if pod in keys:
                    found[keys[pod]] = usage_of(item)
        return found

    def _list(self, namespace: str) -> list[dict[str, Any]] | None:
        try:
            response: Any = self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                _preload_content=False,
                _request_timeout=TIMEOUT_S,
            )
            items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        except Exception as exc:  # 404 without metrics-server, 503, a timeout
            log.info("no pod metrics from the cluster (%s); asking again in %.0f s", exc, RETRY_S)
            with self._lock:
                self._unavailable_until = time.monotonic() + RETRY_S
            return None
        return items


def usage_of(item: Mapping[str, Any]) -> ReplicaUsage:
    """One ``PodMetrics`` object as a usage: its containers' cpu and memory summed."""
    cores = 0.0
    memory = 0
    for container in item.get("containers") or []:
        amounts = container.get("usage") or {}
        cores += float(quantity(amounts.get("cpu", "0")))
        memory += int(quantity(amounts.get("memory", "0")))
    return ReplicaUsage(cpu_cores=cores, memory_bytes=memory)
