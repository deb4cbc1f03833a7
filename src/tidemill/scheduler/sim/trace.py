"""Traces the simulator replays: a simple CSV, and the Alibaba openb pod list.

Both readers stop at the first bad row and name it (``trace.csv line 7: gpus: ...``):
a replay of a trace with a silently skipped row would report figures for a workload
nobody asked about.

The simple CSV has one job per row; the header names the columns, in any order:

- ``timestamp`` (required): arrival, seconds from any origin;
- ``duration``: run time in seconds once started; empty if unknown (the job never ends);
- ``gpus`` (required): the job's GPUs in total, whole, or a share below 1;
- ``queue`` (required): the tenant queue;
- ``name``: unique job name (default ``job-<line>``);
- ``pods``: gang size (default 1); ``gpus`` is split evenly over the pods;
- ``cpu``: cores per pod (default 1); ``memory_gib``: GiB per pod (default 4);
- ``priority``: integer, higher goes first (default 0).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.rows import Fields, rows

MIB = 2**20
GIB = 2**30
CSV_REQUIRED = ("timestamp", "gpus", "queue")
CSV_OPTIONAL = ("duration", "name", "pods", "cpu", "memory_gib", "priority")
OPENB_COLUMNS = (
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: a gang of ``pods`` identical pods."""

    name: str
    arrival_s: float
    duration_s: float | None
    queue: str
    pods: int
    gpu_per_pod: float
    cpu_millis_per_pod: int
    memory_bytes_per_pod: int
    priority: int = 0
    gpu_model: str | None = None

    @property
    def gpus(self) -> float:
        return self.gpu_per_pod * self.pods


def read_trace(path: str | Path) -> list[TraceJob]:
    """Read ``path`` as an openb pod list if its header says so, else as the simple CSV."""
    header = _header(Path(path))
    if "num_gpu" in header:
        return read_openb_pods(path)
    return read_csv_trace(path)


def read_csv_trace(path: str | Path) -> list[TraceJob]:
    """The simple CSV format (see the module docstring)."""
    jobs: list[TraceJob] = []
    names: dict[str, int] = {}
    for line, row in rows(Path(path), CSV_REQUIRED, CSV_OPTIONAL):
        field = Fields(str(path), line, row)
        pods = field.integer("pods", default=1, minimum=1, maximum=10_000)
        gpus = field.number("gpus", minimum=0.0)
        per_pod = gpus / pods
        if (per_pod >= 1 and per_pod != int(per_pod)) or per_pod > 1024:
            field.fail(
                "gpus",
                f"{gpus:g} over {pods} pod(s) is {per_pod:g} per pod; a pod takes whole GPUs "
                "(at most 1024) or a share below 1: make gpus a multiple of pods",
            )
        name = row.get("name") or f"job-{line}"
        if name in names:
            field.fail(
                "name", f"{name!r} is already the name of line {names[name]}; names are unique"
            )
        names[name] = line
        jobs.append(
            TraceJob(
                name=name,
                arrival_s=field.number("timestamp", minimum=0.0),
                duration_s=field.optional_number("duration"),
                queue=field.text("queue"),
                pods=pods,
                gpu_per_pod=per_pod,
                cpu_millis_per_pod=round(field.number("cpu", default=1.0, minimum=0.0) * 1000),
                memory_bytes_per_pod=round(
                    field.number("memory_gib", default=4.0, minimum=0.0) * GIB
                ),
                priority=field.integer("priority", default=0, minimum=-(2**31), maximum=2**31),
            )
        )
    return jobs


def read_openb_pods(path: str | Path) -> list[TraceJob]:
    """The openb pod list (alibaba/clusterdata cluster-trace-gpu-v2023): one pod per job.

    A pod's GPU is ``gpu_milli / 1000`` of one device when below 1000, else ``num_gpu``
    whole devices. Its duration is deletion minus scheduled time; a pod the original
    cluster never scheduled ran for no known time, so it lives from creation to deletion.
    Its ``qos`` (LS, BE, ...) becomes its queue.
    """
    jobs: list[TraceJob] = []
    for line, row in rows(Path(path), OPENB_COLUMNS, ("pod_phase",)):
        field = Fields(str(path), line, row)
        num_gpu = field.integer("num_gpu", minimum=0, maximum=1024)
        gpu_milli = field.integer("gpu_milli", minimum=0, maximum=1000)
        if num_gpu > 1 and gpu_milli < 1000:
            field.fail("gpu_milli", f"{gpu_milli} with num_gpu {num_gpu}; a share needs num_gpu 1")
        gpu = 0.0 if num_gpu == 0 else (gpu_milli / 1000 if gpu_milli < 1000 else float(num_gpu))
        created = field.number("creation_time", minimum=0.0)
        deleted = field.number("deletion_time", minimum=created)
        started = field.optional_number("scheduled_time") or created
        spec = row.get("gpu_spec", "")
        if "|" in spec:
            field.fail("gpu_spec", f"{spec!r} names several models; the simulator takes one")
        jobs.append(
            TraceJob(
                name=field.text("name"),
                arrival_s=created,
                duration_s=max(deleted - max(started, created), 0.0),
                queue=field.text("qos").lower(),
                pods=1,
                gpu_per_pod=gpu,
                cpu_millis_per_pod=field.integer("cpu_milli", minimum=0, maximum=2**40),
                memory_bytes_per_pod=field.integer("memory_mib", minimum=0, maximum=2**30) * MIB,
                gpu_model=spec or None,
            )
        )
    return jobs


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            return next(csv.reader(stream), [])
    except OSError as exc:
        raise SimInputError(str(path), None, f"cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SimInputError(str(path), 1, "the header is not UTF-8 text") from None
