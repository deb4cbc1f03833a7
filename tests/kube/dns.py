"""Per-pod /etc/hosts files standing in for cluster DNS.

Each pod's file holds its own name (as the kubelet writes it) plus the records CoreDNS would
serve for headless Services: `hostname.subdomain.ns.svc.cluster.local` for pods the Service
selects, once Ready (or at once with publishNotReadyAddresses). Files are rewritten in place
(same inode), so the bind mount over the pod's /etc/hosts sees every change.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from .objects import Store
from .selectors import Requirement, labels_match

_LOCAL = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conds = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


class HostsFiles:
    """Keeps one hosts file per running pod up to date with the cluster's records."""

    def __init__(self, store: Store, folder: str) -> None:
        self.store = store
        self.folder = folder
        self.files: dict[str, tuple[str, str, str]] = {}  # uid -> (path, namespace, own lines)
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._events = store.listen(["/pods", "/services"])
        self._thread = threading.Thread(target=self._run, name="kube-dns", daemon=True)
        self._thread.start()

    def own_lines(self, pod: dict[str, Any], ip: str) -> str:
        """The kubelet's entry for the pod itself: FQDN when it has a subdomain, and hostname."""
        spec, ns = pod["spec"], pod["metadata"]["namespace"]
        host = (spec.get("hostname") or pod["metadata"]["name"])[:63]
        if spec.get("subdomain"):
            return f"{ip}\t{host}.{spec['subdomain']}.{ns}.svc.cluster.local\t{host}\n"
        return f"{ip}\t{host}\n"

    def register(self, pod: dict[str, Any], ip: str) -> str:
        """Create the pod's hosts file (filled at once) and keep it updated; returns its path."""
        uid = pod["metadata"]["uid"]
        path = os.path.join(self.folder, f"hosts-{uid}")
        with open(path, "w") as f:
            f.write("")
        with self._lock:
            self.files[uid] = (path, pod["metadata"]["namespace"], self.own_lines(pod, ip))
        self.rebuild()
        return path

    def unregister(self, uid: str) -> None:
        """Stop updating a pod's file (its pod is gone)."""
        with self._lock:
            entry = self.files.pop(uid, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.unlink(entry[0])

    def records(self) -> list[tuple[str, str, list[str], list[str]]]:
        """(namespace, ip, names for anyone, short names for the same namespace)."""
        out = []
        with self.store.lock:
            services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s
                        for s in self.store.all("/services")}
            if not services:
                return []
            for pod in self.store.all("/pods"):
                spec, meta = pod["spec"], pod["metadata"]
                ip = pod.get("status", {}).get("podIP")
                sub, ns = spec.get("subdomain"), meta["namespace"]
                if not ip or not sub:
                    continue
                svc = services.get((ns, sub))
                if svc is None or svc["spec"].get("clusterIP") != "None":
                    continue
                selector = svc["spec"].get("selector") or {}
                reqs = [Requirement(k, "=", (v,)) for k, v in selector.items()]
                if not selector or not labels_match(reqs, pod):
                    continue
                if not svc["spec"].get("publishNotReadyAddresses") and not _ready(pod):
                    continue
                svc_names = [f"{sub}.{ns}.svc.cluster.local", f"{sub}.{ns}.svc", f"{sub}.{ns}"]
                if spec.get("hostname"):
                    base = f"{spec['hostname']}.{sub}"
                    out.append((ns, ip, [f"{base}.{ns}.svc.cluster.local", f"{base}.{ns}.svc",
                                         f"{base}.{ns}"], [base]))
                out.append((ns, ip, svc_names, [sub]))
        return out

    def rebuild(self) -> None:
        """Rewrite every registered file in place."""
        with self._lock:
            files = list(self.files.values())
        if not files:
            return
        recs = self.records()
        for path, ns, own in files:
            lines = [_LOCAL, own]
            for rec_ns, ip, names, short in recs:
                shown = names + (short if rec_ns == ns else [])
                lines.append(f"{ip}\t{' '.join(shown)}\n")
            data = "".join(lines).encode()
            with contextlib.suppress(OSError), open(path, "r+b") as f:
                f.write(data)
                f.truncate()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._events.get()
            if event is None:
                return
            while not self._events.empty():
                if self._events.get_nowait() is None:
                    return
            self.rebuild()

    def close(self) -> None:
        """Stop the updater thread."""
        self._stop.set()
        self._events.put(None)  # type: ignore[arg-type]
