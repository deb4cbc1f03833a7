"""Where the controller's nodes come from: the cluster file, or an engine that finds them.

An engine with a ``nodes()`` method (Kubernetes: Nodes less other pods' requests) is the
source of truth; its ``version`` changes when what it saw changed, so node rows are
written only then. An engine with ``admit(job)`` can refuse a job at submit (a
namespace it may not use, no image). Other engines run the declared cluster.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tidemill.api.cluster import NodeSpec
from tidemill.api.errors import FieldError, SpecError
from tidemill.api.job import TrainingJob
from tidemill.engines.base import Engine


@runtime_checkable
class Discovers(Protocol):
    version: int

    def nodes(self) -> list[NodeSpec]: ...


@runtime_checkable
class Admits(Protocol):
    def admit(self, job: TrainingJob) -> list[tuple[str, str]]: ...


def discovered(engine: Engine) -> Discovers | None:
    """The engine, when it finds its own nodes."""
    return engine if isinstance(engine, Discovers) else None


def check_engine_admits(engine: Engine, job: TrainingJob) -> None:
    """Raise :class:`SpecError` naming every field the engine cannot run."""
    if isinstance(engine, Admits):
        problems = engine.admit(job)
        if problems:
            raise SpecError([FieldError(path, message) for path, message in problems])
