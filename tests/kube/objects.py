"""The object store: every object, the cluster-wide resourceVersion, the event history and the
write semantics (create/update/patch/delete, status subresource, finalizers, graceful deletion).

Stored objects are never mutated in place: a write stores a new dict, so readers and watch
streams can hold references without copies. One re-entrant lock guards everything.
"""

from __future__ import annotations

import base64
import copy
import json
import queue
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from . import crd as crds
from . import network_policy as netpol
from . import validation as v
from .errors import STALE, ApiError, already_exists, bad_request, conflict, not_found
from .patches import apply_patch
from .resources import BUILTINS, KINDS_WITHOUT_SPEC_GENERATION, Resource
from .selectors import FieldRequirement, Requirement, fields_match, labels_match
from .watch import Event, Watcher, with_rv

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (storage key, namespace, name)

_SYSTEM_META = ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                "deletionGracePeriodSeconds", "generation", "selfLink")


def now(offset: float = 0) -> str:
    """RFC 3339 with second precision, as metav1.Time serializes."""
    return (datetime.now(UTC) + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Store:
    """All objects of the emulated cluster and the watchers and listeners of their changes."""

    def __init__(self, history_size: int = 50_000) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.history: deque[Event] = deque()
        self.history_size = history_size
        self.compacted = 0  # events with rv <= this are forgotten
        self.resources: dict[tuple[str, str, str], Resource] = {}
        self.storage: dict[str, Resource] = {}
        self.objects: dict[str, dict[str, dict[str, Obj]]] = {}
        self.by_uid: dict[str, Key] = {}
        self.dependents: dict[str, set[Key]] = {}
        self.pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self.watchers: set[Watcher] = set()
        self.listeners: list[tuple[frozenset[str] | None, queue.Queue[Event]]] = []
        self.snapshots: OrderedDict[str, list[Obj]] = OrderedDict()
        self.drop_events = 0
        self.duplicate_events = 0
        self._ip = 0
        for res in BUILTINS:
            self.register(res)
        for ns in ("default", "kube-system"):
            self.create(self.resource("", "v1", "namespaces"), "", {"metadata": {"name": ns}})

    # ------------------------------------------------------------ resources

    def register(self, res: Resource) -> None:
        """Serve a resource (CRD versions are registered when the CRD is created)."""
        with self.lock:
            self.resources[(res.group, res.version, res.plural)] = res
            self.storage.setdefault(res.key, res)
            self.objects.setdefault(res.key, {})

    def resource(self, group: str, version: str, plural: str) -> Resource:
        """The served resource or a 404 like the server's for an unknown path."""
        res = self.resources.get((group, version, plural))
        if res is None:
            raise ApiError(404, "the server could not find the requested resource",
                           details={"causes": [{"reason": "UnexpectedServerResponse",
                                                "message": "404 page not found"}]})
        return res

    def find_plural(self, group: str, version: str, plural: str) -> Resource | None:
        """The resource, or None (routing asks this to tell a namespace path from a resource)."""
        return self.resources.get((group, version, plural))

    # ------------------------------------------------------------ reading

    def get(self, res: Resource, ns: str, name: str) -> Obj:
        """The stored object (do not mutate) or 404."""
        obj = self.objects[res.key].get(ns, {}).get(name)
        if obj is None:
            raise not_found(res.plural, res.group, name)
        return obj

    def peek(self, key: str, ns: str, name: str) -> Obj | None:
        """The stored object by storage key, or None."""
        return self.objects.get(key, {}).get(ns, {}).get(name)

    def all(self, key: str, ns: str | None = None) -> list[Obj]:
        """Every object of a storage key (in one namespace or all), in key order."""
        with self.lock:
            spaces = self.objects.get(key, {})
            names = [ns] if ns is not None else sorted(spaces)
            out = []
            for n in names:
                bucket = spaces.get(n, {})
                out.extend(bucket[name] for name in sorted(bucket))
            return out

    def list(
        self,
        res: Resource,
        ns: str | None,
        labels: list[Requirement],
        fields: list[FieldRequirement],
        limit: int = 0,
        cont: str | None = None,
    ) -> tuple[list[Obj], str, str | None, int | None]:
        """Items, list resourceVersion, continue token and remainingItemCount."""
        with self.lock:
            if cont:
                try:
                    token = json.loads(base64.b64decode(cont))
                    rv, sid = int(token["rv"]), str(token["id"])
                except (ValueError, KeyError, TypeError):
                    raise bad_request("continue key is not valid: incorrect encoded start "
                                      "resourceVersion (version meta.k8s.io/v1)") from None
                rest = self.snapshots.get(sid)
                if rest is None or rv < self.compacted:
                    raise ApiError(410, "The provided continue parameter is too old to display a "
                                        "consistent list result. You can start a new list "
                                        "without the continue parameter.", reason="Expired")
                items = rest
            else:
                rv = self.rv
                items = [o for o in self.all(res.key, ns)
                         if labels_match(labels, o) and fields_match(fields, o)]
            if limit and len(items) > limit:
                sid = uuid.uuid4().hex
                self.snapshots[sid] = items[limit:]
                while len(self.snapshots) > 64:
                    self.snapshots.popitem(last=False)
                token = base64.b64encode(json.dumps({"rv": rv, "id": sid}).encode()).decode()
                remaining = len(items) - limit if not labels and not fields else None
                return items[:limit], str(rv), token, remaining
            return items, str(rv), None, None

    # ------------------------------------------------------------ events

    def _emit(self, etype: str, res: Resource, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        event = Event(int(meta["resourceVersion"]), etype, res.key, meta.get("namespace", ""),
                      obj, old)
        self.history.append(event)
        while len(self.history) > self.history_size:
            self.compacted = self.history.popleft().rv
        for keys, q in self.listeners:
            if keys is None or res.key in keys:
                q.put(event)
        deliveries = []
        for w in self.watchers:
            if w.wants(event):
                item = w.convert(event)
                if item is not None:
                    deliveries.append((w, item))
        if not deliveries:
            return
        if self.drop_events > 0:
            self.drop_events -= 1
            return
        copies = 1
        if self.duplicate_events > 0:
            self.duplicate_events -= 1
            copies = 2
        for w, item in deliveries:
            for _ in range(copies):
                w.push(item)

    def listen(self, keys: Iterable[str] | None = None) -> queue.Queue[Event]:
        """An in-process queue of every store event (of the given storage keys)."""
        q: queue.Queue[Event] = queue.Queue()
        with self.lock:
            self.listeners.append((frozenset(keys) if keys is not None else None, q))
        return q

    def watch(self, w: Watcher, rv: str | None) -> None:
        """Register a watcher and queue what it must see first (current state or history)."""
        with self.lock:
            if not rv or rv == "0":
                for obj in self.all(w.resource.key, w.namespace):
                    if w.matches(obj):
                        w.push(("ADDED", obj))
            else:
                try:
                    start = int(rv)
                except ValueError:
                    raise bad_request(f'invalid resource version: strconv.ParseUint: parsing '
                                      f'"{rv}": invalid syntax') from None
                if start < self.compacted:
                    w.push(("ERROR", {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure",
                        "message": f"too old resource version: {start} ({self.compacted + 1})",
                        "reason": "Expired", "code": 410,
                    }))
                    w.push(Watcher.END)
                    return
                for event in self.history:
                    if event.rv > start and w.wants(event):
                        item = w.convert(event)
                        if item is not None:
                            w.push(item)
            self.watchers.add(w)

    def unwatch(self, w: Watcher) -> None:
        """Forget a watcher whose stream ended."""
        with self.lock:
            self.watchers.discard(w)

    def quiet_rv(self, w: Watcher) -> int | None:
        """The current resourceVersion if the watcher has nothing pending (safe for a BOOKMARK)."""
        with self.lock:
            return self.rv if w.queue.empty() else None

    def compact(self) -> None:
        """Forget all history: every watch or continue from an older resourceVersion gets 410."""
        with self.lock:
            self.history.clear()
            self.compacted = self.rv
            self.snapshots.clear()

    # ------------------------------------------------------------ indexes

    def _put(self, res: Resource, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        self.objects[res.key].setdefault(ns, {})[name] = obj
        self.by_uid[meta["uid"]] = (res.key, ns, name)
        self._index_owners(res.key, ns, name, old, obj)
        if res.key == "/pods":
            self._index_node(ns, name, old, obj)

    def _drop(self, res: Resource, obj: Obj) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", ""), meta["name"]
        bucket = self.objects[res.key].get(ns, {})
        bucket.pop(name, None)
        if not bucket:
            self.objects[res.key].pop(ns, None)
        self.by_uid.pop(meta["uid"], None)
        self._index_owners(res.key, ns, name, obj, None)
        if res.key == "/pods":
            self._index_node(ns, name, obj, None)

    def _index_owners(self, key: str, ns: str, name: str, old: Obj | None, new: Obj | None) -> None:
        def uids(o: Obj | None) -> set[str]:
            refs = (o or {}).get("metadata", {}).get("ownerReferences") or []
            return {r.get("uid", "") for r in refs}

        before, after = uids(old), uids(new)
        for u in before - after:
            deps = self.dependents.get(u)
            if deps is not None:
                deps.discard((key, ns, name))
                if not deps:
                    del self.dependents[u]
        for u in after - before:
            self.dependents.setdefault(u, set()).add((key, ns, name))

    def _index_node(self, ns: str, name: str, old: Obj | None, new: Obj | None) -> None:
        a = (old or {}).get("spec", {}).get("nodeName")
        b = (new or {}).get("spec", {}).get("nodeName")
        if a == b:
            return
        if a:
            self.pods_by_node.get(a, set()).discard((ns, name))
        if b:
            self.pods_by_node.setdefault(b, set()).add((ns, name))

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    # ------------------------------------------------------------ create

    def create(self, res: Resource, ns: str, body: Any) -> Obj:
        """POST: validate, default, assign name/uid/rv, store, emit ADDED."""
        if not isinstance(body, dict):
            raise bad_request("the object provided is not a JSON object")
        if res.custom:
            crds.check_custom_head(body, res)
        elif body.get("kind") and body["kind"] != res.kind:
            raise bad_request(f"the kind in the data ({body['kind']}) does not match the "
                              f"expected kind ({res.kind})")
        obj = body
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        with self.lock:
            if res.namespaced:
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise bad_request("the namespace of the provided object does not match the "
                                      "namespace sent on the request")
                space = self.peek("/namespaces", "", ns)
                if space is None:
                    raise not_found("namespaces", "", ns)
                if space["metadata"].get("deletionTimestamp"):
                    raise ApiError(403, f"{res.plural} \"{meta.get('name', '')}\" is forbidden: "
                                        f"unable to create new content in namespace {ns} because "
                                        "it is being terminated", reason="Forbidden")
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            for k in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "selfLink", "creationTimestamp", "generation", "managedFields"):
                meta.pop(k, None)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            self._prepare_create(res, obj)
            name = meta["name"]
            if name in self.objects[res.key].get(meta.get("namespace", ""), {}):
                raise already_exists(res.plural, res.group, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if res.kind not in KINDS_WITHOUT_SPEC_GENERATION:
                meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self._put(res, obj, None)
            self._emit("ADDED", res, obj, None)
            if res.kind == "CustomResourceDefinition":
                for served in crds.served_resources(obj):
                    self.register(served)
            return obj

    def _name_rule(self, res: Resource) -> str:
        if res.kind == "Namespace":
            return "label"
        if res.kind == "Service":
            return "1035"
        return "subdomain"

    def _prepare_create(self, res: Resource, obj: Obj) -> None:
        meta = obj["metadata"]
        v.check(res.kind, res.group, meta.get("name") or "",
                v.metadata_errors(meta, self._name_rule(res)))
        name = meta["name"]
        if res.kind == "Pod":
            v.default_pod(obj)
            v.check("Pod", "", name, v.pod_spec_errors(obj["spec"]))
            obj["status"] = {"phase": "Pending", "qosClass": v.qos_class(obj)}
            if obj["spec"].get("nodeName"):
                obj["status"]["conditions"] = [_condition("PodScheduled", "True")]
        elif res.kind == "Service":
            v.default_service(obj, self._allocate_cluster_ip)
            v.check("Service", "", name, v.service_errors(obj))
            obj["status"] = {"loadBalancer": {}}
        elif res.kind == "Secret":
            v.check("Secret", "", name, v.normalize_secret(obj))
        elif res.kind == "NetworkPolicy":
            netpol.default_network_policy(obj)
            v.check(res.kind, res.group, name, netpol.network_policy_errors(obj))
        elif res.kind == "Namespace":
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        elif res.kind == "CustomResourceDefinition":
            v.check(res.kind, res.group, name, crds.crd_errors(obj))
            crds.accept(obj)
        elif res.custom:
            if res.has_status:
                obj.pop("status", None)
            obj.update(crds.CustomSchema(res).admit(obj))
        self._check_owner_namespaces(res, obj)

    def _check_owner_namespaces(self, res: Resource, obj: Obj) -> None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("blockOwnerDeletion") and not isinstance(ref["blockOwnerDeletion"], bool):
                raise bad_request("blockOwnerDeletion must be a boolean")

    def _allocate_cluster_ip(self) -> str:
        self._ip += 1
        return f"10.96.{(self._ip // 250) % 250}.{self._ip % 250 + 1}"

    # ------------------------------------------------------------ update / patch

    def update(self, res: Resource, ns: str, name: str, body: Any, sub: str = "") -> Obj:
        """PUT: optimistic concurrency on metadata.resourceVersion (absent = unconditional)."""
        if not isinstance(body, dict):
            raise bad_request("the object provided is not a JSON object")
        if res.custom:
            crds.check_custom_head(body, res)
        with self.lock:
            old = self.get(res, ns, name)
            meta = body.get("metadata")
            if not isinstance(meta, dict):
                meta = body["metadata"] = {}
            if meta.get("name") and meta["name"] != name:
                raise bad_request(f"the name of the object ({meta['name']}) does not match the "
                                  f"name on the URL ({name})")
            if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the "
                                  "namespace sent on the request")
            rv = meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(res.plural, res.group, name, STALE)
            if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
                raise conflict(res.plural, res.group, name,
                               f"Precondition failed: UID in precondition: {meta['uid']}, UID "
                               f"in object meta: {old['metadata']['uid']}")
            return self._write(res, old, body, sub)

    def patch(self, res: Resource, ns: str, name: str, ctype: str, patch: Any,
              sub: str = "") -> Obj:
        """PATCH: apply to the current object, then the update path (rv in the patch is checked)."""
        with self.lock:
            old = self.get(res, ns, name)
            base = copy.deepcopy(old)
            new = apply_patch(ctype, base, patch, res.kind, res.custom)
            if not isinstance(new, dict):
                raise bad_request("the patch did not produce an object")
            new.setdefault("metadata", {})
            rv = new["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(res.plural, res.group, name, STALE)
            if new["metadata"].get("uid") not in (None, old["metadata"]["uid"]):
                raise conflict(res.plural, res.group, name,
                               f"Precondition failed: UID in precondition: "
                               f"{new['metadata']['uid']}, UID in object meta: "
                               f"{old['metadata']['uid']}")
            if new["metadata"].get("name") not in (None, name):
                raise bad_request(f"the name of the object ({new['metadata']['name']}) does not "
                                  f"match the name on the URL ({name})")
            if res.custom:
                crds.check_custom_head(new, res)
            return self._write(res, old, new, sub)

    def mutate(self, res: Resource, ns: str, name: str, fn: Callable[[Obj], None],
               sub: str = "") -> Obj:
        """In-process read-modify-write (kubelet, controllers) through the same update path."""
        with self.lock:
            old = self.get(res, ns, name)
            new = copy.deepcopy(old)
            fn(new)
            return self._write(res, old, new, sub)

    def system_write(self, res: Resource, old: Obj, fn: Callable[[Obj], None]) -> Obj:
        """A write by the system itself (binding, controllers) that skips update validation."""
        with self.lock:
            new = copy.deepcopy(old)
            fn(new)
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._put(res, new, old)
            self._emit("MODIFIED", res, new, old)
            return new

    def _write(self, res: Resource, old: Obj, new: Obj, sub: str) -> Obj:
        if sub == "status":
            if not res.has_status:
                raise ApiError(404, "the server could not find the requested resource")
            result = {**old, "metadata": dict(old["metadata"]), "status": new.get("status")}
            if result["status"] is None:
                result.pop("status")
            if res.custom:
                result = {**result, **crds.CustomSchema(res).admit(result)}
        elif sub:
            raise ApiError(404, "the server could not find the requested resource")
        else:
            result = new
            result["apiVersion"], result["kind"] = res.api_version, res.kind
            meta = result["metadata"]
            for k in _SYSTEM_META:
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            meta.pop("managedFields", None)
            if res.has_status:
                if "status" in old:
                    result["status"] = old["status"]
                else:
                    result.pop("status", None)
            self._prepare_update(res, old, result)
            changed = _spec_part(old) != _spec_part(result)
            if res.custom and not res.has_status:
                changed = changed or old.get("status") != result.get("status")
            if changed and res.kind not in KINDS_WITHOUT_SPEC_GENERATION:
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        meta = result["metadata"]
        if old["metadata"].get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                v.check(res.kind, res.group, meta["name"], [
                    ("metadata.finalizers", "Forbidden: no new finalizers can be added if the "
                     "object is being deleted, found new finalizers " + str(sorted(added)))])
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if result == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self._put(res, result, old)
        self._emit("MODIFIED", res, result, old)
        if (meta.get("deletionTimestamp") and not meta.get("finalizers")
                and not meta.get("deletionGracePeriodSeconds")):
            self._remove(res, result)
        return result

    def _prepare_update(self, res: Resource, old: Obj, new: Obj) -> None:
        meta = new["metadata"]
        v.check(res.kind, res.group, meta["name"], v.metadata_errors(meta, self._name_rule(res)))
        if res.kind == "Pod":
            v.default_pod(new)
            v.check("Pod", "", meta["name"], v.pod_update_errors(old, new))
        elif res.kind == "Service":
            spec = new.setdefault("spec", {})
            if old["spec"].get("clusterIP") and spec.get("clusterIP", old["spec"]["clusterIP"]) \
                    != old["spec"]["clusterIP"]:
                v.check("Service", "", meta["name"], [("spec.clusterIP", "Invalid value: field "
                                                       "is immutable")])
            spec.setdefault("clusterIP", old["spec"].get("clusterIP"))
            v.default_service(new, self._allocate_cluster_ip)
            v.check("Service", "", meta["name"], v.service_errors(new))
        elif res.kind == "Secret":
            v.check("Secret", "", meta["name"], v.normalize_secret(new))
        elif res.kind == "NetworkPolicy":
            netpol.default_network_policy(new)
            v.check(res.kind, res.group, meta["name"], netpol.network_policy_errors(new))
        elif res.kind == "Namespace":
            new["spec"] = old.get("spec", {})
        elif res.kind == "CustomResourceDefinition":
            v.check(res.kind, res.group, meta["name"], crds.crd_errors(new))
            new["status"] = old.get("status")
        elif res.custom:
            new.update(crds.CustomSchema(res).admit(new))

    # ------------------------------------------------------------ delete

    def delete(self, res: Resource, ns: str, name: str, opts: dict[str, Any]) -> tuple[Obj, bool]:
        """DELETE: graceful for bound pods, finalizers keep objects; returns (object, removed)."""
        with self.lock:
            obj = self.get(res, ns, name)
            meta = obj["metadata"]
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise conflict(res.plural, res.group, name,
                               f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                               f"object meta: {meta['uid']}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise conflict(res.plural, res.group, name,
                               f"Precondition failed: ResourceVersion in precondition: "
                               f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                               f"{meta['resourceVersion']}")
            policy = opts.get("propagationPolicy")
            if policy is None and opts.get("orphanDependents") is not None:
                policy = "Orphan" if opts["orphanDependents"] else "Background"
            if policy not in (None, "Background", "Foreground", "Orphan"):
                raise ApiError(422, f"DeleteOptions.meta.k8s.io \"\" is invalid: "
                                    f"propagationPolicy: Unsupported value: \"{policy}\"")
            grace = self._grace(res, obj, opts.get("gracePeriodSeconds"))
            finalizers = list(meta.get("finalizers") or [])
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if res.kind == "Namespace":
                finalizers = finalizers or []
            if meta.get("deletionTimestamp"):
                current = meta.get("deletionGracePeriodSeconds") or 0
                if grace < current or finalizers != list(meta.get("finalizers") or []):
                    return self._mark_deleting(res, obj, min(grace, current), finalizers), False
                return obj, False
            if grace > 0 or finalizers or res.kind == "Namespace":
                return self._mark_deleting(res, obj, grace, finalizers), False
            self._remove(res, obj)
            return obj, True

    def _grace(self, res: Resource, obj: Obj, asked: Any) -> int:
        if res.kind != "Pod":
            return 0
        if asked is not None:
            try:
                grace = int(asked)
            except (TypeError, ValueError):
                raise bad_request(f"invalid gracePeriodSeconds: {asked}") from None
        else:
            grace = int(obj["spec"].get("terminationGracePeriodSeconds", 30))
        if not obj["spec"].get("nodeName"):
            grace = 0
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            grace = 0
        return max(grace, 0)

    def _mark_deleting(self, res: Resource, obj: Obj, grace: int, finalizers: list[str]) -> Obj:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        if not meta.get("deletionTimestamp") or grace < (meta.get("deletionGracePeriodSeconds")
                                                          or 0):
            meta["deletionTimestamp"] = now(grace)
        meta["deletionGracePeriodSeconds"] = grace
        if finalizers:
            meta["finalizers"] = finalizers
        if res.kind == "Namespace":
            new["status"] = {**new.get("status", {}), "phase": "Terminating"}
        meta["resourceVersion"] = self._next_rv()
        self._put(res, new, obj)
        self._emit("MODIFIED", res, new, obj)
        if not finalizers and grace == 0 and res.kind != "Namespace":
            self._remove(res, new)
        return new

    def _remove(self, res: Resource, obj: Obj) -> None:
        """Take the object out of the store for good: DELETED at a new resourceVersion."""
        gone = with_rv(obj, int(self._next_rv()))
        self._drop(res, obj)
        self._emit("DELETED", res, gone, obj)
        if res.kind == "CustomResourceDefinition":
            self._drop_crd(obj)

    def _drop_crd(self, crd: Obj) -> None:
        for served in crds.served_resources(crd):
            self.resources.pop((served.group, served.version, served.plural), None)
        res = self.storage.pop(f"{crd['spec']['group']}/{crd['spec']['names']['plural']}", None)
        if res is None:
            return
        for obj in self.all(res.key):
            self._remove(res, obj)
        self.objects.pop(res.key, None)

    def remove_now(self, key: str, ns: str, name: str, uid: str | None = None) -> bool:
        """Force removal (grace 0) by controllers: kubelet's final delete, podgc; keeps
        finalizers' hold. Returns whether the object is gone."""
        with self.lock:
            obj = self.peek(key, ns, name)
            if obj is None or (uid and obj["metadata"]["uid"] != uid):
                return True
            res = self.storage[key]
            if obj["metadata"].get("finalizers"):
                if obj["metadata"].get("deletionGracePeriodSeconds") != 0:
                    self._mark_deleting(res, obj, 0, list(obj["metadata"]["finalizers"]))
                return False
            self._remove(res, obj)
            return True

    def owner_present(self, dependent_ns: str, ref: dict[str, Any]) -> bool:
        """Whether an ownerReference resolves the way the garbage collector resolves it: same
        uid, name and kind, in the dependent's namespace or cluster-scoped."""
        with self.lock:
            where = self.by_uid.get(ref.get("uid", ""))
            if where is None:
                return False
            key, ns, name = where
            obj = self.peek(key, ns, name)
            if obj is None or name != ref.get("name") or obj.get("kind") != ref.get("kind"):
                return False
            return ns in ("", dependent_ns)


def _condition(ctype: str, status: str, reason: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": now()}
    if reason:
        cond["reason"] = reason
    return cond


condition = _condition
