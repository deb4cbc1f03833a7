"""``/api/v1/jobs/{name}/stacks`` and ``/exec``: diagnosing a job that hangs.

Stacks need a viewer of the job's namespace (they show what logs show: where the code
is); exec runs a command as the replica's user, so it needs an editor, who could
submit that command as a job anyway. A job's own credential may do neither.

Exec answers a stream of JSON lines: ``{"output": TEXT}`` as the command writes, then
``{"exit_code": N}``; a command still running after ``timeout_s`` is killed (124).

Neither holds a thread of the server's shared pool (40, for every ``def`` handler)
while it waits on a replica: 45 long-running ``exec`` commands held them all, and the
server answered nobody (``/healthz`` timed out) until they ended. A command's output is
read on a thread of its own, at most :data:`EXEC_AT_ONCE` at once and
:data:`EXEC_PER_CLIENT` per client (429 past them); stacks are collected on a pool of
their own (:data:`STACK_CALLS` calls at once, the rest wait their turn).
"""

from __future__ import annotations

import asyncio
import codecs
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from tidemill.api.debug import (
    ExecRequest,
    FrameView,
    ReplicaStacks,
    StacksReport,
    ThreadView,
)
from tidemill.api.errors import ConflictError, NotFoundError, job_not_found
from tidemill.api.status import ReplicaPhase
from tidemill.api.token import Role
from tidemill.controller.reconciler import Controller
from tidemill.engines.replica_env import COLLECTIVE_ROLES, rank_of
from tidemill.engines.replica_exec import ReplicaCommand
from tidemill.server.auth import Caller, Guard
from tidemill.server.engine_views import replica_exec, replica_stacks
from tidemill.server.limits import Limits, SlotStreamingResponse, StreamSlots
from tidemill.server.stack_groups import group_stacks
from tidemill.store.tables import ReplicaRow

DUMP_THREADS = 16
"""Replicas read at once (each read may wait seconds for a stuck process)."""
STACK_CALLS = 4
"""Stacks requests collected at once; more wait their turn."""
EXEC_AT_ONCE = 16
EXEC_PER_CLIENT = 4
QUEUED_LINES = 16
"""Output lines read ahead of a slow client; then the command waits (backpressure)."""
EXIT_TIMED_OUT = 124


