"""The controllers of kube-controller-manager an engine relies on: the garbage collector
(ownerReferences with background, foreground and orphan propagation), the pod garbage collector
for pods of vanished nodes, and namespace deletion.

They react to store events in one background thread, so deletions cascade asynchronously as on a
cluster (only faster: no 20 s podgc period, and no 40 s quarantine unless one is asked for, so a
test can see what the API shows in between: pods still Running on a node that is gone).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from typing import Any

from .errors import ApiError
from .objects import Store, condition
from .watch import Event


class Controllers:
    """Garbage collector, pod GC and namespace finalizer in one event loop."""

    def __init__(self, store: Store, podgc_quarantine_s: float = 0.0) -> None:
        self.store = store
        self.podgc_quarantine_s = podgc_quarantine_s
        self._timers: list[threading.Timer] = []
        self._events = store.listen()
        self._thread = threading.Thread(target=self._loop, name="kube-controllers", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop and any pod GC still in quarantine."""
        for timer in self._timers:
            timer.cancel()
        self._events.put(None)  # type: ignore[arg-type]

    def _loop(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                self._handle(event)
            except Exception:
                traceback.print_exc()

    def _handle(self, event: Event) -> None:
        meta = event.obj["metadata"]
        if event.type == "DELETED":
            for dep in list(self.store.dependents.get(meta["uid"], ())):
                self._collect(dep)
            for ref in meta.get("ownerReferences") or []:
                self._foreground_done(ref.get("uid", ""))
            if event.key == "/nodes" and self.podgc_quarantine_s > 0:
                timer = threading.Timer(self.podgc_quarantine_s, self._pod_gc, [meta["name"]])
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            elif event.key == "/nodes":
                self._pod_gc(meta["name"])
            if event.namespace:
                self._namespace(event.namespace)
            return
        if meta.get("ownerReferences"):
            old_refs = (event.old or {}).get("metadata", {}).get("ownerReferences")
            if event.type == "ADDED" or old_refs != meta["ownerReferences"]:
                self._collect((event.key, event.namespace, meta["name"]))
        if meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or []
            if "orphan" in finalizers:
                self._orphan(event)
            if "foregroundDeletion" in finalizers:
                for dep in list(self.store.dependents.get(meta["uid"], ())):
                    self._delete(dep, "Background")
                self._foreground_done(meta["uid"])
            if event.key == "/namespaces":
                self._namespace(meta["name"])

    # ------------------------------------------------------------ garbage collector

    def _collect(self, dep: tuple[str, str, str]) -> None:
        """Delete a dependent whose owners are all gone; drop dangling refs if some remain."""
        key, ns, name = dep
        store = self.store
        with store.lock:
            obj = store.peek(key, ns, name)
            if obj is None or obj["metadata"].get("deletionTimestamp"):
                return
            refs = obj["metadata"].get("ownerReferences") or []
            present = [r for r in refs if store.owner_present(ns, r)]
            if not refs or len(present) == len(refs):
                return
            if present:
                keep = {r["uid"] for r in present}

                def drop(o: dict[str, Any]) -> None:
                    o["metadata"]["ownerReferences"] = [
                        r for r in o["metadata"].get("ownerReferences") or []
                        if r.get("uid") in keep]

                store.mutate(store.storage[key], ns, name, drop)
                return
        self._delete(dep, "Background")

    def _delete(self, dep: tuple[str, str, str], policy: str) -> None:
        key, ns, name = dep
        store = self.store
        with store.lock:
            obj = store.peek(key, ns, name)
            res = store.storage.get(key)
            if obj is None or res is None:
                return
            with contextlib.suppress(ApiError):
                store.delete(res, ns, name, {"propagationPolicy": policy,
                                             "preconditions": {"uid": obj["metadata"]["uid"]}})

    def _orphan(self, event: Event) -> None:
        uid = event.obj["metadata"]["uid"]
        store = self.store
        with store.lock:
            for key, ns, name in list(store.dependents.get(uid, ())):
                def strip(o: dict[str, Any]) -> None:
                    o["metadata"]["ownerReferences"] = [
                        r for r in o["metadata"].get("ownerReferences") or []
                        if r.get("uid") != uid]

                store.mutate(store.storage[key], ns, name, strip)
            self._drop_finalizer(event.key, event.namespace, event.obj["metadata"]["name"], uid,
                                 "orphan")

    def _foreground_done(self, uid: str) -> None:
        """Release an owner in foreground deletion once no dependent is left."""
        store = self.store
        with store.lock:
            where = store.by_uid.get(uid)
            if where is None or store.dependents.get(uid):
                return
            key, ns, name = where
            obj = store.peek(key, ns, name)
            if obj is None or not obj["metadata"].get("deletionTimestamp"):
                return
            if "foregroundDeletion" in (obj["metadata"].get("finalizers") or []):
                self._drop_finalizer(key, ns, name, uid, "foregroundDeletion")

    def _drop_finalizer(self, key: str, ns: str, name: str, uid: str, finalizer: str) -> None:
        store = self.store

        def drop(o: dict[str, Any]) -> None:
            o["metadata"]["finalizers"] = [f for f in o["metadata"].get("finalizers") or []
                                           if f != finalizer]

        with contextlib.suppress(ApiError):
            store.mutate(store.storage[key], ns, name, drop)

    # ------------------------------------------------------------ pod GC, namespaces

    def _pod_gc(self, node: str) -> None:
        """Pods bound to a node that no longer exists: mark Failed, then force-delete."""
        store = self.store
        pods = store.resource("", "v1", "pods")
        for ns, name in list(store.pods_by_node.get(node, ())):
            with store.lock:
                pod = store.peek("/pods", ns, name)
                if pod is None:
                    continue
                if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    def fail(p: dict[str, Any]) -> None:
                        status = p.setdefault("status", {})
                        status["phase"] = "Failed"
                        conds = [c for c in status.get("conditions") or []
                                 if c.get("type") != "DisruptionTarget"]
                        conds.append({**condition("DisruptionTarget", "True", "DeletionByPodGC"),
                                      "message": "PodGC: node no longer exists"})
                        status["conditions"] = conds

                    store.mutate(pods, ns, name, fail, sub="status")
                store.remove_now("/pods", ns, name)

    def _namespace(self, name: str) -> None:
        """Delete everything in a terminating namespace, then the namespace itself."""
        store = self.store
        with store.lock:
            ns_obj = store.peek("/namespaces", "", name)
            if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
                return
            empty = True
            for key, res in list(store.storage.items()):
                if not res.namespaced:
                    continue
                for obj in store.all(key, name):
                    empty = False
                    if not obj["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiError):
                            store.delete(res, name, obj["metadata"]["name"], {})
            if empty and not ns_obj["metadata"].get("finalizers"):
                store.remove_now("/namespaces", "", name)
