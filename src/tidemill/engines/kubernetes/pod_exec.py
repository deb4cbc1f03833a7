"""``tidemill exec`` and ``debug stacks`` on Kubernetes: the ``pods/exec`` subresource.

A command run through ``pods/exec`` starts in the replica's container, so it sees the
container's environment and working folder, as ``kubectl exec`` does. Stacks are read
by ``py-spy dump`` run there against pid 1 (the replica's command): the image needs
py-spy and the container the ``SYS_PTRACE`` capability.

Commands are tested against the emulated API server's ``pods/exec``; stacks are not
(emulated pods share the host's pid namespace, so there is no container pid 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from kubernetes.stream.ws_client import ERROR_CHANNEL, STDERR_CHANNEL, STDOUT_CHANNEL

from tidemill.api.errors import ConflictError
from tidemill.engines.base import ReplicaHandle
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.stacks import StackDump, parse_py_spy, render

POLL_S = 1.0
EXIT_CANNOT_RUN = 126
PY_SPY_ARGV = ["py-spy", "dump", "--pid", "1", "--json"]


class PodCommand:
    """A command in the pod's (only) container, over the exec websocket."""

    def __init__(self, cluster: Cluster, handle: ReplicaHandle, argv: list[str]) -> None:
        namespace, pod = str(handle.data["namespace"]), str(handle.data["pod"])
        try:
            self._ws: Any = stream(
                cluster.core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=argv,
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,  # a UTF-8 character cut between two frames stays whole
                _preload_content=False,
            )
        except ApiException as exc:
            raise ConflictError(
                f"cannot exec in pod {namespace}/{pod}: {exc.status} {exc.reason}"
            ) from None

    def output(self) -> Iterator[bytes]:
        """stdout and stderr as they arrive, to the last byte. Channels are read with
        ``timeout=0``: ``read_stderr()``'s default waits for a frame and may take the last
        stdout frame with the close, which the loop would then never read. One more pass
        after the close drains what it brought."""
        while True:
            was_open = self._ws.is_open()
            if was_open:
                self._ws.update(timeout=POLL_S)
            for channel in (STDOUT_CHANNEL, STDERR_CHANNEL):
                data = self._ws.read_channel(channel, timeout=0)
                if data:
                    yield data
            if not was_open:
                return

    def wait(self) -> int:
        """The exit code from the exec status (``126`` with the reason on stderr's
        place when the command could not start)."""
        while self._ws.is_open():
            self._ws.update(timeout=POLL_S)
        status = yaml.safe_load(self._ws.read_channel(ERROR_CHANNEL) or "{}") or {}
        if status.get("status") == "Success":
            return 0
        causes = (status.get("details") or {}).get("causes") or []
        codes = [c.get("message") for c in causes if c.get("reason") == "ExitCode"]
        return int(codes[0]) if codes else EXIT_CANNOT_RUN

    def cancel(self) -> None:
        self._ws.close()


def pod_stacks(cluster: Cluster, handle: ReplicaHandle) -> StackDump:
    """``py-spy dump`` of the container's pid 1, run in the container."""
    try:
        command = PodCommand(cluster, handle, PY_SPY_ARGV)
    except ConflictError as exc:
        return StackDump(problem=f"no stacks: {exc}")
    output = b"".join(command.output()).decode("utf-8", "replace")
    code = command.wait()
    if code != 0:
        first = (output.strip().splitlines() or [f"exit code {code}"])[0]
        return StackDump(
            pid=1,
            problem=(
                f"no stacks: py-spy in the container failed ({first}); the image needs "
                "py-spy (pip install py-spy) and the container the SYS_PTRACE capability"
            ),
        )
    try:
        threads = parse_py_spy(output)
    except (ValueError, KeyError, TypeError) as exc:
        return StackDump(pid=1, problem=f"no stacks: py-spy printed no stacks ({exc})")
    return StackDump("py-spy", threads, render(threads), 1)
