"""Proof that a connection to a job's master or parameter server comes from that job.

The job master and the PS replicas listen on ports that other processes reach too:
any pod of the cluster (NetworkPolicy aside), any process on a shared host. Unchecked,
a stranger could register as a worker of another tenant's job, read its embedding
tables or push gradients into them. With auth on, the controller gives each job's
credential to its master and every replica (``TIDEMILL_TOKEN``); the first message of
each connection (the master's ``register``, the PS ``HELLO``) then carries
:func:`job_proof`, an HMAC of that credential which the listener compares in constant
time. The credential itself never goes on these connections, so a proof cannot be
turned into access to the control plane. Without a credential (a server without auth:
one user), nothing is asked.

It authenticates, it does not encrypt: a network where others can read the traffic
needs the network's own encryption (WireGuard in Calico or Cilium, for instance).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

TOKEN_VAR = "TIDEMILL_TOKEN"
"""The job's own credential, which the controller gives its master and replicas: it lets
them write that job's state, and proves them to each other here."""
_PURPOSE = b"tidemill peer proof v1"


def job_proof(env: Mapping[str, str]) -> str | None:
    """The proof of this job's credential in ``env``, or None when there is none.

    >>> job_proof({"TIDEMILL_TOKEN": "s3cret"}) == job_proof({"TIDEMILL_TOKEN": "s3cret"})
    True
    >>> job_proof({"TIDEMILL_TOKEN": "other"}) == job_proof({"TIDEMILL_TOKEN": "s3cret"})
    False
    >>> job_proof({}) is None
    True
    """
    token = env.get(TOKEN_VAR)
    if not token:
        return None
    return hmac.new(token.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def proof_refusal(expected: str | None, given: object, listener: str) -> str | None:
    """Why a peer that sent ``given`` may not use ``listener``, or None when it may.

    >>> proof_refusal(None, None, "the job master") is None
    True
    >>> proof_refusal("ab", chr(0xD800) + "é", "a PS replica") is None
    False
    >>> print(proof_refusal("ab", None, "the job master of ads/ctr"))
    the job master of ads/ctr takes connections only from its own job's replicas: \
this one sent no proof of the job's credential (TIDEMILL_TOKEN)
    """
    if expected is None:
        return None
    if isinstance(given, str) and hmac.compare_digest(
        expected.encode(), given.encode("utf-8", "replace")  # any text a peer sends
    ):
        return None
    what = "no proof" if given is None else "a wrong proof"
    return (
        f"{listener} takes connections only from its own job's replicas: this one sent "
        f"{what} of the job's credential ({TOKEN_VAR})"
    )
