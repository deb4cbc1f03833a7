"""Engines by name, imported only when asked for.

``tidemill server --engine NAME`` and :class:`~tidemill.server.runner.ServerRunner`
create their engine here. An engine's module may need packages the others do not (a
Kubernetes client, say), so each is imported by :func:`create_engine` when named,
never by importing :mod:`tidemill.engines`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import cast

from tidemill.engines.base import Engine

ENGINES = {
    "local": "tidemill.engines.local:LocalEngine",
    "kubernetes": "tidemill.engines.kubernetes.engine:KubernetesEngine",
}
"""Engine name -> ``module:class``; the class takes ``(state_dir, **options)``."""
DEFAULT_ENGINE = "local"


class UnknownEngine(ValueError):
    """No engine is registered under the name asked for."""


def engine_names() -> list[str]:
    """The names :func:`create_engine` accepts.

    >>> engine_names()
    ['kubernetes', 'local']
    """
    return sorted(ENGINES)


def check_engine_name(name: str) -> str:
    """``name`` if an engine is registered under it; else :class:`UnknownEngine`, naming
    the known ones."""
    if name not in ENGINES:
        known = ", ".join(engine_names())
        raise UnknownEngine(f"engine: unknown engine {name!r}; known engines: {known}")
    return name


def create_engine(name: str, state_dir: Path, **options: object) -> Engine:
    """A new engine of kind ``name``, keeping its state (logs, replica files) under
    ``state_dir``; ``options`` go to its constructor."""
    module_name, _, class_name = ENGINES[check_engine_name(name)].partition(":")
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return cast(Engine, engine_class(state_dir, **options))
