"""The two sides benchmarks/elastic.py compares, each as real processes on this machine.

- :class:`Tidemill`: a ``tidemill server`` subprocess (free port, its own state folder,
  a one-node cluster with room for 4 workers) running one elastic job; resized through
  ``POST /api/v1/jobs/{name}/scale``; its workers' pids come from the API.
- :class:`Torchrun`: one ``python -m torch.distributed.run`` agent per worker (one
  process per agent, like one per node), c10d rendezvous on a free port; resized by
  starting agents and SIGTERMing them.

Both run ``benchmarks/elastic_train.py`` with the same arguments, and both leave
nothing behind: :func:`sweep` kills every process whose command line names the run's
folder, and their descendants.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from tidemill.client import Client
from tidemill.engines.local import free_port

TRAIN = Path(__file__).resolve().parent / "elastic_train.py"
JOB = "elastic-bench"
CLUSTER = "nodes:\n  - {name: local, cpu: 8, memory: 32Gi}\n"

TORCHRUN_RDZV_CONF = "last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=3"
"""torchrun at its fastest reasonable settings. Defaults are last_call 30 s (a 2-of-4
group waits that long for more nodes before it forms) and a dead agent noticed after
5 s x 3 missed keep-alives; here 1 s and 1 s x 3 (tidemill's master settles for 0.3 s)."""
TORCHRUN_MONITOR_S = 0.1
"""How often an agent polls its workers (torch 2.13's default, its shortest useful)."""
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""Needed for scale-out to work at all on torch 2.13: with the shared TCPStore (the
default) agents that join a running job wait forever for MASTER_ADDR, which the
unchanged rank 0 never writes for the new round (seen here: all 4 agents hang in
``RendezvousStoreInfo.build`` / ``_assign_worker_ranks``)."""


def sweep(marker: str) -> None:
    """Kill every process whose command line contains ``marker`` or that holds a file
    under it open (a replica forked by tidemill's warm-start server shows the server's
    command line, but writes its log there), and their descendants."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid == os.getpid():
                continue
            named = marker in " ".join(proc.info["cmdline"] or [])
            if named or any(f.path.startswith(marker) for f in proc.open_files()):
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in found.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(found.values()), timeout=10)


class Tidemill:
    """A real control plane running the benchmark's elastic job (min 2, max 4 workers)."""

    name = "tidemill"

    def __init__(self, folder: Path, log_dir: Path, train_args: list[str]) -> None:
        self.folder = folder
        self.log_dir = log_dir
        self.train_args = train_args
        self.port = free_port()
        self.server: subprocess.Popen[bytes] | None = None
        self.client = Client(f"http://127.0.0.1:{self.port}", timeout_s=30)

    def start(self, world: int) -> None:
        state = self.folder / "state"
        state.mkdir(parents=True, exist_ok=True)
        cluster = self.folder / "cluster.yaml"
        cluster.write_text(CLUSTER)
        argv = [sys.executable, "-m", "tidemill", "server", "--state-dir", str(state)]
        argv += ["--port", str(self.port), "--cluster", str(cluster)]
        with (self.folder / "server.log").open("ab") as log:
            self.server = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while not self._healthy():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"tidemill server did not come up on port {self.port}; see "
                    f"{self.folder / 'server.log'}"
                )
            time.sleep(0.1)
        self.client.submit(self._job())
        self.client.scale(JOB, "worker", world)

    def _healthy(self) -> bool:
        try:
            return self.client.health()
        except httpx.HTTPError:
            return False

    def _job(self) -> dict[str, Any]:
        worker = {
            "replicas": 2,
            "minReplicas": 2,
            "maxReplicas": 4,
            "resources": {"cpu": 0.1, "memory": "256Mi"},
            "command": [sys.executable, str(TRAIN)],
            "args": ["--mode", "tidemill", "--log-dir", str(self.log_dir), *self.train_args],
            "restartPolicy": "OnFailure",
            "maxRestarts": 20,
        }
        return {
            "apiVersion": "tidemill/v1",
            "kind": "TrainingJob",
            "metadata": {"name": JOB, "namespace": "default"},
            "spec": {"mode": "allreduce", "roles": {"worker": worker}},
        }

    def workers(self) -> dict[int, int]:
        """Running workers: index -> pid."""
        view = self.client.get(JOB)
        return {
            r.index: r.pid
            for r in view.replicas
            if r.role == "worker" and r.phase == "Running" and r.pid is not None
        }

    def ready(self, world: int) -> bool:
        return len(self.workers()) == world

    def scale(self, world: int) -> float:
        """Ask for ``world`` workers; returns when the request was sent."""
        sent = time.time()
        self.client.scale(JOB, "worker", world)
        return sent

    def kill_worker(self, victim: int) -> float:
        pid = self.workers()[victim]
        killed = time.time()
        os.kill(pid, signal.SIGKILL)
        return killed

    def epoch_declared(self, epoch: int) -> float | None:
        """When the job master announced ``epoch`` (its EpochStarted event)."""
        for event in self.client.job_events(JOB):
            if event.reason == "EpochStarted" and event.message.startswith(f"epoch {epoch}:"):
                return event.time
        return None

    def describe(self) -> str:
        """The job's replicas and latest events, for an error message."""
        try:
            view = self.client.get(JOB)
            events = self.client.job_events(JOB)[-10:]
        except httpx.HTTPError as exc:
            return f"the tidemill server at port {self.port} did not answer: {exc}"
        lines = [
            f"  {r.role}-{r.index}: {r.phase} pid {r.pid} restarts {r.restarts} {r.message}"
            for r in view.replicas
        ]
        lines += [f"  event {e.reason}: {e.message}" for e in events]
        logs = self.folder / "state" / "logs"
        return f"job {JOB} is {view.phase}; logs under {logs}\n" + "\n".join(lines)

    def close(self) -> None:
        try:
            if self.server is not None and self.server.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    self.client.delete(JOB)
                self.server.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.server.wait(timeout=20)
        finally:
            self.client.close()


