"""What training code imports: ``tidemill.init()`` and the context it returns.

Example::

    >>> import tidemill.runtime as rt
    >>> with rt.init() as ctx:
    ...     ctx.is_chief
    True
"""

from __future__ import annotations

from tidemill.runtime._context import RuntimeContext, init
from tidemill.runtime._errors import RendezvousError, RuntimeConfigError

__all__ = ["RendezvousError", "RuntimeConfigError", "RuntimeContext", "init"]
