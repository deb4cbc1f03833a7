"""Simulated kubelets: each pod bound to a node runs its container as a local process.

Only `restartPolicy: Never` is implemented (a container that exits is not restarted whatever the
policy says). Requests and limits are recorded, not enforced. Each pod gets its own loopback
address and, with `unshare`, its own hostname and /etc/hosts (see dns.py).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from .apiserver import LogSource
from .dns import HostsFiles
from .errors import ApiError
from .objects import Store, condition, now
from .pod_exec import ExecTarget

Pod = dict[str, Any]
_WRAP = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'


def unshare_works() -> bool:
    """Whether this machine lets an unprivileged user make user+mount+uts namespaces."""
    if shutil.which("unshare") is None:
        return False
    try:
        out = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "--uts", "sh", "-c",
             "hostname probe && hostname"],
            capture_output=True, timeout=10, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "probe"


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion; `$$` escapes, unknown references stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)", sub, text)


class ConfigError(Exception):
    """What makes the kubelet report CreateContainerConfigError."""


@dataclass
class PodRun:
    """The kubelet's record of one pod it runs."""

    uid: str
    namespace: str
    name: str
    node: str
    container: str
    ip: str = ""
    workdir: str = ""
    log_path: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    terminating: threading.Event = field(default_factory=threading.Event)
    grace: float = 30.0
    lost: bool = False
    evicted: bool = False
    removed: bool = False
    fake: bool = False
    env: dict[str, str] = field(default_factory=dict)
    """The container's environment and folder once it runs (what ``pods/exec`` uses)."""
    cwd: str = ""


class IpPool:
    """Loopback addresses for pods (127.0.x.y, never 127.0.0.1) and nodes (127.1.x.y)."""

    def __init__(self, second: int, first_host: int) -> None:
        self.second = second
        self.next = first_host
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            n = self.next
            self.next += 1
            third, fourth = divmod(n % (254 * 254), 254)
            return f"127.{self.second}.{third + 1 if self.second == 0 else third}.{fourth + 1}"


