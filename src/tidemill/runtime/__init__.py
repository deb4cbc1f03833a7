"""What training code imports: ``tidemill.init()``, the elastic training loop and
``report()`` for training metrics.

Example::

    >>> import tidemill.runtime as rt
    >>> with rt.init() as ctx:
    ...     ctx.is_chief
    True

The elastic names (:func:`elastic`, :class:`ElasticState`, :class:`ElasticContext`,
:class:`Left`) and :func:`report` are imported on first use, so ``import
tidemill.runtime`` stays cheap for scripts that only call ``init()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidemill.runtime._context import RuntimeContext, init
from tidemill.runtime._errors import CommitChangedError, RendezvousError, RuntimeConfigError
from tidemill.stack_signal import install_from_env

install_from_env()  # `tidemill debug stacks` can read this replica, also when started cold

if TYPE_CHECKING:
    from tidemill.runtime._metrics import report
    from tidemill.runtime.elastic_loop import ElasticContext, ElasticState, Left, elastic

__all__ = [
    "CommitChangedError",
    "ElasticContext",
    "ElasticState",
    "Left",
    "RendezvousError",
    "RuntimeConfigError",
    "RuntimeContext",
    "elastic",
    "init",
    "report",
]

_ELASTIC = ("ElasticContext", "ElasticState", "Left", "elastic")


def __getattr__(name: str) -> Any:
    if name in _ELASTIC:
        from tidemill.runtime import elastic_loop

        return getattr(elastic_loop, name)
    if name == "report":
        from tidemill.runtime._metrics import report

        globals()[name] = report  # found directly from now on: it is called every step
        return report
    raise AttributeError(f"module 'tidemill.runtime' has no attribute {name!r}")
