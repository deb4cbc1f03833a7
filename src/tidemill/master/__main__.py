"""``python -m tidemill.master``: the per-job master, configured by its environment."""

from __future__ import annotations

import asyncio
import os
import sys

from tidemill.master.config import MasterConfig, MasterConfigError
from tidemill.master.persistence import FileBackend, RestBackend, StateBackend
from tidemill.master.server import MasterServer


def backend_for(config: MasterConfig) -> StateBackend:
    """A state file when one is named (tests), else the control plane, else a file in
    the working directory so a master run by hand still survives its own restart."""
    if config.state_file is not None:
        return FileBackend(config.state_file)
    if config.server is not None:
        return RestBackend(config.server, config.job)
    return FileBackend(f"tidemill-master-{config.job.replace('/', '-')}.json")


async def serve(config: MasterConfig) -> None:
    server = MasterServer(config, backend_for(config))
    await server.start()
    await server.run()


def main() -> int:
    try:
        config = MasterConfig.from_env(os.environ)
    except MasterConfigError as exc:
        print(f"tidemill-master: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(
            f"tidemill-master: cannot listen on {config.bind_host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
