"""The Kubernetes engine at scale, against the emulated API server (tests/kube), not a
real cluster.

For each gang scheduler (``tidemill``, then ``volcano`` unless ``--skip-volcano``):

1. An emulator with ``--nodes`` nodes (32 cpu / 128Gi each) whose pods go Running as
   soon as they are bound, without a process; the TrainingJob CRD applied as
   deploy/kubernetes ships it (and, for Volcano, a minimal PodGroup CRD).
2. A ``tidemill server --engine kubernetes --gang-scheduler G`` process talking to it
   through a kubeconfig (a separate process, so that the server and the emulator do not
   share one GIL; ``--in-process`` runs a ServerRunner in this process instead).
3. ``--jobs`` jobs of ``--pods-per-job`` workers (1 cpu, 1Gi each) submitted through
   ``tidemill.client.Client`` by ``--submitters`` threads.
4. Every job deleted (``Client.delete``), and the objects left counted until none are.

How each figure is measured:

- bind times: a listener in the emulator's store stamps every pod the moment its
  binding is written (``spec.nodeName`` set), on this process's monotonic clock, the
  same clock the submitters stamp ``submit`` calls with. Pods bound/s = pods bound /
  (last binding - first submit). Submit-to-gang-bound = the last of a job's pods' binding
  less the start of its submit call.
- API calls per job: the emulator's request log (``kube.calls``) from the moment the
  server answered /healthz (its informers have listed) until the call count stayed still
  for ``--settle-s``, by RBAC verb and resource, divided by ``--jobs``; the same for the
  delete phase.
- objects left: the store's count of pods, services, secrets, networkpolicies, trainingjobs
  and podgroups, polled every 0.5 s after the last delete call returned, until all are 0
  (or ``--cleanup-timeout-s``).
- peak server RSS: VmHWM of the server process (only with a separate process).

With Volcano nothing binds pods (no Volcano runs in the emulator): its figures are pod
creations and API calls, for comparison with tidemill binding gangs itself.

Prints a table and writes benchmarks/results/kubernetes.json.

    python benchmarks/kubernetes.py [--jobs 1000] [--pods-per-job 8] [--nodes 500]
        [--submitters 4] [--skip-volcano] [--in-process]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from repo_path import ROOT  # first: the repository's src, not this folder, on sys.path

# isort: split

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from tests.e2e.kubernetes import CRD, PODGROUP_CRD
from tests.kube import KubeEmulator
from tests.kube.watch import Event
from tidemill.client import Client
from tidemill.engines.local import free_port

RESULTS = Path(__file__).parent / "results" / "kubernetes.json"
WHERE = "emulated API server (tests/kube), not a real cluster"
NAMESPACE = "default"
IMAGE = "bench/worker:1"
NODE_CPU, NODE_MEMORY = "32", "128Gi"
COUNTED = ("pods", "services", "secrets", "networkpolicies", "trainingjobs", "podgroups")


def job(name: str, pods: int) -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": pods,
                    "image": IMAGE,
                    "resources": {"cpu": 1, "memory": "1Gi"},
                    "command": ["python", "train.py"],
                }
            }
        },
    }


class PodClock:
    """Sits in the emulator store's listener list (it is called with every pod event as
    the store writes it, under the store's lock): stamps creations and bindings."""

    def __init__(self) -> None:
        self.created: dict[tuple[str, str], float] = {}
        self.bound: dict[tuple[str, str], tuple[float, str]] = {}
        """(namespace, pod) -> (when, tidemill job key)"""

    def put(self, event: Event) -> None:
        meta = event.obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if event.type == "ADDED":
            self.created.setdefault(key, time.monotonic())
            return
        was_bound = ((event.old or {}).get("spec") or {}).get("nodeName")
        if event.type == "MODIFIED" and event.obj["spec"].get("nodeName") and not was_bound:
            job_key = (meta.get("annotations") or {}).get("tidemill.io/job", "")
            self.bound.setdefault(key, (time.monotonic(), job_key))


def count_objects(kube: KubeEmulator) -> dict[str, int]:
    """How many objects of each counted resource the store holds (no copies made)."""
    store = kube.store
    counts = dict.fromkeys(COUNTED, 0)
    with store.lock:
        for key, res in store.storage.items():
            if res.plural in counts:
                counts[res.plural] += sum(len(b) for b in store.objects.get(key, {}).values())
    return counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


