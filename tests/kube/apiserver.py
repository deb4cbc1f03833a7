"""The HTTP face of the emulator: routing, verbs, watch and log streams, auth, fault injection.

Plain `http.server` with HTTP/1.1 keep-alive; each response is written in one send (headers and
body together) with TCP_NODELAY, so urllib3's pooled connections do not stall on Nagle.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .errors import ApiError, bad_request, conflict, invalid, status_object, success_status
from .objects import Store, condition
from .pod_exec import PROTOCOLS as exec_protocols
from .pod_exec import ExecTarget
from .pod_exec import serve as serve_exec
from .rbac import Call, rbac_verb
from .resources import Resource
from .selectors import parse_field_selector, parse_label_selector
from .watch import Watcher

if TYPE_CHECKING:
    from .metrics_server import MetricsServer

METRICS_GROUP = "metrics.k8s.io"


@dataclass
class Route:
    """A parsed resource path."""

    group: str
    version: str
    namespace: str | None
    plural: str
    name: str
    sub: str


@dataclass
class LogSource:
    """Where a container's output is and whether it can still grow."""

    path: str
    finished: Callable[[], bool]


@dataclass
class Injection:
    """A canned failure for the next `times` matching requests."""

    method: str
    pattern: re.Pattern[str]
    status: int
    times: int


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, [""])[-1].lower() in ("1", "true")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _int(query: dict[str, list[str]], name: str) -> int | None:
    raw = _one(query, name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise bad_request(f"invalid {name}: {raw}") from None


class ApiServer:
    """Serves a Store over HTTP on 127.0.0.1 with a bearer token."""

    def __init__(self, store: Store, token: str, bookmark_interval: float = 1.0) -> None:
        self.store = store
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.calls: list[Call] = []
        self.call_names: list[str] = []
        self.injections: list[Injection] = []
        self.log_source: Callable[[dict[str, Any], str], LogSource | None] = lambda p, c: None
        self.exec_target: Callable[[dict[str, Any]], ExecTarget | None] = lambda p: None
        """Where a running pod's commands run (the kubelet's), for ``pods/exec``."""
        self.pod_metrics: MetricsServer | None = None
        """The metrics.k8s.io group, when the cluster runs metrics-server."""
        self.watchers: set[Watcher] = set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Listen on a free port; returns the base URL."""
        api = self

        class Handler(_Handler):
            server_api = api

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="kube-apiserver", daemon=True)
        self._thread.start()
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    def close(self) -> None:
        """Stop listening, end watch streams and drop open connections."""
        self.closing.set()
        self.close_watches()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close_watches(self) -> None:
        """End every open watch stream (clients see the stream finish normally)."""
        with self._lock:
            watchers = list(self.watchers)
        for w in watchers:
            w.close()

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    # ------------------------------------------------------------ routing

    def route(self, path: str) -> Route | None:
        """Resource path to Route; None for discovery/non-resource paths."""
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        if not rest:
            return None
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            res = self.store.find_plural(group, version, rest[2])
            if res is not None and res.namespaced:
                ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        return Route(group, version, ns, plural, name, sub)

    def discovery(self, path: str) -> dict[str, Any]:
        """Minimal /api, /apis, /version and resource lists."""
        parts = [p for p in path.split("/") if p]
        if parts == ["version"]:
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-emulated",
                    "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for g, ver, _ in list(self.store.resources):
                if g and ver not in groups.setdefault(g, []):
                    groups[g].append(ver)
            if self.pod_metrics is not None:
                groups[METRICS_GROUP] = ["v1beta1"]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{x}", "version": x} for x in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in groups.items()]}
        if (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis"):
            group = "" if parts[0] == "api" else parts[1]
            version = parts[-1]
            found = [r for (g, ver, _), r in list(self.store.resources.items())
                     if g == group and ver == version]
            if not found:
                raise ApiError(404, "the server could not find the requested resource")
            res_list = []
            for r in found:
                res_list.append({"name": r.plural, "singularName": r.kind.lower(),
                                 "namespaced": r.namespaced, "kind": r.kind,
                                 "verbs": ["create", "delete", "get", "list", "patch", "update",
                                           "watch"]})
                if r.has_status:
                    res_list.append({"name": f"{r.plural}/status", "singularName": "",
                                     "namespaced": r.namespaced, "kind": r.kind,
                                     "verbs": ["get", "patch", "update"]})
            return {"kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": f"{group}/{version}" if group else version,
                    "resources": res_list}
        raise ApiError(404, "the server could not find the requested resource")

    # ------------------------------------------------------------ one request

    def handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            if h.headers.get("Authorization", "") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized")
            if url.path.startswith(f"/apis/{METRICS_GROUP}/"):
                self._metrics(h, url.path)
                return
            route = self.route(url.path)
            if route is None:
                if h.command != "GET":
                    raise ApiError(405, "the server does not allow this method on the requested "
                                        "resource")
                h.send_json(200, self.discovery(url.path))
                return
            self._record(h.command, route, query)
            self._inject(h.command, url.path)
            self._dispatch(h, route, query, raw)
        except ApiError as e:
            h.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        except Exception as e:  # the emulator's own bug: say so like the server would
            h.send_json(500, status_object(500, "InternalError",
                                           f"emulator error: {e!r}\n{traceback.format_exc()}"))

    def _exec(self, h: _Handler, ns: str, name: str, query: dict[str, list[str]]) -> None:
        """``pods/exec`` over a WebSocket, as the API server proxies it to the kubelet."""
        if h.command not in ("GET", "POST"):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        pod = self.store.get(self.store.resource("", "v1", "pods"), ns, name)
        if h.headers.get("Upgrade", "").lower() != "websocket":
            raise bad_request("Upgrade request required")
        offered = [p.strip() for p in h.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next((p for p in exec_protocols if p in offered), None)
        if protocol is None:
            raise bad_request(f"no supported subprotocol in {offered}; use one of "
                              f"{list(exec_protocols)}")
        command = query.get("command") or []
        if not command:
            raise bad_request("you must specify at least 1 command")
        target = self.exec_target(pod)
        if target is None:
            raise bad_request(f"unable to upgrade connection: container not found "
                              f"(pod {name} is not running)")
        serve_exec(h, target, command, protocol)

    def _metrics(self, h: _Handler, path: str) -> None:
        """``/apis/metrics.k8s.io/v1beta1/namespaces/NS/pods[/NAME]``: read-only, as
        metrics-server serves it (an aggregated API: 404 when it is not installed)."""
        parts = [p for p in path.split("/") if p][2:]
        shape = len(parts) in (4, 5) and parts[0] == "v1beta1" and parts[1] == "namespaces"
        if not shape or parts[3] != "pods":
            raise ApiError(404, "the server could not find the requested resource")
        namespace, name = parts[2], parts[4] if len(parts) == 5 else ""
        self.calls.append(Call("get" if name else "list", METRICS_GROUP, "pods", "", namespace))
        self.call_names.append(name)
        if self.pod_metrics is None:
            raise ApiError(404, "the server could not find the requested resource")
        if h.command != "GET":
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if name:
            h.send_json(200, self.pod_metrics.pod(namespace, name))
            return
        items = self.pod_metrics.pods(namespace)
        h.send_json(200, {"kind": "PodMetricsList", "apiVersion": f"{METRICS_GROUP}/v1beta1",
                          "metadata": {}, "items": items})

    def _record(self, method: str, route: Route, query: dict[str, list[str]]) -> None:
        watch = _flag(query, "watch")
        has_name = bool(route.name)
        if route.sub == "log" or route.sub == "binding":
            has_name = True
        verb = rbac_verb(method, has_name, watch)
        ns = route.namespace or ""
        if route.group == "" and route.plural == "namespaces" and route.name:
            ns = route.name
        self.calls.append(Call(verb, route.group, route.plural, route.sub, ns))
        self.call_names.append(route.name)

    def _inject(self, method: str, path: str) -> None:
        with self._lock:
            for inj in self.injections:
                if inj.times > 0 and inj.method in (method, "*") and inj.pattern.search(path):
                    inj.times -= 1
                    raise ApiError(inj.status, f"injected failure ({inj.status}) for {method} "
                                               f"{path}")

    def _body(self, raw: bytes) -> Any:
        try:
            return json.loads(raw or b"null")
        except ValueError as e:
            raise bad_request(f"the body of the request could not be decoded: {e}") from None

    def _dispatch(self, h: _Handler, route: Route, query: dict[str, list[str]],
                  raw: bytes) -> None:
        res = self.store.resource(route.group, route.version, route.plural)
        if res.namespaced and route.namespace is None and (route.name or h.command != "GET"):
            raise ApiError(404, "the server could not find the requested resource")
        ns = route.namespace or ""
        method = h.command
        if not route.name:
            if method == "GET":
                if _flag(query, "watch"):
                    self._watch(h, res, route.namespace, query)
                else:
                    self._list(h, res, route.namespace, query)
            elif method == "POST":
                h.send_json(201, self.store.create(res, ns, self._body(raw)))
            elif method == "DELETE":
                self._delete_collection(h, res, route.namespace, query, raw)
            else:
                raise ApiError(405, "the server does not allow this method on the requested "
                                    "resource")
            return
        sub = route.sub
        if sub == "log" and res.kind == "Pod" and method == "GET":
            self._log(h, ns, route.name, query)
            return
        if sub == "exec" and res.kind == "Pod":
            self._exec(h, ns, route.name, query)
            return
        if sub == "binding" and res.kind == "Pod":
            if method != "POST":
                raise ApiError(405, "the server does not allow this method on the requested "
                                    "resource")
            self._bind(h, ns, route.name, self._body(raw))
            return
        if sub not in ("", "status") or (sub == "status" and not res.has_status):
            raise ApiError(404, "the server could not find the requested resource")
        if method == "GET":
            h.send_json(200, self.store.get(res, ns, route.name))
        elif method == "PUT":
            h.send_json(200, self.store.update(res, ns, route.name, self._body(raw), sub))
        elif method == "PATCH":
            ctype = h.headers.get("Content-Type", "")
            h.send_json(200, self.store.patch(res, ns, route.name, ctype, self._body(raw), sub))
        elif method == "DELETE" and not sub:
            self._delete(h, res, ns, route.name, query, raw)
        else:
            raise ApiError(405, "the server does not allow this method on the requested resource")

    # ------------------------------------------------------------ verbs

    def _list(self, h: _Handler, res: Resource, ns: str | None,
              query: dict[str, list[str]]) -> None:
        labels = parse_label_selector(_one(query, "labelSelector"))
        fields = parse_field_selector(_one(query, "fieldSelector"), res.plural, res.custom)
        limit = _int(query, "limit") or 0
        items, rv, token, remaining = self.store.list(
            res, ns, labels, fields, limit, _one(query, "continue"))
        if not res.custom:
            items = [{k: val for k, val in o.items() if k not in ("kind", "apiVersion")}
                     for o in items]
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        h.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                          "metadata": meta, "items": items})

    def _delete_options(self, query: dict[str, list[str]], raw: bytes) -> dict[str, Any]:
        opts = self._body(raw) if raw.strip() else {}
        if not isinstance(opts, dict):
            raise bad_request("DeleteOptions must be an object")
        grace = _int(query, "gracePeriodSeconds")
        if grace is not None:
            opts["gracePeriodSeconds"] = grace
        if _one(query, "propagationPolicy"):
            opts["propagationPolicy"] = _one(query, "propagationPolicy")
        if _one(query, "orphanDependents") is not None:
            opts["orphanDependents"] = _flag(query, "orphanDependents")
        if opts.get("dryRun") or query.get("dryRun"):
            raise bad_request("dryRun is not supported by the emulator")
        return opts

    def _delete(self, h: _Handler, res: Resource, ns: str, name: str,
                query: dict[str, list[str]], raw: bytes) -> None:
        opts = self._delete_options(query, raw)
        obj, removed = self.store.delete(res, ns, name, opts)
        code = 202 if not removed and opts.get("orphanDependents") is False else 200
        if removed and not res.returns_object:
            h.send_json(code, success_status(res.plural, name, res.group, obj["metadata"]["uid"]))
        else:
            h.send_json(code, obj)

    def _delete_collection(self, h: _Handler, res: Resource, ns: str | None,
                           query: dict[str, list[str]], raw: bytes) -> None:
        if res.namespaced and ns is None:
            raise ApiError(405, "the server does not allow this method on the requested resource")
        opts = self._delete_options(query, raw)
        labels = parse_label_selector(_one(query, "labelSelector"))
        fields = parse_field_selector(_one(query, "fieldSelector"), res.plural, res.custom)
        items, _, _, _ = self.store.list(res, ns, labels, fields)
        out = []
        for obj in items:
            meta = obj["metadata"]
            try:
                gone, _ = self.store.delete(res, meta.get("namespace", ""), meta["name"], opts)
                out.append(gone)
            except ApiError as e:
                if e.code != 404:
                    raise
        h.send_json(200, {"kind": f"{res.kind}List", "apiVersion": res.api_version,
                          "metadata": {"resourceVersion": str(self.store.rv)}, "items": out})

    def _bind(self, h: _Handler, ns: str, name: str, body: Any) -> None:
        """pods/binding: set spec.nodeName and PodScheduled in one write, as the registry does."""
        if not isinstance(body, dict):
            raise bad_request("the object provided is not a JSON object")
        if (body.get("metadata") or {}).get("name") != name:
            raise bad_request("name in URL does not match name in Binding object")
        target = body.get("target") or {}
        if not target.get("name"):
            raise invalid("Binding", "", name, [("target.name", "Required value")])
        if target.get("kind") not in (None, "", "Node"):
            raise invalid("Binding", "", name, [("to.kind", f'Invalid value: '
                                                 f'"{target["kind"]}": must be empty or \'Node\'')])
        store = self.store
        pods = store.resource("", "v1", "pods")
        with store.lock:
            pod = store.get(pods, ns, name)
            if pod["metadata"].get("deletionTimestamp"):
                raise conflict("pods/binding", "", name,
                               f"pod {name} is being deleted, cannot be assigned to a host")
            node = pod["spec"].get("nodeName")
            if node:
                raise conflict("pods/binding", "", name,
                               f'pod {name} is already assigned to node "{node}"')

            def assign(p: dict[str, Any]) -> None:
                p["spec"]["nodeName"] = target["name"]
                for key, value in ((body.get("metadata") or {}).get("annotations") or {}).items():
                    p["metadata"].setdefault("annotations", {})[key] = value
                conds = [c for c in p.setdefault("status", {}).get("conditions") or []
                         if c.get("type") != "PodScheduled"]
                p["status"]["conditions"] = [condition("PodScheduled", "True"), *conds]

            store.system_write(pods, pod, assign)
        h.send_json(201, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Success", "code": 201})

    # ------------------------------------------------------------ streams

    def _watch(self, h: _Handler, res: Resource, ns: str | None,
               query: dict[str, list[str]]) -> None:
        labels = parse_label_selector(_one(query, "labelSelector"))
        fields = parse_field_selector(_one(query, "fieldSelector"), res.plural, res.custom)
        timeout = _int(query, "timeoutSeconds")
        bookmarks = _flag(query, "allowWatchBookmarks")
        w = Watcher(res, ns, labels, fields)
        self.store.watch(w, _one(query, "resourceVersion"))
        with self._lock:
            self.watchers.add(w)
        start = time.monotonic()
        deadline = start + timeout if timeout else None
        next_mark = start + self.bookmark_interval
        try:
            h.start_chunked("application/json")
            while not self.closing.is_set():
                t = time.monotonic()
                waits = [x - t for x in (deadline, next_mark if bookmarks else None) if x]
                try:
                    item = w.queue.get(timeout=max(min(waits), 0) if waits else None)
                except Exception:
                    item = None
                if item is Watcher.END:
                    break
                if item is None:
                    t = time.monotonic()
                    if deadline is not None and t >= deadline:
                        if bookmarks:
                            self._bookmark(h, w, res)
                        break
                    if bookmarks and t >= next_mark:
                        self._bookmark(h, w, res)
                        next_mark = t + self.bookmark_interval
                    continue
                etype, obj = item
                h.send_chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
                if etype == "ERROR":
                    break
            h.end_chunked()
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
        finally:
            self.store.unwatch(w)
            with self._lock:
                self.watchers.discard(w)

    def _bookmark(self, h: _Handler, w: Watcher, res: Resource) -> None:
        rv = self.store.quiet_rv(w)
        if rv is None:
            return
        mark = {"kind": res.kind, "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(rv)}}
        h.send_chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")

    def _log(self, h: _Handler, ns: str, name: str, query: dict[str, list[str]]) -> None:
        pods = self.store.resource("", "v1", "pods")
        pod = self.store.get(pods, ns, name)
        names = [c["name"] for c in pod["spec"].get("containers") or []]
        container = _one(query, "container")
        if not container:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod {name}, choose "
                                  f"one of: [{' '.join(names)}]")
            container = names[0]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        if _flag(query, "previous"):
            raise bad_request(f'previous terminated container "{container}" in pod "{name}" not '
                              "found")
        if not pod["spec"].get("nodeName"):
            raise bad_request(f"pod {name} does not have a host assigned")
        source = self.log_source(pod, container)
        if source is None:
            reason = "ContainerCreating"
            for st in pod.get("status", {}).get("containerStatuses") or []:
                if st.get("name") == container:
                    reason = (st.get("state", {}).get("waiting") or {}).get("reason", reason)
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "trying and failing to pull image"
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                              f"{reason}")
        tail = _int(query, "tailLines")
        limit = _int(query, "limitBytes")
        with open(source.path, "rb") as f:
            data = f.read()
            if tail is not None:
                lines = data.splitlines(keepends=True)
                data = b"".join(lines[-tail:]) if tail > 0 else b""
            if limit is not None:
                data = data[:limit]
            if not _flag(query, "follow"):
                h.send_bytes(200, "text/plain", data)
                return
            sent = len(data)
            h.start_chunked("text/plain")
            if data:
                h.send_chunk(data)
            while not self.closing.is_set():
                if limit is not None and sent >= limit:
                    break
                done = source.finished()
                more = f.read(65536)
                if more:
                    if limit is not None:
                        more = more[: limit - sent]
                    sent += len(more)
                    h.send_chunk(more)
                    continue
                if done:
                    break
                time.sleep(0.05)
            h.end_chunked()


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the ApiServer; writes responses in single sends."""

    protocol_version = "HTTP/1.1"
    server_api: ApiServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server_api.track(self.connection, True)

    def finish(self) -> None:
        self.server_api.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self.server_api.handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def send_bytes(self, code: int, ctype: str, body: bytes) -> None:
        head = (f"HTTP/1.1 {code} {self.responses.get(code, ('',))[0]}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: no-cache, private\r\n\r\n").encode()
        self.wfile.write(head + body)

    def send_json(self, code: int, obj: Any) -> None:
        self.send_bytes(code, "application/json", json.dumps(obj).encode())

    def start_chunked(self, ctype: str) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
                f"Cache-Control: no-cache, private\r\n\r\n").encode()
        self.wfile.write(head)

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