class Kubelets:
    """All simulated kubelets: watches pod events in-process and runs or fakes their pods."""

    def __init__(self, store: Store, folder: str, api_port: int, dns: HostsFiles | None) -> None:
        self.store = store
        self.folder = folder
        self.api_port = api_port
        self.dns = dns
        self.nodes: dict[str, bool] = {}  # node name -> runs real processes
        self.node_ips: dict[str, str] = {}
        self.runs: dict[str, PodRun] = {}  # pod uid -> run
        self.fake_ip = 0
        # a random start keeps emulators in parallel test processes off each other's addresses
        self.pod_ips = IpPool(0, random.randrange(1, 60_000))
        self.host_ips = IpPool(1, 0)
        self.missing_images: set[str] = set()
        self.images: dict[str, list[str]] = {}
        self.image_env: dict[str, str] = {}
        self.pull_backoff = 0.3
        self.lock = threading.RLock()
        self.pods = store.resource("", "v1", "pods")
        self._events = store.listen(["/pods"])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelets", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ nodes

    def add_node(self, name: str, run_pods: bool) -> str:
        """Start a kubelet for a node; returns its host IP."""
        with self.lock:
            self.nodes[name] = run_pods
            ip = self.host_ips.take()
            self.node_ips[name] = ip
        return ip

    def lose_node(self, name: str) -> None:
        """The node dies: its kubelet stops and every process of it is SIGKILLed at once."""
        with self.lock:
            self.nodes.pop(name, None)
            runs = [r for r in self.runs.values() if r.node == name]
        for run in runs:
            run.lost = True
            self._signal(run, signal.SIGKILL)
        for run in runs:
            run.exited.wait(5)

    # ------------------------------------------------------------ events

    def _loop(self) -> None:
        while not self._closed.is_set():
            event = self._events.get()
            if event is None:
                return
            try:
                self._handle(event.type, event.obj)
            except Exception:  # keep the kubelets alive; the test will see the symptom
                import traceback

                traceback.print_exc()

    def _handle(self, etype: str, pod: Pod) -> None:
        node = pod["spec"].get("nodeName")
        uid = pod["metadata"]["uid"]
        with self.lock:
            run = self.runs.get(uid)
            runs_here = self.nodes.get(node) if node else None
        if etype == "DELETED":
            if run is not None and (run.fake or run.exited.is_set()):
                with self.lock:
                    self.runs.pop(uid, None)
            if run is not None and not run.fake:
                run.removed = True
                run.grace = min(run.grace, 2.0)
                self._stop(run)
            return
        if runs_here is None:
            return
        deleting = pod["metadata"].get("deletionTimestamp") is not None
        if run is None:
            if deleting or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                if deleting:
                    self.store.remove_now("/pods", pod["metadata"]["namespace"],
                                          pod["metadata"]["name"], uid)
                return
            if not runs_here:
                self._fake_start(pod)
                return
            self._start(pod)
            return
        if deleting and not run.terminating.is_set():
            run.grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            self._stop(run)

    # ------------------------------------------------------------ fake pods (benchmarks)

    def _fake_start(self, pod: Pod) -> None:
        meta = pod["metadata"]
        with self.lock:
            self.fake_ip += 1
            n = self.fake_ip
            run = PodRun(meta["uid"], meta["namespace"], meta["name"], pod["spec"]["nodeName"],
                         pod["spec"]["containers"][0]["name"], ip=f"10.244.{n // 250 % 250}."
                                                                  f"{n % 250 + 1}")
            run.log_path = os.path.join(self.folder, "empty.log")
            if not os.path.exists(run.log_path):
                open(run.log_path, "w").close()
            run.started = True
            run.fake = True
            self.runs[meta["uid"]] = run
        self._set_status(run, lambda p: self._running_status(p, run))

    # ------------------------------------------------------------ real pods

    def _start(self, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        container = spec["containers"][0]
        run = PodRun(meta["uid"], meta["namespace"], meta["name"], spec["nodeName"],
                     container["name"])
        run.workdir = tempfile.mkdtemp(prefix=f"{meta['name'][:30]}-", dir=self.folder)
        run.log_path = os.path.join(run.workdir, f"{container['name']}.log")
        with self.lock:
            self.runs[run.uid] = run
        threading.Thread(target=self._pod_worker, args=(run, pod), daemon=True,
                         name=f"pod-{run.name}").start()

    def _set_status(self, run: PodRun, fn: Any) -> bool:
        """Write the pod's status through the status subresource; False if the pod is gone."""
        if run.lost:
            return False

        def guarded(p: Pod) -> None:
            if p["metadata"]["uid"] != run.uid:
                raise ApiError(404, "pod replaced")
            fn(p)

        try:
            self.store.mutate(self.pods, run.namespace, run.name, guarded, sub="status")
            return True
        except ApiError:
            return False

    def _waiting(self, p: Pod, run: PodRun, reason: str, message: str | None = None) -> None:
        status = p.setdefault("status", {})
        status["phase"] = "Pending"
        status["hostIP"] = self.node_ips.get(run.node, "")
        status["hostIPs"] = [{"ip": status["hostIP"]}]
        status.setdefault("startTime", now())
        status["conditions"] = _conditions(p, initialized=True, ready=False)
        waiting: dict[str, Any] = {"reason": reason}
        if message:
            waiting["message"] = message
        image = p["spec"]["containers"][0].get("image", "")
        status["containerStatuses"] = [{
            "name": run.container, "state": {"waiting": waiting}, "lastState": {},
            "ready": False, "restartCount": 0, "image": image, "imageID": "", "started": False,
        }]

    def _running_status(self, p: Pod, run: PodRun) -> None:
        status = p.setdefault("status", {})
        status["phase"] = "Running"
        status["hostIP"] = self.node_ips.get(run.node, "")
        status["hostIPs"] = [{"ip": status["hostIP"]}]
        status["podIP"] = run.ip
        status["podIPs"] = [{"ip": run.ip}]
        status.setdefault("startTime", now())
        status["conditions"] = _conditions(p, initialized=True, ready=True)
        image = p["spec"]["containers"][0].get("image", "")
        status["containerStatuses"] = [{
            "name": run.container, "state": {"running": {"startedAt": now()}}, "lastState": {},
            "ready": True, "restartCount": 0, "image": image,
            "imageID": f"emulated://{image}", "containerID": f"emulated://{run.uid}",
            "started": True,
        }]

    def _pod_worker(self, run: PodRun, pod: Pod) -> None:
        try:
            self._pod_main(run, pod)
        finally:
            run.exited.set()
            self._finish(run)

    def _pod_main(self, run: PodRun, pod: Pod) -> None:
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")
        if not self._set_status(run, lambda p: self._waiting(p, run, "ContainerCreating")):
            return
        if self._image_missing(image):
            ref = image if "/" in image else f"docker.io/library/{image}"
            self._set_status(run, lambda p: self._waiting(
                p, run, "ErrImagePull", f'failed to pull and unpack image "{ref}": failed to '
                f'resolve reference "{ref}": {ref}: not found'))
            if run.terminating.wait(self.pull_backoff):
                return
            self._set_status(run, lambda p: self._waiting(
                p, run, "ImagePullBackOff", f'Back-off pulling image "{image}"'))
            run.terminating.wait()
            return
        run.ip = self.pod_ips.take()
        while True:
            current = self.store.peek("/pods", run.namespace, run.name)
            if current is None or current["metadata"]["uid"] != run.uid:
                return
            try:
                env = self._env(current, container, run)
                break
            except ConfigError as e:
                msg = str(e)
                self._set_status(run, lambda p, m=msg: self._waiting(
                    p, run, "CreateContainerConfigError", m))
                if run.terminating.wait(0.3):
                    return
        if run.terminating.is_set():
            return
        argv = [expand(a, env) for a in (container.get("command")
                                         or self.images.get(image, []))]
        argv += [expand(a, env) for a in container.get("args") or []]
        program = argv[0] if argv else ""
        found = program if "/" in program else shutil.which(program, path=env.get("PATH"))
        if not argv or not found:
            what = f'exec: "{program}": executable file not found in $PATH' if argv else \
                "no command specified"
            self._terminated(run, 128, "StartError",
                             "failed to create containerd task: failed to create shim task: OCI "
                             "runtime create failed: runc create failed: unable to start "
                             f"container process: {what}: unknown", started=False)
            return
        argv[0] = found
        workdir = container.get("workingDir") or run.workdir
        os.makedirs(workdir, exist_ok=True)
        if self.dns is not None:
            hosts = self.dns.register(current, run.ip)
            host = (current["spec"].get("hostname") or run.name)[:63]
            argv = ["unshare", "--user", "--map-root-user", "--mount", "--uts", "sh", "-c", _WRAP,
                    "sh", hosts, host, *argv]
        with open(run.log_path, "ab") as log, self.lock:
            if run.terminating.is_set():
                return
            run.proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            run.env, run.cwd = env, workdir
            run.started = True
        self._set_status(run, lambda p: self._running_status(p, run))
        code = run.proc.wait()
        if run.lost:
            return
        if run.evicted:
            self._evicted_status(run, code)
            return
        self._terminated(run, code if code >= 0 else 128 - code,
                         "Completed" if code == 0 else "Error", None, signal_no=-code
                         if code < 0 else None)

    def _image_missing(self, image: str) -> bool:
        name = image.rsplit("/", 1)[-1]
        return (image in self.missing_images or name.startswith("missing")
                or "does-not-exist" in image)

    def _env(self, pod: Pod, container: dict[str, Any], run: PodRun) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        exe_dir = os.path.dirname(sys.executable)
        env: dict[str, str] = {"PATH": exe_dir + os.pathsep + os.environ.get("PATH", "")}
        env.update(self.image_env)
        env["HOSTNAME"] = (spec.get("hostname") or meta["name"])[:63]
        env["KUBERNETES_SERVICE_HOST"] = "127.0.0.1"
        env["KUBERNETES_SERVICE_PORT"] = str(self.api_port)
        env["KUBERNETES_PORT"] = f"tcp://127.0.0.1:{self.api_port}"
        ns = meta["namespace"]
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, key in (("secretRef", "/secrets"), ("configMapRef", "/configmaps")):
                ref = src.get(kind)
                if ref is None:
                    continue
                data = self._source(key, ns, ref.get("name", ""), ref.get("optional", False))
                for k, val in (data or {}).items():
                    env[prefix + k] = val
        own: dict[str, str] = {}
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                value = expand(item.get("value", ""), {**env, **own})
            else:
                value = self._value_from(pod, item["valueFrom"], run)
                if value is None:
                    continue
            own[name] = value
        env.update(own)
        return env

    def _source(self, key: str, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = self.store.peek(key, ns, name)
        kind = "secret" if key == "/secrets" else "configmap"
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind} "{name}" not found')
        if key == "/secrets":
            return {k: base64.b64decode(v).decode(errors="replace")
                    for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _value_from(self, pod: Pod, src: dict[str, Any], run: PodRun) -> str | None:
        meta, spec = pod["metadata"], pod["spec"]
        if "fieldRef" in src:
            path = src["fieldRef"].get("fieldPath", "")
            simple = {
                "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName", ""),
                "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                "status.podIP": run.ip, "status.podIPs": run.ip,
                "status.hostIP": self.node_ips.get(run.node, ""),
                "status.hostIPs": self.node_ips.get(run.node, ""),
            }
            if path in simple:
                return simple[path]
            m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
            if m:
                return (meta.get(m.group(1)) or {}).get(m.group(2), "")
            raise ConfigError(f"unsupported fieldPath: {path}")
        for kind, key, label in (("secretKeyRef", "/secrets", "Secret"),
                                 ("configMapKeyRef", "/configmaps", "ConfigMap")):
            if kind in src:
                ref = src[kind]
                data = self._source(key, meta["namespace"], ref.get("name", ""),
                                    ref.get("optional", False))
                if data is None:
                    return None
                if ref.get("key") not in data:
                    if ref.get("optional"):
                        return None
                    raise ConfigError(f"couldn't find key {ref.get('key')} in {label} "
                                      f"{meta['namespace']}/{ref.get('name')}")
                return data[ref["key"]]
        raise ConfigError("unsupported valueFrom source")

    def _last_lines(self, run: PodRun) -> str:
        try:
            with open(run.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        lines = data.splitlines(keepends=True)[-80:]
        return b"".join(lines)[-2048:].decode(errors="replace")

    def _terminated(self, run: PodRun, code: int, reason: str, message: str | None,
                    started: bool = True, signal_no: int | None = None) -> None:
        pod = self.store.peek("/pods", run.namespace, run.name)
        if message is None and pod is not None and code != 0:
            policy = pod["spec"]["containers"][0].get("terminationMessagePolicy", "File")
            message = self._last_lines(run) if policy == "FallbackToLogsOnError" else None

        def write(p: Pod) -> None:
            status = p.setdefault("status", {})
            status["phase"] = "Succeeded" if code == 0 else "Failed"
            status["conditions"] = _conditions(p, initialized=True, ready=False,
                                               reason="PodCompleted")
            running = next(iter(status.get("containerStatuses") or []), {})
            started_at = (running.get("state", {}).get("running") or {}).get("startedAt")
            term: dict[str, Any] = {"exitCode": code, "reason": reason, "finishedAt": now(),
                                    "startedAt": started_at if started else None}
            if started_at is None:
                term["startedAt"] = None
            if message:
                term["message"] = message
            if signal_no:
                term["signal"] = signal_no
            image = p["spec"]["containers"][0].get("image", "")
            status["containerStatuses"] = [{
                "name": run.container, "state": {"terminated": term}, "lastState": {},
                "ready": False, "restartCount": 0, "image": image,
                "imageID": f"emulated://{image}", "containerID": f"emulated://{run.uid}",
                "started": False,
            }]

        self._set_status(run, write)

    def _evicted_status(self, run: PodRun, code: int) -> None:
        def write(p: Pod) -> None:
            status = p.setdefault("status", {})
            status["phase"] = "Failed"
            status["reason"] = "Evicted"
            status["message"] = "The node was low on resource: memory. "
            conds = _conditions(p, initialized=True, ready=False, reason="PodCompleted")
            conds.append({**condition("DisruptionTarget", "True", "TerminationByKubelet"),
                          "message": "The node was low on resource: memory. "})
            status["conditions"] = conds
            for cs in status.get("containerStatuses") or []:
                started = (cs.get("state", {}).get("running") or {}).get("startedAt")
                cs["state"] = {"terminated": {"exitCode": 137, "reason": "Error",
                                              "startedAt": started, "finishedAt": now()}}
                cs["ready"], cs["started"] = False, False

        self._set_status(run, write)

    # ------------------------------------------------------------ stopping

    def _signal(self, run: PodRun, sig: int) -> None:
        proc = run.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def _stop(self, run: PodRun) -> None:
        """SIGTERM now, SIGKILL after the grace period (the kubelet's minimum is 2 s)."""
        with self.lock:
            if run.terminating.is_set():
                return
            run.terminating.set()
        if run.fake or run.exited.is_set():
            self._finish(run)
            return
        if run.proc is None:
            return  # the pod worker sees `terminating` before it starts anything
        self._signal(run, signal.SIGTERM)
        grace = max(run.grace, 2.0)

        def killer() -> None:
            if not run.exited.wait(grace):
                self._signal(run, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True, name=f"kill-{run.name}").start()

    def _finish(self, run: PodRun) -> None:
        """After the container is gone: the kubelet's final delete (grace 0) if deleting."""
        if self.dns is not None:
            self.dns.unregister(run.uid)
        if run.lost:
            return
        pod = self.store.peek("/pods", run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return
        if pod["metadata"].get("deletionTimestamp"):
            self.store.remove_now("/pods", run.namespace, run.name, run.uid)

    def evict(self, uid: str) -> None:
        """Kubelet eviction: the pod fails with reason Evicted; its process is stopped."""
        run = self.runs.get(uid)
        if run is None:
            raise KeyError(uid)
        run.evicted = True
        run.grace = 0
        if run.proc is None:
            self._evicted_status(run, 137)
            return
        self._signal(run, signal.SIGTERM)

        def killer() -> None:
            if not run.exited.wait(2.0):
                self._signal(run, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()

    def kill(self, uid: str, sig: int) -> None:
        """Send a signal to a pod's processes (a crash the test provokes)."""
        run = self.runs.get(uid)
        if run is None or run.proc is None:
            raise KeyError(uid)
        self._signal(run, sig)

    def exec_target(self, pod: Pod) -> ExecTarget | None:
        """Where commands run in the pod's container; None unless it is running."""
        run = self.runs.get(pod["metadata"]["uid"])
        proc = None if run is None else run.proc
        if run is None or not run.started or proc is None or proc.poll() is not None:
            return None
        return ExecTarget(dict(run.env), run.cwd)

    def log_source(self, pod: Pod, container: str) -> LogSource | None:
        """Where the container's output is once it has started; None while waiting."""
        run = self.runs.get(pod["metadata"]["uid"])
        if run is None or not run.started:
            return None
        proc = run.proc
        return LogSource(run.log_path, lambda: (proc is None and run.exited.is_set())
                         or (proc is not None and proc.poll() is not None))

    def close(self) -> None:
        """Kill every process the kubelets started and wait for them."""
        self._closed.set()
        self._events.put(None)  # type: ignore[arg-type]
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            run.lost = True
            run.terminating.set()
            self._signal(run, signal.SIGKILL)
        for run in runs:
            if run.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.proc.wait(timeout=5)


def _conditions(pod: Pod, initialized: bool, ready: bool, reason: str | None = None
                ) -> list[dict[str, Any]]:
    """PodScheduled, Initialized, ContainersReady, Ready (keeping DisruptionTarget etc.)."""
    old = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}

    def cond(ctype: str, value: bool, why: str | None = None) -> dict[str, Any]:
        status = "True" if value else "False"
        prev = old.get(ctype)
        if prev is not None and prev.get("status") == status and prev.get("reason") == why:
            return prev
        return condition(ctype, status, why)

    out = [cond("PodReadyToStartContainers", True), cond("Initialized", initialized),
           cond("Ready", ready, None if ready else reason or "ContainersNotReady"),
           cond("ContainersReady", ready, None if ready else reason or "ContainersNotReady"),
           old.get("PodScheduled") or condition("PodScheduled", "True")]
    extra = [c for t, c in old.items() if t not in {c2["type"] for c2 in out}]
    return out + extra
