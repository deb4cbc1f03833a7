"""tidemill: an elastic training platform.

The public SDK surface is small: :class:`Client` talks to a tidemill server, and
:func:`init` joins a training process to its job (see :mod:`tidemill.runtime`).
Imports are lazy so that ``import tidemill`` inside a training process stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "TidemillError", "__version__", "init"]

if TYPE_CHECKING:
    from tidemill.client import Client, TidemillError
    from tidemill.runtime import init


def __getattr__(name: str) -> Any:
    if name in ("Client", "TidemillError"):
        from tidemill import client

        return getattr(client, name)
    if name == "init":
        from tidemill.runtime import init

        return init
    raise AttributeError(f"module 'tidemill' has no attribute {name!r}")
