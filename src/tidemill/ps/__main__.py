"""``python -m tidemill.ps``: one PS replica, configured by its environment.

Reads ``TIDEMILL_PS`` (the :class:`PSConfig` JSON), ``TIDEMILL_PS_ADDRS`` and
``TIDEMILL_INDEX``; listens on its own entry of the address list (port 0 picks a free
port, printed in the "listening" line) and exits 0 on SIGTERM or a SHUTDOWN frame.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType

from tidemill.ps._errors import PSConfigError
from tidemill.ps._psconfig import PSConfig, addresses_from_env, index_from_env
from tidemill.ps._server import PSServer


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="tidemill-ps: %(message)s")
    try:
        config = PSConfig.from_env(os.environ)
        addresses = addresses_from_env(os.environ)
        index = index_from_env(os.environ, len(addresses))
    except PSConfigError as exc:
        print(f"tidemill-ps: {exc}", file=sys.stderr)
        return 2
    host, port = addresses[index]
    try:
        server = PSServer(config, index, host, port)
    except OSError as exc:
        print(f"tidemill-ps: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    server.start()
    bound_host, bound_port = server.address
    print(
        f"tidemill-ps: replica {index} listening on {bound_host}:{bound_port}"
        f" (tables {', '.join(config.table_names)}; {config.consistency})",
        flush=True,
    )
    while not server.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
