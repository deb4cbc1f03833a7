"""`KubeEmulator`: the API server, controllers, simulated nodes and the test-facing handles."""

from __future__ import annotations

import copy
import re
import secrets
import shutil
import signal
import tempfile
from typing import Any

from .apiserver import ApiServer, Injection
from .dns import HostsFiles
from .gc import Controllers
from .kubelet import Kubelets, unshare_works
from .metrics_server import MetricsServer
from .objects import Store
from .rbac import Call, disallowed

_UNSHARE: bool | None = None


def _dns_isolation() -> bool:
    global _UNSHARE
    if _UNSHARE is None:
        _UNSHARE = unshare_works()
    return _UNSHARE


class KubeEmulator:
    """An emulated Kubernetes cluster on 127.0.0.1 for the official client to talk to."""

    def __init__(self, history_size: int = 50_000, bookmark_interval: float = 1.0,
                 metrics_server: bool = True, podgc_quarantine_s: float = 0.0) -> None:
        """``metrics_server``: serve metrics.k8s.io (pod cpu and memory), as a cluster
        with metrics-server installed does; ``podgc_quarantine_s``: how long pods of a
        deleted node stay before the pod GC removes them (a cluster's: 40 s)."""
        self.metrics_server = metrics_server
        self.podgc_quarantine_s = podgc_quarantine_s
        self.store = Store(history_size)
        self.token = secrets.token_hex(16)
        self.api = ApiServer(self.store, self.token, bookmark_interval)
        self.folder = tempfile.mkdtemp(prefix="kube-emulator-")
        self.dns_isolation = _dns_isolation()
        self.url = ""
        self._controllers: Controllers | None = None
        self._kubelets: Kubelets | None = None
        self._dns: HostsFiles | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> KubeEmulator:
        """Listen on a free port and start the controllers and kubelets."""
        self.url = self.api.start()
        port = int(self.url.rsplit(":", 1)[1])
        self._controllers = Controllers(self.store, self.podgc_quarantine_s)
        self._dns = HostsFiles(self.store, self.folder) if self.dns_isolation else None
        self._kubelets = Kubelets(self.store, self.folder, port, self._dns)
        self.api.log_source = self._kubelets.log_source
        self.api.exec_target = self._kubelets.exec_target
        if self.metrics_server:
            self.api.pod_metrics = MetricsServer(self._kubelets)
        return self

    def close(self) -> None:
        """Kill every process the kubelets started, stop serving, remove temporary files."""
        if self._kubelets is not None:
            self._kubelets.close()
        self.api.close()
        if self._controllers is not None:
            self._controllers.close()
        if self._dns is not None:
            self._dns.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_kubeconfig(self, path: str) -> str:
        """A kubeconfig with this server, a bearer-token user and a current context."""
        text = (
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: emulated\n  cluster:\n    server: {self.url}\n"
            f"users:\n- name: tester\n  user:\n    token: {self.token}\n"
            "contexts:\n- name: emulated\n  context:\n    cluster: emulated\n    user: tester\n"
            "    namespace: default\n"
            "current-context: emulated\npreferences: {}\n"
        )
        with open(path, "w") as f:
            f.write(text)
        return path

    # ------------------------------------------------------------ kubelet handles

    @property
    def kubelets(self) -> Kubelets:
        if self._kubelets is None:
            raise RuntimeError("KubeEmulator.start() first")
        return self._kubelets

    @property
    def missing_images(self) -> set[str]:
        """Images no registry has: pods using them go ErrImagePull then ImagePullBackOff."""
        return self.kubelets.missing_images

    @property
    def images(self) -> dict[str, list[str]]:
        """Image name -> ENTRYPOINT used when a container gives no `command`."""
        return self.kubelets.images

    @property
    def image_env(self) -> dict[str, str]:
        """Environment every container gets beneath its own `env` (an image's ENV)."""
        return self.kubelets.image_env

    def add_node(
        self,
        name: str,
        cpu: str = "4",
        memory: str = "8Gi",
        gpus: int = 0,
        labels: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        unschedulable: bool = False,
        extended: dict[str, str] | None = None,
        run_pods: bool = True,
    ) -> dict[str, Any]:
        """Register a Ready node with a kubelet (run_pods=False: pods go Running, no process)."""
        host_ip = self.kubelets.add_node(name, run_pods)
        capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        capacity.update(extended or {})
        node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", **(labels or {})}
        spec: dict[str, Any] = {}
        if taints:
            spec["taints"] = taints
        if unschedulable:
            spec["unschedulable"] = True
        from .objects import now

        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": node_labels},
            "spec": spec,
            "status": {
                "capacity": capacity, "allocatable": dict(capacity),
                "addresses": [{"type": "InternalIP", "address": host_ip},
                              {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kubelet is posting ready status",
                                "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-emulated", "operatingSystem": "linux",
                             "architecture": "amd64", "containerRuntimeVersion": "emulated://1",
                             "bootID": host_ip, "kernelVersion": "emulated",
                             "kubeProxyVersion": "", "machineID": name, "osImage": "emulated",
                             "systemUUID": name},
            },
        }
        return self.store.create(self.store.resource("", "v1", "nodes"), "", body)

    def lose_node(self, name: str) -> None:
        """The node dies: processes SIGKILLed, Node NotReady then deleted; podgc removes pods."""
        self.kubelets.lose_node(name)
        nodes = self.store.resource("", "v1", "nodes")

        def not_ready(n: dict[str, Any]) -> None:
            for c in n["status"].get("conditions") or []:
                if c["type"] == "Ready":
                    c.update(status="Unknown", reason="NodeStatusUnknown",
                             message="Kubelet stopped posting node status.")
            n["spec"]["taints"] = [*(n["spec"].get("taints") or []),
                                   {"key": "node.kubernetes.io/unreachable",
                                    "effect": "NoExecute"}]

        self.store.system_write(nodes, self.store.get(nodes, "", name), not_ready)
        self.store.delete(nodes, "", name, {})

    def _pod_uid(self, namespace: str, pod: str) -> str:
        return self.store.get(self.store.resource("", "v1", "pods"), namespace, pod)[
            "metadata"]["uid"]

    def evict(self, namespace: str, pod: str) -> None:
        """Kubelet eviction for memory pressure: phase Failed, reason Evicted."""
        self.kubelets.evict(self._pod_uid(namespace, pod))

    def kill_process(self, namespace: str, pod: str, sig: int = signal.SIGKILL) -> None:
        """Signal the pod's container process group (a crash)."""
        self.kubelets.kill(self._pod_uid(namespace, pod), sig)

    # ------------------------------------------------------------ faults

    def inject(self, method: str, path_regex: str, status: int, times: int = 1) -> None:
        """Answer the next `times` requests matching method ('*' for any) and path with a
        Status of that code."""
        with self.api._lock:
            self.api.injections.append(Injection(method.upper() if method != "*" else "*",
                                                 re.compile(path_regex), status, times))

    def drop_watch_events(self, n: int) -> None:
        """The next n events that any watch stream would get are lost (the store still
        changes)."""
        with self.store.lock:
            self.store.drop_events += n

    def duplicate_watch_events(self, n: int) -> None:
        """The next n watch events are sent twice."""
        with self.store.lock:
            self.store.duplicate_events += n

    def compact(self) -> None:
        """Forget the event history: watches and continues from older versions get 410."""
        self.store.compact()

    def close_watches(self) -> None:
        """End every open watch stream."""
        self.api.close_watches()

    # ------------------------------------------------------------ assertions

    @property
    def calls(self) -> list[Call]:
        """Every resource request so far as (verb, api_group, resource, subresource, ns)."""
        return list(self.api.calls)

    def allowed_by(self, rules: list[dict[str, Any]]) -> list[Call]:
        """The calls that none of the PolicyRules allows (empty when the role suffices)."""
        return disallowed(list(self.api.calls), list(self.api.call_names), rules)

    def objects(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of a kind ('Pod', 'pods', 'trainingjobs.tidemill.io')."""
        want = kind.lower()
        with self.store.lock:
            for key, res in self.store.storage.items():
                names = {res.kind.lower(), res.plural, f"{res.plural}.{res.group}",
                         f"{res.kind.lower()}.{res.group}"}
                if want in names:
                    return copy.deepcopy(self.store.all(key, namespace))
        raise KeyError(f"no resource {kind!r} is served")
