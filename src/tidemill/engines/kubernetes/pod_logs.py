"""Pod logs through ``pods/log``, mirrored on demand into files the server streams.

The server's log endpoint reads files (bounded, tailable, followable). For a pod, the
first reader starts one follower per pod that copies ``pods/log?follow=true`` into
``STATE_DIR/pod-logs/<job uid>/<pod>.log``; later readers share the file. The follower
waits while the container has not started, reconnects after a broken stream (from where
the file ends, by ``sinceTime``-free byte count: the stream is re-read and the known
prefix skipped), and ends when the pod has ended and its stream is drained.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidemill.engines.base import ReplicaHandle
from tidemill.engines.kubernetes.cluster import Cluster

log = logging.getLogger(__name__)

RETRY_S = 1.0
CHUNK_BYTES = 64 * 1024


class PodLogs:
    def __init__(self, cluster: Cluster, folder: Path, ended: Callable[[str, str], bool]) -> None:
        self.cluster = cluster
        self.folder = folder
        self.ended = ended
        """(namespace, pod) -> True once the pod has finished or is gone"""
        self._lock = threading.Lock()
        self._followers: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def path(self, handle: ReplicaHandle) -> str:
        """The file holding the pod's output, kept current while the pod runs."""
        namespace, pod = str(handle.data["namespace"]), str(handle.data["pod"])
        job_uid = str(handle.data.get("job_uid") or "unknown")
        path = self.folder / job_uid / f"{pod}.log"
        with self._lock:
            follower = self._followers.get(str(path))
            if follower is None or not follower.is_alive():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(exist_ok=True)
                if self.ended(namespace, pod):
                    self._copy_once(namespace, pod, path)
                    return str(path)
                follower = threading.Thread(
                    target=self._follow, args=(namespace, pod, path), daemon=True
                )
                self._followers[str(path)] = follower
                follower.start()
        return str(path)

    def close(self) -> None:
        self._stop.set()

    def _follow(self, namespace: str, pod: str, path: Path) -> None:
        while not self._stop.is_set():
            done = self.ended(namespace, pod)
            try:
                self._copy(namespace, pod, path)
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 400:  # 400: the container has not started yet
                    log.warning("logs of pod %s/%s: %s", namespace, pod, exc.reason)
            except Exception as exc:
                log.warning("logs of pod %s/%s: %s; reconnecting", namespace, pod, exc)
            if done:
                return
            self._stop.wait(RETRY_S)

    def _copy_once(self, namespace: str, pod: str, path: Path) -> None:
        """An ended pod's log, read whole once (nothing more will come)."""
        try:
            self._copy(namespace, pod, path, follow=False)
        except ApiException as exc:
            if exc.status not in (400, 404):
                log.warning("logs of pod %s/%s: %s", namespace, pod, exc.reason)

    def _copy(self, namespace: str, pod: str, path: Path, follow: bool = True) -> None:
        """Stream the pod's whole log, appending what the file does not hold yet."""
        have = path.stat().st_size
        response: Any = self.cluster.core.read_namespaced_pod_log(
            pod, namespace, follow=follow, _preload_content=False, _request_timeout=(10, 300)
        )
        seen = 0
        try:
            with path.open("ab") as out:
                for chunk in response.stream(CHUNK_BYTES):
                    if self._stop.is_set():
                        return
                    fresh = chunk[max(0, have - seen) :]
                    seen += len(chunk)
                    if fresh:
                        out.write(fresh)
                        out.flush()
        finally:
            response.release_conn()
