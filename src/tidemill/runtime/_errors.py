"""What ``tidemill.runtime`` raises: a replica that cannot join, a commit broken by its caller.

Tree::

    RuntimeConfigError (ValueError)    the launch environment is inconsistent
    RendezvousError (RuntimeError)     the peers were not reached in time
    CommitChangedError (RuntimeError)  a tensor changed in place before its commit copy
"""

from __future__ import annotations


class RuntimeConfigError(ValueError):
    """RANK, WORLD_SIZE, MASTER_* or LOCAL_RANK disagree; the message names each variable."""


class RendezvousError(RuntimeError):
    """The process group could not be formed: a peer is missing or unreachable."""


class CommitChangedError(RuntimeError):
    """A parameter or optimizer state changed in place, outside the optimizer, between
    ``ElasticState.commit()`` and the optimizer's next step, before its copy was taken."""
