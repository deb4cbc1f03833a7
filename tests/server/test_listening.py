"""Where a server listens: the address it is given, and the URL it is reached by."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tidemill.client import Client
from tidemill.server.runner import ServerRunner


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
def test_a_server_on_the_ipv6_loopback_is_reached_by_its_bracketed_url(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path, host="::1", port=0)
    try:
        url = runner.start()
        with Client(url) as client:
            nodes = client.nodes()
    finally:
        runner.stop()

    assert url == f"http://[::1]:{runner.port}"
    assert [node.name for node in nodes] == ["local"]
