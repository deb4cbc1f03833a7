"""Pod logs through ``pods/log``, mirrored on demand into files the server streams.

The server's log endpoint reads files (bounded, tailable, followable). For a pod, the
first reader starts one follower per pod that copies ``pods/log?follow=true`` into
``STATE_DIR/pod-logs/<job uid>/<pod>.log``; later readers share the file. The follower
waits while the container has not started, reconnects after a broken stream (from where
the file ends, by ``sinceTime``-free byte count: the stream is re-read and the known
prefix skipped), and ends when the pod has ended and its stream is drained.

A mirror is trimmed as the local engine trims a replica's log (``engines/log_trim.py``)
once it passes ``max_bytes``: kubelet bounds what it keeps of a container's output, but a
mirror that kept all of it would fill the server's volume, under its store. Its
``.start`` file records where in the pod's stream the mirror now starts and how long the
note that opens it is, so a reconnect (or a restarted server) skips what was copied.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tidemill.engines.base import ReplicaHandle
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.log_trim import LOG_KEPT_BYTES, LOG_MAX_BYTES, trim_log

log = logging.getLogger(__name__)

RETRY_S = 1.0
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class MirrorStart:
    """Where a mirror starts in its pod's stream, and the note before the stream's bytes."""

    stream_offset: int = 0
    note_bytes: int = 0

    @staticmethod
    def path_of(mirror: Path) -> Path:
        return mirror.with_name(mirror.name + ".start")

    @classmethod
    def read(cls, mirror: Path) -> MirrorStart:
        try:
            offset, note = cls.path_of(mirror).read_text().split()
            return cls(int(offset), int(note))
        except (OSError, ValueError):
            return cls()

    def write(self, mirror: Path) -> None:
        final = self.path_of(mirror)
        partial = final.with_name(final.name + ".tmp")
        partial.write_text(f"{self.stream_offset} {self.note_bytes}\n")
        os.replace(partial, final)

    def copied(self, mirror_bytes: int) -> int:
        """Bytes of the stream copied so far, the mirror holding ``mirror_bytes``."""
        return self.stream_offset + mirror_bytes - self.note_bytes


class PodLogs:
    def __init__(
        self,
        cluster: Cluster,
        folder: Path,
        ended: Callable[[str, str], bool],
        max_bytes: int = LOG_MAX_BYTES,
        kept_bytes: int = LOG_KEPT_BYTES,
    ) -> None:
        self.cluster = cluster
        self.folder = folder
        self.ended = ended
        """(namespace, pod) -> True once the pod has finished or is gone"""
        self.max_bytes, self.kept_bytes = max_bytes, kept_bytes
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

    def forget(self, job_uid: str) -> None:
        """Remove the mirrors of a job that is gone (its pods went with its object)."""
        if job_uid in ("", ".", "..") or os.sep in job_uid:
            return
        shutil.rmtree(self.folder / job_uid, ignore_errors=True)

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
        start = MirrorStart.read(path)
        have = start.copied(path.stat().st_size)
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
                        start = self._trimmed(path, start)
        finally:
            response.release_conn()

    def _trimmed(self, path: Path, start: MirrorStart) -> MirrorStart:
        """``path`` trimmed past ``max_bytes``, and where it starts now (only this
        follower writes it, so after the trim it holds the note alone)."""
        size = path.stat().st_size
        if size <= self.max_bytes or not trim_log(path, self.max_bytes, self.kept_bytes):
            return start
        moved = MirrorStart(start.copied(size), path.stat().st_size)
        moved.write(path)
        return moved
