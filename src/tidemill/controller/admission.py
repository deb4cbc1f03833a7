"""Checks a job against the cluster before it is queued.

The spec validated on its own; here we refuse what could never run on *this* cluster
(an unknown queue, a replica larger than every node, a gang beyond a queue's max), so
the user hears about it at submit time instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tidemill.api.cluster import NodeSpec, QueueSpec
from tidemill.api.errors import FieldError, SpecError
from tidemill.api.job import RoleSpec, TrainingJob
from tidemill.api.quantity import format_cpu, format_memory


@dataclass(frozen=True)
class Admission:
    queue: str
    priority: int
    create_queue: bool
    """True when the namespace's own queue is used for the first time."""


def admit(
    job: TrainingJob,
    nodes: Sequence[NodeSpec],
    queues: Mapping[str, QueueSpec],
    priority_classes: Mapping[str, int],
) -> Admission:
    """Return where the job queues and at what priority, or raise SpecError."""
    errors: list[FieldError] = []
    queue = job.queue_name
    if job.spec.queue is not None and queue not in queues:
        known = ", ".join(sorted(queues)) or "none yet"
        errors.append(
            FieldError(
                "spec.queue",
                f"queue '{queue}' does not exist (known queues: {known}); declare it in the "
                f"cluster file or leave spec.queue out to use the namespace's queue "
                f"'{job.metadata.namespace}'",
            )
        )
    priority = job.spec.priority
    class_name = job.spec.priority_class_name
    if class_name is not None:
        if class_name in priority_classes:
            priority = priority_classes[class_name]
        else:
            known = ", ".join(f"{k}={v}" for k, v in sorted(priority_classes.items()))
            errors.append(
                FieldError(
                    "spec.priorityClassName",
                    f"unknown priority class '{class_name}' (known: {known or 'none'}); "
                    "declare priorityClasses in the cluster file or set spec.priority",
                )
            )
    for name, role in job.spec.roles.items():
        if role.max_bound > 0:
            errors.extend(_fits_some_node(f"spec.roles.{name}.resources", role, nodes))
    if not errors and queue in queues:
        errors.extend(_within_queue_max(job, queues[queue]))
    if errors:
        raise SpecError(errors)
    return Admission(queue=queue, priority=priority, create_queue=queue not in queues)


def _fits_some_node(path: str, role: RoleSpec, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    res = role.resources
    usable = [n for n in nodes if res.gpu == 0 or n.gpus > 0]
    if res.gpu_model is not None and res.gpu > 0:
        models = sorted({n.gpu_model for n in nodes if n.gpu_model})
        usable = [n for n in usable if n.gpu_model == res.gpu_model]
        if not usable:
            return [
                FieldError(
                    f"{path}.gpuModel",
                    f"no node has gpu model '{res.gpu_model}' "
                    f"(models here: {', '.join(models) or 'none'})",
                )
            ]
    if not nodes:
        return [FieldError(path, "the cluster has no nodes")]
    errors: list[FieldError] = []
    largest_cpu = max(nodes, key=lambda n: n.cpu)
    largest_memory = max(nodes, key=lambda n: n.memory)
    largest_gpu = max(nodes, key=lambda n: n.gpus)
    if res.cpu > largest_cpu.cpu:
        errors.append(
            FieldError(
                f"{path}.cpu",
                f"asks {res.cpu:g} cpu per replica; the largest node has "
                f"{largest_cpu.cpu:g} ({largest_cpu.name})",
            )
        )
    if res.memory > largest_memory.memory:
        errors.append(
            FieldError(
                f"{path}.memory",
                f"asks {format_memory(res.memory)} per replica; the largest node has "
                f"{format_memory(largest_memory.memory)} ({largest_memory.name})",
            )
        )
    if res.gpu > largest_gpu.gpus:
        errors.append(
            FieldError(
                f"{path}.gpu",
                f"asks {res.gpu:g} gpu per replica; the largest node has "
                f"{largest_gpu.gpus} ({largest_gpu.name})",
            )
        )
    if errors:
        return errors
    if not any(res.cpu <= n.cpu and res.memory <= n.memory and res.gpu <= n.gpus for n in usable):
        return [
            FieldError(
                path,
                f"no single node has {format_cpu(res.cpu_millis)} cpu, "
                f"{format_memory(res.memory)} memory and {res.gpu:g} gpu together",
            )
        ]
    return []


def _within_queue_max(job: TrainingJob, queue: QueueSpec) -> list[FieldError]:
    """A gang bigger than its queue's max would wait forever: refuse it now."""
    gang = [role for role in job.spec.roles.values()]
    cpu = sum(r.resources.cpu * r.min_bound for r in gang)
    memory = sum(r.resources.memory * r.min_bound for r in gang)
    gpu = sum(r.resources.gpu * r.min_bound for r in gang)
    limits = queue.max
    errors: list[FieldError] = []
    for name, need, cap in (
        ("cpu", cpu, limits.cpu),
        ("memory", memory, limits.memory),
        ("gpu", gpu, limits.gpu),
    ):
        if cap is not None and need > cap + 1e-9:
            errors.append(
                FieldError(
                    "spec.queue",
                    f"the job needs {_amount(name, need)} {name} in all; queue '{queue.name}' "
                    f"may hold at most {_amount(name, cap)}",
                )
            )
    return errors


def _amount(resource: str, value: float) -> str:
    return format_memory(int(value)) if resource == "memory" else f"{value:g}"
