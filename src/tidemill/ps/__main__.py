"""``python -m tidemill.ps``: one PS replica, configured by its environment.

Reads ``TIDEMILL_PS`` (the job's ps role), ``TIDEMILL_PS_ADDRS`` and ``TIDEMILL_INDEX``;
listens on its own entry of the address list (port 0 picks a free port, printed in
the "listening" line) and exits 0 after a SHUTDOWN frame, or after SIGTERM once its
workers have let go: a preempted or stopped job's workers still cut and save their
last step through the servers (at most ``DRAIN_S``; the engine's SIGKILL ends it anyway).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import sys
import time
from types import FrameType

from tidemill.peer_proof import job_proof
from tidemill.ps._errors import PSConfigError
from tidemill.ps._psconfig import PSConfig, addresses_from_env, index_from_env
from tidemill.ps._server import PSServer

DRAIN_S = 30.0
"""How long a SIGTERM'd replica keeps serving workers that are still connected."""


def listen_host(named: str) -> str:
    """The address to bind for the name the others reach this replica by: an IP as is
    (the local engine's loopback), every interface for a DNS name (a pod, whose name
    resolves only once its Service publishes it).

    >>> listen_host("127.0.0.1"), listen_host("ctr-ps-0.ctr.ads.svc")
    ('127.0.0.1', '0.0.0.0')
    """
    try:
        ipaddress.ip_address(named)
    except ValueError:
        return "0.0.0.0"
    return named


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="tidemill-ps: %(message)s")
    try:
        config = PSConfig.from_env(os.environ)
        addresses = addresses_from_env(os.environ)
        index = index_from_env(os.environ, len(addresses))
    except PSConfigError as exc:
        print(f"tidemill-ps: {exc}", file=sys.stderr)
        return 2
    named, port = addresses[index]
    host = listen_host(named)
    try:
        server = PSServer(
            config, index, host, port, replicas=len(addresses), proof=job_proof(os.environ)
        )
    except OSError as exc:
        print(f"tidemill-ps: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    drain_until: list[float] = []

    def drain(_signum: int, _frame: FrameType | None) -> None:
        drain_until.append(time.monotonic() + DRAIN_S)

    signal.signal(signal.SIGTERM, drain)
    server.start()
    bound_host, bound_port = server.address
    print(
        f"tidemill-ps: replica {index} listening on {bound_host}:{bound_port}"
        f" (tables {', '.join(config.table_names)}; {config.consistency})",
        flush=True,
    )
    while not server.wait(0.2):
        if drain_until and (server.connections == 0 or time.monotonic() > drain_until[0]):
            print(f"tidemill-ps: replica {index} stopping (SIGTERM)", flush=True)
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
