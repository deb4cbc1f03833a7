"""Simulated kubelets: pods run as local processes with their own address, name and DNS."""

from __future__ import annotations

import random
import signal
import sys
import time

import pytest
from kubernetes import client, watch

from . import KubeEmulator
from .helpers import api, bind, phase, pod, until

NS = "default"
PY = "python"


@pytest.fixture
def v1(kube: KubeEmulator) -> client.CoreV1Api:
    kube.add_node("n1")
    return client.CoreV1Api(api(kube))


def _log(v1: client.CoreV1Api, name: str) -> str:
    try:
        return v1.read_namespaced_pod_log(name, NS)
    except client.ApiException as e:
        if e.status == 400:  # still waiting to start
            return ""
        raise


def _state(v1: client.CoreV1Api, name: str) -> client.V1ContainerState:
    statuses = v1.read_namespaced_pod(name, NS).status.container_statuses
    return statuses[0].state if statuses else client.V1ContainerState()


def test_pod_runs_with_env_and_logs(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "s"}, "stringData": {"k": "secret"}})
    env = [{"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
           {"name": "GREETING", "value": "hi $(NAME)"}]
    code = "import os; print(os.environ['GREETING'], os.environ['IP'], os.environ['S'])"
    v1.create_namespaced_pod(NS, pod("p", [PY, "-c", code], env=env))
    bind(v1, NS, "p", "n1")
    until(lambda: phase(v1, NS, "p") == "Succeeded")
    got = v1.read_namespaced_pod("p", NS)
    ip = got.status.pod_ip
    assert ip.startswith("127.0.") and ip != "127.0.0.1" and got.status.host_ip
    assert v1.read_namespaced_pod_log("p", NS) == f"hi p {ip} secret\n"
    term = got.status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.reason == "Completed"


def test_failure_message_and_missing_secret(v1: client.CoreV1Api) -> None:
    env = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]
    p = pod("f", [PY, "-c", "import sys; print('boom'); sys.exit(3)"], env=env)
    p["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    v1.create_namespaced_pod(NS, p)
    bind(v1, NS, "f", "n1")
    waiting = until(lambda: (_state(v1, "f").waiting or None)
                    if _state(v1, "f").waiting and _state(v1, "f").waiting.reason
                    == "CreateContainerConfigError" else None)
    assert waiting.message == 'secret "later" not found'
    with pytest.raises(client.ApiException) as e:
        v1.read_namespaced_pod_log("f", NS)
    assert e.value.status == 400 and "waiting to start" in e.value.body
    v1.create_namespaced_secret(NS, {"metadata": {"name": "later"}, "stringData": {"k": "v"}})
    until(lambda: phase(v1, NS, "f") == "Failed")
    term = _state(v1, "f").terminated
    assert term.exit_code == 3 and term.reason == "Error" and term.message == "boom\n"


def test_logs_follow(v1: client.CoreV1Api) -> None:
    code = "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.3)"
    v1.create_namespaced_pod(NS, pod("l", [PY, "-c", code]))
    bind(v1, NS, "l", "n1")
    until(lambda: phase(v1, NS, "l") in ("Running", "Succeeded"))
    lines = list(watch.Watch().stream(v1.read_namespaced_pod_log, "l", NS))
    assert lines == ["0", "1", "2"]
    assert v1.read_namespaced_pod_log("l", NS, tail_lines=1) == "2\n"


def test_missing_image_backs_off(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("m", ["true"], image="registry.local/does-not-exist:1"))
    bind(v1, NS, "m", "n1")
    waiting = until(lambda: _state(v1, "m").waiting if _state(v1, "m").waiting
                    and _state(v1, "m").waiting.reason == "ImagePullBackOff" else None)
    assert waiting.message == 'Back-off pulling image "registry.local/does-not-exist:1"'
    assert phase(v1, NS, "m") == "Pending"
    v1.delete_namespaced_pod("m", NS)
    until(lambda: phase(v1, NS, "m") is None)


TRAP = ("import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)")
IGNORE = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
          "print('up', flush=True)\ntime.sleep(60)")


def test_graceful_deletion(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("t", [PY, "-c", TRAP]))
    v1.create_namespaced_pod(NS, pod("i", [PY, "-c", IGNORE], terminationGracePeriodSeconds=2))
    for name in ("t", "i"):
        bind(v1, NS, name, "n1")
    until(lambda: _log(v1, "t") == "up\n" and _log(v1, "i") == "up\n")
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    t0 = time.monotonic()
    v1.delete_namespaced_pod("t", NS)
    v1.delete_namespaced_pod("i", NS)
    assert v1.read_namespaced_pod("i", NS).metadata.deletion_timestamp
    until(lambda: phase(v1, NS, "t") is None)
    fast = time.monotonic() - t0
    until(lambda: phase(v1, NS, "i") is None)
    slow = time.monotonic() - t0
    assert fast < 1.5 and 1.8 < slow < 6
    events = [(e["type"], e["object"].metadata.name, e["object"].status.phase)
              for e in watch.Watch().stream(v1.list_namespaced_pod, NS, resource_version=rv,
                                            timeout_seconds=1)]
    assert ("DELETED", "t", "Succeeded") in events
    deleted_i = [e for e in events if e[0] == "DELETED" and e[1] == "i"]
    assert deleted_i and deleted_i[0][2] == "Failed"