def debug_routes(guard: Guard, controller: Controller, limits: Limits) -> APIRouter:
    router = APIRouter(prefix="/api/v1/jobs", tags=["diagnosis"])
    caller_of = Depends(guard.caller)
    store, engine = controller.store, controller.engine
    stack_calls = ThreadPoolExecutor(STACK_CALLS, thread_name_prefix="stacks")
    exec_per_client, exec_in_all = StreamSlots(EXEC_PER_CLIENT), StreamSlots(EXEC_AT_ONCE)

    def running(namespace: str, name: str, verb: str) -> list[ReplicaRow]:
        with store.read() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise job_not_found(name, namespace)
            replicas = sorted(row.replicas, key=lambda r: (r.role, r.index))
            live = [r for r in replicas if r.phase == ReplicaPhase.RUNNING]
            if not live:
                states = ", ".join(f"{r.replica_name} {r.phase}" for r in replicas)
                raise ConflictError(
                    f"job {namespace}/{name} ({row.phase}) has no running replicas to {verb}"
                    f" ({states or 'no replicas yet'}); see `tidemill describe {name}`"
                )
            return live

    @router.get("/{name}/stacks", response_model=StacksReport)
    async def stacks(
        name: str, namespace: str | None = None, caller: Caller = caller_of
    ) -> StacksReport:
        """Every running replica's Python stacks (py-spy, else the replica's own
        faulthandler dump) and the groups of replicas stopped in the same place."""
        collect = partial(collect_stacks, name, namespace, caller)
        return await asyncio.get_running_loop().run_in_executor(stack_calls, collect)

    def collect_stacks(name: str, namespace: str | None, caller: Caller) -> StacksReport:
        ns, name = guard.job(caller, name, namespace, Role.VIEWER, "read stacks")
        caller.require(Role.VIEWER, ns, "read stacks")  # a user's call, not the job's own
        replicas = running(ns, name, "read stacks of")
        counts: dict[str, int] = {}
        for replica in replicas:
            counts[replica.role] = max(counts.get(replica.role, 0), replica.index + 1)
        with ThreadPoolExecutor(min(DUMP_THREADS, len(replicas))) as pool:
            dumps = list(pool.map(lambda r: replica_stacks(engine, r), replicas))
        views = [
            ReplicaStacks(
                replica=replica.replica_name,
                role=replica.role,
                index=replica.index,
                rank=rank_of(counts, replica.role, replica.index)
                if replica.role in COLLECTIVE_ROLES
                else None,
                pid=dump.pid,
                source=dump.source,
                problem=dump.problem,
                threads=[
                    ThreadView(
                        name=thread.name,
                        main=thread.main,
                        frames=[
                            FrameView(function=f.function, file=f.file, line=f.line)
                            for f in thread.frames
                        ],
                    )
                    for thread in dump.threads
                ],
                text=dump.text,
            )
            for replica, dump in zip(replicas, dumps, strict=True)
        ]
        return StacksReport(job=f"{ns}/{name}", replicas=views, groups=group_stacks(views))

    @router.post("/{name}/exec")
    def exec_in_replica(
        name: str,
        request: ExecRequest,
        http: Request,
        namespace: str | None = None,
        caller: Caller = caller_of,
    ) -> StreamingResponse:
        """Run ``command`` with the replica's environment, in its folder (its container
        on Kubernetes); streams ``{"output": ...}`` lines, then ``{"exit_code": N}``."""
        ns, name = guard.job(caller, name, namespace, Role.EDITOR, "exec in replicas")
        replicas = running(ns, name, "exec in")
        chosen = [r for r in replicas if (r.role, r.index) == (request.role, request.index)]
        if not chosen:
            raise NotFoundError(
                f"job {ns}/{name} has no running replica {request.role}-{request.index} "
                f"(running: {', '.join(r.replica_name for r in replicas)})"
            )
        release = exec_slot(limits.client_key(http))
        try:
            command = replica_exec(engine, chosen[0], list(request.command))
        except FileNotFoundError as exc:
            release()
            raise ConflictError(f"cannot run {request.command[0]!r}: {exc}") from None
        except BaseException:
            release()
            raise
        lines = on_own_thread(exec_lines(command, request.timeout_s), command.cancel)
        return SlotStreamingResponse(lines, release, media_type="application/x-ndjson")

    def exec_slot(client: str) -> Callable[[], None]:
        """A slot among the client's and the server's commands (released once the
        stream ends), or a 429 naming the limit."""
        mine = exec_per_client.acquire(client)
        if mine is None:
            raise HTTPException(
                429,
                f"too many commands running: at most {EXEC_PER_CLIENT} per client at once; "
                "wait for one to end (or lower its timeout_s) and retry",
            )
        every = exec_in_all.acquire("server")
        if every is None:
            mine()
            raise HTTPException(
                429,
                f"too many commands running: at most {EXEC_AT_ONCE} on this server at once; "
                "retry in a moment",
            )

        def release() -> None:
            mine()
            every()

        return release

    return router


async def on_own_thread(lines: Iterator[str], cancel: Callable[[], None]) -> AsyncIterator[str]:
    """``lines``, read on a thread of its own (not the server's shared pool) at most
    :data:`QUEUED_LINES` ahead of the client; a client that goes away ``cancel``s."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    room = threading.Semaphore(QUEUED_LINES)
    stop = threading.Event()

    def pump() -> None:
        try:
            for line in lines:
                while not room.acquire(timeout=0.5):
                    if stop.is_set():
                        return
                loop.call_soon_threadsafe(queue.put_nowait, line)
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                close()
            with suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="exec-output", daemon=True).start()
    try:
        while (line := await queue.get()) is not None:
            room.release()
            yield line
    finally:
        stop.set()
        # Not on the event loop: ending a command waits for it (a pod's closes a socket).
        threading.Thread(target=cancel, name="exec-cancel", daemon=True).start()


def exec_lines(command: ReplicaCommand, timeout_s: float) -> Iterator[str]:
    """The command's output as JSON lines, then its exit code; it is killed when the
    time is up or the caller goes away."""
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        command.cancel()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        for chunk in command.output():
            text = decoder.decode(chunk)
            if text:
                yield json.dumps({"output": text}) + "\n"
        rest = decoder.decode(b"", final=True)
        if rest:
            yield json.dumps({"output": rest}) + "\n"
        code = command.wait()
        if timed_out.is_set():
            note = f"\n[tidemill: killed after timeout_s={timeout_s:g}]\n"
            yield json.dumps({"output": note}) + "\n"
            code = EXIT_TIMED_OUT
        yield json.dumps({"exit_code": code}) + "\n"
    finally:
        timer.cancel()
        command.cancel()