@contextmanager
def server(
    kube: KubeEmulator, gang: str, folder: Path, in_process: bool
) -> Iterator[dict[str, Any]]:
    """A tidemill server on the Kubernetes engine; yields {url, pid, log}."""
    kubeconfig = kube.write_kubeconfig(str(folder / "kubeconfig"))
    state = folder / "state"
    if in_process:
        from tidemill.engines.kubernetes.options import KubernetesOptions
        from tidemill.server.runner import ServerRunner

        options = KubernetesOptions(kubeconfig=kubeconfig, default_image=IMAGE, gang_scheduler=gang)
        runner = ServerRunner(
            state, port=0, engine="kubernetes", engine_options={"options": options}
        )
        url = runner.start(timeout_s=120)
        try:
            yield {"url": url, "pid": None, "log": None}
        finally:
            runner.stop()
        return
    port = free_port()
    log_path = folder / "server.log"
    argv = [sys.executable, "-m", "tidemill", "server", "--state-dir", str(state)]
    argv += ["--port", str(port), "--engine", "kubernetes", "--kubeconfig", kubeconfig]
    argv += ["--default-image", IMAGE, "--gang-scheduler", gang]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url, timeout_s=5) as probe:
            deadline = time.monotonic() + 120
            while not probe.health():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the server did not come up; its log:\n{log_path.read_text()[-3000:]}"
                    )
                time.sleep(0.2)
        yield {"url": url, "pid": process.pid, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def settle(kube: KubeEmulator, quiet_s: float, timeout_s: float) -> None:
    """Wait until the request log stops growing for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    seen, since = len(kube.api.calls), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = len(kube.api.calls)
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def calls_per_job(kube: KubeEmulator, first: int, last: int, jobs: int) -> dict[str, float]:
    """'verb resource[/sub]' -> calls per job in the request log between two indexes."""
    counts = Counter(
        f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}"
        for c in kube.calls[first:last]
    )
    return {k: round(v / jobs, 2) for k, v in sorted(counts.items())}


def run_one(args: argparse.Namespace, gang: str) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    names = [f"bench-{i:05d}" for i in range(args.jobs)]
    total_pods = args.jobs * args.pods_per_job
    folder = Path(tempfile.mkdtemp(prefix=f"tidemill-kube-bench-{gang}-"))
    kube = KubeEmulator(history_size=args.history).start()
    clock = PodClock()
    try:
        for i in range(args.nodes):
            kube.add_node(f"node-{i:04d}", cpu=NODE_CPU, memory=NODE_MEMORY, run_pods=False)
        kubeconfig = kube.write_kubeconfig(str(folder / "setup.kubeconfig"))
        with kube_config.new_client_from_config(config_file=kubeconfig) as api:
            extensions = kube_client.ApiextensionsV1Api(api)
            extensions.create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
            if gang == "volcano":
                extensions.create_custom_resource_definition(PODGROUP_CRD)
        with kube.store.lock:
            kube.store.listeners.append((frozenset({"/pods"}), clock))  # type: ignore[arg-type]
        with server(kube, gang, folder, args.in_process) as srv:
            first_call = len(kube.api.calls)
            submitted: dict[str, float] = {}
            submit_s: list[float] = []

            def submit(chunk: list[str]) -> None:
                with Client(srv["url"], timeout_s=120) as own:
                    for name in chunk:
                        submitted[f"{NAMESPACE}/{name}"] = started = time.monotonic()
                        own.submit(job(name, args.pods_per_job))
                        submit_s.append(time.monotonic() - started)

            chunks = [names[k :: args.submitters] for k in range(args.submitters)]
            started = time.monotonic()
            with ThreadPoolExecutor(args.submitters) as pool:
                for done in [pool.submit(submit, chunk) for chunk in chunks]:
                    done.result()
            submitted_at = time.monotonic()
            figures["submit_s"] = round(submitted_at - started, 1)
            figures["submit_call_p50_ms"] = round(statistics.median(submit_s) * 1000, 1)
            figures["submit_call_p99_ms"] = round(percentile(submit_s, 0.99) * 1000, 1)

            placed = clock.bound if gang == "tidemill" else clock.created
            deadline = time.monotonic() + args.place_timeout_s
            last_report = time.monotonic()
            while len(placed) < total_pods and time.monotonic() < deadline:
                time.sleep(0.2)
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    print(
                        f"  [{gang}] {time.monotonic() - started:.0f} s: {len(clock.created)}"
                        f" pods created, {len(clock.bound)} bound",
                        flush=True,
                    )
            figures["pods_created"] = len(clock.created)
            figures["pods_bound"] = len(clock.bound)
            if clock.created:
                last_created = max(clock.created.values())
                figures["pods_created_per_s"] = round(
                    len(clock.created) / (last_created - started), 1
                )
            if gang == "tidemill" and clock.bound:
                last_bound = max(t for t, _ in clock.bound.values())
                figures["pods_bound_per_s"] = round(len(clock.bound) / (last_bound - started), 1)
                figures["first_submit_to_last_bind_s"] = round(last_bound - started, 1)
                gang_done: dict[str, float] = {}
                per_job: Counter[str] = Counter()
                for when, key in clock.bound.values():
                    per_job[key] += 1
                    gang_done[key] = max(gang_done.get(key, 0.0), when)
                latencies = [
                    gang_done[key] - submitted[key]
                    for key in submitted
                    if per_job[key] == args.pods_per_job
                ]
                figures["jobs_fully_bound"] = len(latencies)
                if latencies:
                    figures["submit_to_gang_bound_p50_s"] = round(statistics.median(latencies), 2)
                    figures["submit_to_gang_bound_p99_s"] = round(percentile(latencies, 0.99), 2)
            settle(kube, args.settle_s, args.place_timeout_s)
            placed_calls = len(kube.api.calls)
            figures["api_calls_per_job_submit"] = calls_per_job(
                kube, first_call, placed_calls, args.jobs
            )
            figures["api_calls_per_job_submit_total"] = round(
                (placed_calls - first_call) / args.jobs, 2
            )
            figures["objects_before_delete"] = count_objects(kube)

            started = time.monotonic()

            def delete(chunk: list[str]) -> None:
                with Client(srv["url"], timeout_s=120) as own:
                    for name in chunk:
                        own.delete(name, NAMESPACE)

            with ThreadPoolExecutor(args.submitters) as pool:
                for done in [pool.submit(delete, chunk) for chunk in chunks]:
                    done.result()
            figures["delete_calls_s"] = round(time.monotonic() - started, 1)
            deadline = time.monotonic() + args.cleanup_timeout_s
            left = count_objects(kube)
            while any(left.values()) and time.monotonic() < deadline:
                time.sleep(0.5)
                left = count_objects(kube)
            figures["objects_left"] = left
            figures["objects_left_total"] = sum(left.values())
            figures["delete_to_zero_s"] = (
                round(time.monotonic() - started, 1) if not any(left.values()) else None
            )
            settle(kube, args.settle_s, 60)
            figures["api_calls_per_job_delete"] = calls_per_job(
                kube, placed_calls, len(kube.api.calls), args.jobs
            )
            figures["peak_server_rss_mib"] = peak_rss_mib(srv["pid"]) if srv["pid"] else None
            if srv["log"] is not None:
                lines = srv["log"].read_text(errors="replace").splitlines()
                figures["server_log_lines"] = len(lines)
                figures["server_log_leaked_pod_deletes"] = sum(
                    "no replica launched it now" in line for line in lines
                )
                figures["server_log_tracebacks"] = sum("Traceback" in line for line in lines)
    finally:
        kube.close()
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            flatten(f"{prefix}.{key}" if prefix else key, inner, into)
    else:
        into[prefix] = value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--pods-per-job", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--submitters", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--skip-volcano", action="store_true")
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in this process (shared GIL)"
    )
    parser.add_argument("--place-timeout-s", type=float, default=900)
    parser.add_argument("--cleanup-timeout-s", type=float, default=600)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--history", type=int, default=200_000, help="emulator watch history")
    args = parser.parse_args()

    print(
        f"{WHERE}: {args.jobs} jobs x {args.pods_per_job} pods on {args.nodes} nodes, "
        f"{args.submitters} submitters, server "
        f"{'in this process' if args.in_process else 'in its own process'}",
        flush=True,
    )
    results: dict[str, Any] = {
        "where": WHERE,
        "parameters": {
            "jobs": args.jobs,
            "pods_per_job": args.pods_per_job,
            "nodes": args.nodes,
            "node": {"cpu": NODE_CPU, "memory": NODE_MEMORY},
            "submitters": args.submitters,
            "server": "in-process ServerRunner" if args.in_process else "tidemill server process",
            "cpus": os.cpu_count(),
        },
    }
    for gang in ("tidemill", *(() if args.skip_volcano else ("volcano",))):
        started = time.monotonic()
        results[gang] = run_one(args, gang)
        results[gang]["wall_s"] = round(time.monotonic() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    rows: dict[str, dict[str, Any]] = {}
    for gang in ("tidemill", "volcano"):
        if gang in results:
            flat: dict[str, Any] = {}
            flatten("", results[gang], flat)
            for key, value in flat.items():
                rows.setdefault(key, {})[gang] = value
    width = max(len(k) for k in rows)
    print(f"\n{WHERE}")
    print(f"{'figure':<{width}}  {'tidemill':>12}  {'volcano':>12}")
    for key, by_gang in rows.items():
        cells = [str(by_gang.get(g, "-")) for g in ("tidemill", "volcano")]
        print(f"{key:<{width}}  {cells[0]:>12}  {cells[1]:>12}")
    leftover = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if leftover:
        print(f"threads still running: {', '.join(leftover)}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