def test_kill_evict_and_lost_node(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    kube.add_node("n2")
    for name, node in (("k", "n1"), ("e", "n1"), ("x", "n2")):
        v1.create_namespaced_pod(NS, pod(name, [PY, "-c", "import time; time.sleep(60)"]))
        bind(v1, NS, name, node)
    until(lambda: all(phase(v1, NS, n) == "Running" for n in ("k", "e", "x")))
    kube.kill_process(NS, "k", signal.SIGKILL)
    until(lambda: phase(v1, NS, "k") == "Failed")
    assert _state(v1, "k").terminated.exit_code == 137
    kube.evict(NS, "e")
    until(lambda: phase(v1, NS, "e") == "Failed")
    got = v1.read_namespaced_pod("e", NS)
    assert got.status.reason == "Evicted"
    assert got.status.message.startswith("The node was low on resource: memory.")
    kube.lose_node("n2")
    until(lambda: phase(v1, NS, "x") is None)
    assert [n.metadata.name for n in v1.list_node().items] == ["n1"]


def test_close_leaves_no_process(tmp_path) -> None:
    import psutil

    kube = KubeEmulator().start()
    kube.add_node("n")
    v1 = client.CoreV1Api(api(kube))
    v1.create_namespaced_pod(NS, pod("z", [PY, "-c", "import time; time.sleep(60)"]))
    bind(v1, NS, "z", "n")
    until(lambda: phase(v1, NS, "z") == "Running")
    pid = kube.kubelets.runs[v1.read_namespaced_pod("z", NS).metadata.uid].proc.pid
    kube.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


SERVER = ("import os, socket\n"
          "s = socket.socket(); s.bind((os.environ['POD_IP'], int(os.environ['PORT'])))\n"
          "s.listen()\n"
          "print('listening', socket.gethostname(), flush=True)\n"
          "c, _ = s.accept(); c.sendall(b'hello from ' + socket.gethostname().encode())\n"
          "c.close()")
CLIENT = ("import os, socket, time\n"
          "name = 'server.workers.default.svc'\n"
          "for _ in range(100):\n"
          "    try:\n"
          "        ip = socket.gethostbyname(name)\n"
          "        c = socket.create_connection((ip, int(os.environ['PORT'])))\n"
          "        break\n"
          "    except OSError:\n"
          "        time.sleep(0.1)\n"
          "print(ip, c.recv(100).decode(), flush=True)")


def test_pods_talk_by_dns_name(kube: KubeEmulator, v1: client.CoreV1Api) -> None:
    if not kube.dns_isolation:
        pytest.skip("unshare cannot make user/mount/uts namespaces here: no per-pod DNS")
    v1.create_namespaced_service(NS, {"metadata": {"name": "workers"}, "spec": {
        "clusterIP": "None", "selector": {"job": "j"}, "publishNotReadyAddresses": True}})
    port = {"name": "PORT", "value": str(random.randrange(20_000, 60_000))}
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, port]
    v1.create_namespaced_pod(NS, pod("server-pod", [PY, "-c", SERVER], env=env,
                                     labels={"job": "j"}, hostname="server", subdomain="workers"))
    v1.create_namespaced_pod(NS, pod("client", [PY, "-c", CLIENT], labels={"job": "j"}, env=[port],
                                     hostname="client", subdomain="workers"))
    bind(v1, NS, "server-pod", "n1")
    bind(v1, NS, "client", "n1")
    until(lambda: phase(v1, NS, "client") == "Succeeded")
    server_ip = v1.read_namespaced_pod("server-pod", NS).status.pod_ip
    assert v1.read_namespaced_pod_log("client", NS) == f"{server_ip} hello from server\n"
    assert v1.read_namespaced_pod_log("server-pod", NS) == "listening server\n"


def test_python_is_the_test_interpreter(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("py", [PY, "-c", "import sys; print(sys.prefix)"]))
    bind(v1, NS, "py", "n1")
    until(lambda: phase(v1, NS, "py") == "Succeeded")
    assert v1.read_namespaced_pod_log("py", NS).strip() == sys.prefix
