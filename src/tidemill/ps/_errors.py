"""What the parameter-server data path raises.

Tree::

    PSError (Exception)
    ├── PSConfigError (ValueError)      a config or environment value is wrong
    ├── PSBadIds (ValueError)           ids that no table can hold (negative, too big, float)
    ├── PSUnavailable (ConnectionError) a shard cannot be reached or dropped the connection
    ├── PSProtocolError                 a frame broke the wire format
    └── PSServerError                   a shard answered with an error frame
        ├── PSUnknownTable              a table the shard does not hold
        ├── PSTimeout                   a pull waited too long for other ranks' pushes
        └── PSCutMissing                the shard cannot return to the step a group resumes at
"""

from __future__ import annotations


class PSError(Exception):
    """Base of every parameter-server error."""


class PSConfigError(PSError, ValueError):
    """A config field or environment variable is wrong; the message names it."""


class PSBadIds(PSError, ValueError):
    """Ids must be integers in [0, 2**63 - 1]; the message says which ones are not."""


class PSUnavailable(PSError, ConnectionError):
    """A shard is unreachable or closed its connection.

    ``shard`` and ``address`` name it, so the elastic runtime can map the failure to
    the replica that died.
    """

    elastic_recoverable = True
    """The elastic loop rolls back to the last commit and re-forms (see tidemill.runtime)."""

    def __init__(self, message: str, *, shard: int, address: str) -> None:
        super().__init__(message)
        self.shard = shard
        self.address = address


class PSProtocolError(PSError):
    """A frame is malformed: wrong magic, unknown version or op, sizes that disagree."""


class PSServerError(PSError):
    """A shard refused a request; ``code`` is the wire error code, ``shard`` the replica."""

    def __init__(self, message: str, *, code: int, shard: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.shard = shard


class PSUnknownTable(PSServerError):
    """The request named a table the shard does not hold; the message lists those it does."""


class PSTimeout(PSServerError):
    """A pull waited longer than ``pull_timeout_s``; the message names the silent ranks."""

    elastic_recoverable = True


class PSCutMissing(PSServerError):
    """A new epoch resumes at a step the shard holds no cut of (it restarted empty, or the
    group's last commit is older than the shard's): the job restores a checkpoint."""