class Torchrun:
    """torchrun agents (``--nnodes=2:4``, one worker each) around the same script."""

    name = "torchrun"

    def __init__(self, folder: Path, log_dir: Path, train_args: list[str]) -> None:
        self.folder = folder
        self.log_dir = log_dir
        self.train_args = train_args
        self.port = free_port()
        self.agents: list[subprocess.Popen[bytes]] = []
        self.leaving: list[subprocess.Popen[bytes]] = []
        self._started = 0

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2:4",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{self.port}",
            "--rdzv-id=bench",
            f"--rdzv-conf={TORCHRUN_RDZV_CONF}",
            "--max-restarts=100",
            f"--monitor-interval={TORCHRUN_MONITOR_S}",
            str(TRAIN),
            "--mode",
            "torchrun",
            "--log-dir",
            str(self.log_dir),
            "--checkpoint",
            str(self.folder / "checkpoint.pt"),
            *self.train_args,
        ]

    def start(self, world: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._add(world)

    def _add(self, count: int) -> None:
        env = {**os.environ, **TORCHRUN_ENV}
        for _ in range(count):
            with (self.folder / f"agent-{self._started}.log").open("ab") as log:
                agent = subprocess.Popen(
                    self.argv(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self.agents.append(agent)
            self._started += 1

    def ready(self, world: int) -> bool:
        """``world`` agents, each with a live worker, and every SIGTERMed agent gone."""
        self.leaving = [agent for agent in self.leaving if agent.poll() is None]
        if self.leaving or len(self.agents) != world:
            return False
        for agent in self.agents:
            if agent.poll() is not None:
                raise RuntimeError(
                    f"torchrun agent pid {agent.pid} exited with {agent.returncode}; see "
                    f"{self.folder}/agent-*.log"
                )
            if not self._workers(agent):
                return False
        return True

    def scale(self, world: int) -> float:
        """Start agents, or SIGTERM the newest; returns when that began."""
        began = time.time()
        if world > len(self.agents):
            self._add(world - len(self.agents))
        else:
            while len(self.agents) > world:
                agent = self.agents.pop()
                agent.send_signal(signal.SIGTERM)
                self.leaving.append(agent)
        return began

    def kill_worker(self, victim: int) -> float:
        workers = self._workers(self.agents[victim])
        if not workers:
            raise RuntimeError(f"torchrun agent {victim} has no worker to kill")
        killed = time.time()
        os.kill(workers[0].pid, signal.SIGKILL)
        return killed

    def describe(self) -> str:
        """Every agent, alive or not, with its workers, for an error message."""
        lines = []
        for agent in self.agents + self.leaving:
            state = "running" if agent.poll() is None else f"exited {agent.returncode}"
            workers = [w.pid for w in self._workers(agent)]
            lines.append(f"  agent pid {agent.pid}: {state}, workers {workers}")
        return f"torchrun agents (logs: {self.folder}/agent-*.log):\n" + "\n".join(lines)

    @staticmethod
    def _workers(agent: subprocess.Popen[bytes]) -> list[psutil.Process]:
        try:
            return psutil.Process(agent.pid).children()
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        for agent in self.agents + self.leaving:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
        for agent in self.agents + self.leaving:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=20)
