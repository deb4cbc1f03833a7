"""What ``tidemill.init()`` raises when a replica cannot join its job.

Tree::

    RuntimeConfigError (ValueError)    the launch environment is inconsistent
    RendezvousError (RuntimeError)     the peers were not reached in time
"""

from __future__ import annotations


class RuntimeConfigError(ValueError):
    """RANK, WORLD_SIZE, MASTER_* or LOCAL_RANK disagree; the message names each variable."""


class RendezvousError(RuntimeError):
    """The process group could not be formed: a peer is missing or unreachable."""
