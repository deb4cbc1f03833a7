"""The server variables a replica inherits: an explicit list, nothing else.

A replica runs the job's code, which another tenant may have written; the server's
environment holds the server's own secrets (its ``TIDEMILL_TOKEN``, cloud keys such as
``AWS_*``, database URLs). So the local engine starts every replica, and the warm-start
fork server it forks Python replicas from, with only these of the server's variables:

- where programs and libraries are: ``PATH``, ``PYTHONPATH``, ``VIRTUAL_ENV``,
  ``LD_LIBRARY_PATH``, ``CUDA_HOME``;
- who and where the user is: ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``TMPDIR``;
- locale and time: ``LANG``, ``LANGUAGE``, ``LC_*``, ``TZ``;
- how collectives and kernels use this machine: ``NCCL_*``, ``GLOO_*`` (network
  interfaces, transports) and ``OMP_NUM_THREADS``.

Over these comes the launch's own environment: the role's ``env`` from the job file
(which may override any of the above), then tidemill's variables (``RANK``,
``TIDEMILL_*``, ``TIDEMILL_TOKEN`` ...), which the job file cannot override, and
``CUDA_VISIBLE_DEVICES``. Anything else a replica needs goes in the job file.
"""

from __future__ import annotations

from collections.abc import Mapping

INHERITED_VARS = frozenset(
    {
        "PATH",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "CUDA_HOME",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "TMPDIR",
        "LANG",
        "LANGUAGE",
        "TZ",
        "OMP_NUM_THREADS",
    }
)
"""Server variables every replica inherits, by exact name."""
INHERITED_PREFIXES = ("LC_", "NCCL_", "GLOO_")
"""Server variables every replica inherits, by prefix."""


def is_inherited(name: str) -> bool:
    """Whether a replica sees the server's value of ``name``.

    >>> is_inherited("LC_ALL"), is_inherited("TIDEMILL_TOKEN"), is_inherited("AWS_REGION")
    (True, False, False)
    """
    return name in INHERITED_VARS or name.startswith(INHERITED_PREFIXES)


def inherited_env(server_env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``server_env`` a replica starts with.

    >>> inherited_env({"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "x", "NCCL_SOCKET_IFNAME": "lo"})
    {'PATH': '/bin', 'NCCL_SOCKET_IFNAME': 'lo'}
    """
    return {name: value for name, value in server_env.items() if is_inherited(name)}
