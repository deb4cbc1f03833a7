"""One epoch's process group inside a worker: form it, agree at boundaries, break it.

Forming: every member first marks its arrival under the epoch's store prefix and
waits for the others, checking for an ``abort`` from the master as it waits, so a
member that dies before the group forms costs milliseconds, not the group timeout.
Then ``init_process_group`` with a ``PrefixStore("epoch/N", store)``: keys of
different epochs never mix.

Breaking is the hard part of in-place elasticity on gloo. Gloo has no abort that
wakes a rank blocked in a collective whose peers are alive but have given up
(measured on torch 2.13: ``ProcessGroupGloo.abort()`` and ``destroy_process_group()``
leave such a rank blocked until its peers' processes exit). So this module records
the TCP sockets gloo opens while the group forms, and on abort shuts them down: every
pending gloo operation of this process fails at once, its peers see their sockets
close and fail too, and the whole group unwinds in milliseconds. NCCL groups are
aborted with ``ProcessGroup.abort()``, which is what NCCL provides for this.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psutil
import torch
import torch.distributed as dist

from tidemill.runtime._group_release import destroy_default_group
from tidemill.wire import Epoch

ARRIVAL_POLL_S = 0.005
_ABANDONED: list[Any] = []
"""Broken groups, their last vote and its tensor: never freed (see :meth:`Group.close`)."""


class GroupAborted(RuntimeError):
    """The master aborted this epoch before its group formed."""


class StoreClients:
    """One TCPStore client per store address: a restarted master hosts a new one."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, int], Any] = {}

    def get(self, host: str, port: int, timeout_s: float) -> Any:
        key = (host, port)
        if key not in self._clients:
            from torch._C._distributed_c10d import TCPStore

            self._clients = {
                key: TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
            }
        return self._clients[key]


class Group:
    """The process group of one epoch, and the sockets that make it up."""

    def __init__(self, plan: Epoch, backend: str, device: torch.device) -> None:
        self.plan = plan
        self.backend = backend
        self.device = device
        self._sockets: list[tuple[int, Any, Any]] = []
        self._lock = threading.Lock()
        self._broken = False
        self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._pending: Any = None

    def form(self, stores: StoreClients, aborted: Callable[[], bool], keep_ports: set[int]) -> None:
        """Wait for every member to arrive, then build the group; raises GroupAborted.

        Sockets to ``keep_ports`` (the master's) are never counted as the group's.
        """
        from torch._C._distributed_c10d import PrefixStore

        plan = self.plan
        client = stores.get(plan.store_host, plan.store_port, plan.timeout_s)
        store = PrefixStore(plan.prefix, client)
        store.set(f"arrived/{plan.rank}", "1")
        everyone = [f"arrived/{rank}" for rank in range(plan.world_size)]
        deadline = time.monotonic() + plan.timeout_s
        while not store.check(everyone):
            if aborted():
                raise GroupAborted(f"epoch {plan.epoch} was aborted before its group formed")
            if time.monotonic() > deadline:
                raise GroupAborted(
                    f"not all {plan.world_size} members of epoch {plan.epoch} arrived within "
                    f"{plan.timeout_s:g} s"
                )
            time.sleep(ARRIVAL_POLL_S)
        before = _tcp_sockets()
        dist.init_process_group(
            self.backend,
            store=store,
            rank=plan.rank,
            world_size=plan.world_size,
            timeout=timedelta(seconds=plan.timeout_s),
        )
        ignore = {plan.store_port, *keep_ports}
        with self._lock:
            self._sockets = [s for s in _tcp_sockets() - before if s[2][1] not in ignore]
            broken = self._broken
        if broken:
            self.sever()

    def change_agreed(self, wanted: bool) -> bool:
        """The step-boundary vote: True on every rank, at the same boundary, if any rank
        wanted a change at the previous one.

        The vote is an all-reduce (MAX) of one integer started asynchronously at each
        boundary and read at the next, so it travels while the step computes instead
        of adding a round trip to every step; a change takes effect one step later.
        """
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()
            if self._flag.item():
                return True
        self._flag.fill_(1 if wanted else 0)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, async_op=True)
        return False

    def sever(self) -> None:
        """Make every pending and future collective of this group fail now (any thread)."""
        with self._lock:
            self._broken = True
            if self.backend != "gloo":
                world = dist.group.WORLD if dist.is_initialized() else None
                if world is not None:
                    with contextlib.suppress(RuntimeError):
                        world.abort()
                return
            for fd, local, remote in self._sockets:
                _shutdown(fd, local, remote)
            self._sockets = []

    def close(self, broken: bool) -> None:
        """Leave the group. A broken one is severed first, then abandoned, never destroyed.

        Destroying a gloo group joins its worker threads, and a gloo operation whose
        peer gave up can stay blocked until the group timeout even with its sockets
        shut down (seen on torch 2.13: a ring all-reduce waiting in ``waitSend``).
        The join would hang this process, with the GIL held by the destructor, so
        heartbeats stop too. A broken group is therefore kept alive for good: its
        threads finish on their own, in the background, and the process exits
        without waiting for them. It costs one idle gloo context per failure.
        """
        pending, self._pending = self._pending, None
        if broken:
            self.sever()
            world = dist.group.WORLD if dist.is_initialized() else None
            _keep_forever((world, pending, self._flag))
        elif pending is not None:
            with contextlib.suppress(RuntimeError):
                pending.wait()
        if dist.is_initialized():
            destroy_default_group(self.backend)  # a broken one is also kept forever (above)


def _keep_forever(objects: Any) -> None:
    """Never free ``objects``, not even while the interpreter shuts down (see Group.close)."""
    _ABANDONED.append(objects)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(objects))


def _tcp_sockets() -> set[tuple[int, Any, Any]]:
    """Connected TCP sockets of this process as (fd, local address, remote address)."""
    return {
        (c.fd, tuple(c.laddr), tuple(c.raddr))
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.fd >= 0
    }


def _shutdown(fd: int, local: Any, remote: Any) -> None:
    """Shut a socket down by descriptor, only if it is still the one recorded."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if probe.getsockname()[:2] == local[:2] and probe.getpeername()[:2] == remote[:2]:
            probe.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        probe.close()
