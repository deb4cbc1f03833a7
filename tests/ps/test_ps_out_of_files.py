"""A PS replica that runs out of files (its limit reached by connections) takes
connections again once files are freed, instead of never accepting another."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, TableConfig

from .conftest import LISTENING

CONFIG = PSConfig((TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0), 0.0, 1),))
FILES = 160
# The replica as `python -m tidemill.ps` runs it, with few files to open.
STARVED = (
    "import resource, runpy\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILES}, {FILES}))\n"
    "runpy.run_module('tidemill.ps', run_name='__main__', alter_sys=True)\n"
)


def test_a_replica_out_of_files_accepts_again_once_they_are_freed() -> None:
    env = {
        **os.environ,
        "TIDEMILL_PS": CONFIG.to_spec(1).model_dump_json(by_alias=True),
        "TIDEMILL_PS_ADDRS": "127.0.0.1:0",
        "TIDEMILL_INDEX": "0",
    }
    replica = subprocess.Popen(
        [sys.executable, "-c", STARVED],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert replica.stdout is not None
        found = LISTENING.search(replica.stdout.readline())
        assert found is not None
        address = (found.group(1), int(found.group(2)))
        held = [socket.create_connection(address, timeout=5) for _ in range(FILES + 20)]
        time.sleep(1.0)  # the replica takes what its files allow, then cannot accept
        for sock in held:
            sock.close()
        with PSClient(CONFIG, [address], same_host_socket=False, connect_timeout_s=10) as client:
            assert client.pull("t", [7])[0].tolist() == [0.0] * 4  # rows are made on a pull
            client.push("t", [7], np.ones((1, 4), np.float32))
            client.advance()
            assert client.pull("t", [7])[0].tolist() == [-1.0] * 4
    finally:
        replica.terminate()
        _, errors = replica.communicate(timeout=30)
    assert errors.count("cannot accept a connection now (Too many open files)") == 1, errors
