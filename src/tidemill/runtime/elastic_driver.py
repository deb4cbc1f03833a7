"""The elastic loop inside one worker: join an epoch, train, and on a change re-form.

One pass per epoch::

    wait for the master's epoch ─► form the group ─► broadcast the newest state
        ─► on_resize ─► wrap DDP ─► run the training function
              │ StepBoundary (agreed change)        │ a collective failed
              ▼                                     ▼
        commit, leave the group, sync        sever the group, roll back, sync (failed)
              │ SIGTERM'd: say leave, raise Left     │
              └──────────── next epoch ◄─────────────┘

The process, its CUDA context and its data pipeline stay: only the process group and
the DDP wrapper are rebuilt.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tidemill.api.checkpoint import CheckpointPlan
from tidemill.peer_proof import job_proof
from tidemill.runtime._active import ActiveEpoch, activate, current, deactivate
from tidemill.runtime._checkpointing import Checkpointing
from tidemill.runtime._errors import RendezvousError
from tidemill.runtime._metrics import reporter
from tidemill.runtime._watchdog import watchdog
from tidemill.runtime.elastic_client import MasterClient
from tidemill.runtime.elastic_context import ElasticContext, Left, StepBoundary
from tidemill.runtime.elastic_group import Group, GroupAborted, StoreClients
from tidemill.runtime.elastic_state import CommitHook, ElasticState
from tidemill.wire import Epoch, Evicted, Finished, Refused

T = TypeVar("T")
ResizeHook = Callable[[int, int], None]

MASTER_TIMEOUT_S = 300.0
"""How long a worker that needs the master (between epochs) waits for it to come back."""
CLOSE_FLUSH_S = 60.0
"""A worker that ends on an error still lets a checkpoint write in progress finish."""
MAX_FAILURES_WITHOUT_PROGRESS = 8
FAILURE_MARKERS = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "gloo/transport",
    "ProcessGroupGloo",
    "NCCL communicator was aborted",
)
"""Text of the errors torch raises when a peer of a collective is gone."""


def log(message: str) -> None:
    print(f"tidemill: {message}", file=sys.stderr, flush=True)


class Driver:
    """Runs a training function through epochs for one worker (see the module docstring)."""

    def __init__(
        self,
        state: ElasticState,
        env: Mapping[str, str],
        on_resize: ResizeHook | None,
        backend: str | None,
    ) -> None:
        self.state = state
        self.on_resize = on_resize
        self.replica = f"{env.get('TIDEMILL_ROLE') or 'worker'}-{env.get('TIDEMILL_INDEX') or 0}"
        self.device = _device_of(state.model)
        self.backend = backend or ("nccl" if self.device.type == "cuda" else "gloo")
        self.client = MasterClient(
            env["TIDEMILL_MASTER_ADDR"],
            self.replica,
            os.getpid(),
            on_abort=self._on_abort,
            proof=job_proof(env),
        )
        self.group: Group | None = None
        self.stores = StoreClients()
        self.leaving = False
        self._reporter: CommitHook | None = None
        plan = CheckpointPlan.from_env(env)
        self.checkpointing = (
            None
            if plan is None
            else Checkpointing(plan, env.get("TIDEMILL_JOB"), self.client.notify)
        )
        self._stuck_at: int | None = None
        self._failures = 0

    def run(self, train: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main else None
        # torch leaves ~300k long-lived objects; freezing them keeps the gc.collect() of
        # every group change (which frees the old process group) off the critical path.
        gc.freeze()
        self.client.start()
        metrics = reporter()
        metrics.attach(self.client.notify)
        try:
            return self._epochs(train, args, kwargs)
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self._stop_reporting()
            deactivate()
            if self.group is not None:
                self.group.close(broken=True)
                self.group = None
            if self.checkpointing is not None:
                self.checkpointing.close(CLOSE_FLUSH_S)
            metrics.detach()
            self.client.close()

    def _epochs(self, train: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        while True:
            plan = self._await_epoch()
            ctx: ElasticContext | None = None
            try:
                with watchdog():
                    ctx = self._enter(plan)
                result = train(ctx, *args, **kwargs)
            except StepBoundary:
                with watchdog():
                    self._leave_cleanly(plan)
                continue
            except Exception as exc:
                if not self._recoverable(exc, plan):
                    raise
                with watchdog():
                    self._leave_broken(plan, exc)
                continue
            finally:
                if ctx is not None:
                    ctx.model = self.state.model
            self._finish(plan)
            return result

    # --- between epochs ---------------------------------------------------------------

    def _await_epoch(self) -> Epoch:
        while True:
            if self.leaving:
                self.client.leave()
                reason = f"{self.replica} left the job before joining a group (SIGTERM)"
                log(reason)
                raise Left(reason, self.state.step)
            message = self.client.next_message(0.05)
            if message is None:
                if self.client.unreachable_s() > MASTER_TIMEOUT_S:
                    raise RendezvousError(
                        f"{self.replica} could not reach the job master at "
                        f"{self.client.address} for {MASTER_TIMEOUT_S:g} s; is the master "
                        "running? (tidemill logs JOB --role master)"
                    )
                continue
            match message:
                case Epoch(members=members) if self.replica in members:
                    return message
                case Refused(message=text) | Evicted(message=text):
                    raise RendezvousError(f"the job master {message.op} {self.replica}: {text}")
                case Finished(step=step):
                    raise Left(f"training had already finished at step {step}", step)

    def _enter(self, plan: Epoch) -> ElasticContext:
        started = time.monotonic()
        checkpointing = self.checkpointing
        if plan.restore and plan.rank == plan.source_rank and checkpointing is not None:
            checkpointing.restore(self.state)
        self.group = group = Group(plan, self.backend, self.device)
        group.form(self.stores, lambda: self.client.aborted(plan.epoch), {self.client.port})
        self.client.member_of(plan.epoch)
        state = self.state
        state.broadcast(plan.source_rank, plan.rank, self.device)
        if state.world_size != plan.world_size:
            if self.on_resize is not None:
                self.on_resize(state.world_size, plan.world_size)
            state.world_size = plan.world_size
            state.commit()
        if checkpointing is not None:
            if plan.rank == 0:
                checkpointing.lead(state)
            else:
                checkpointing.follow()
        if plan.rank == 0:
            self._reporter = state.add_commit_listener(
                lambda committed: self.client.commit(plan.epoch, **committed.report())
            )
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        model = DistributedDataParallel(state.model, device_ids=device_ids, init_sync=False)
        self.client.formed(plan.epoch)
        ctx = ElasticContext(
            rank=plan.rank,
            world_size=plan.world_size,
            epoch=plan.epoch,
            replica=self.replica,
            members=plan.members,
            device=self.device,
            model=model,
            state=state,
            boundary=lambda: self._boundary(group, plan),
        )
        activate(ActiveEpoch(ctx, self.client, checkpointing))
        log(
            f"{self.replica} is rank {plan.rank} of {plan.world_size} in epoch {plan.epoch} "
            f"(pid {os.getpid()}, state from rank {plan.source_rank} at step {state.step}, "
            f"formed in {time.monotonic() - started:.2f} s)"
        )
        return ctx

    def _boundary(self, group: Group, plan: Epoch) -> None:
        wanted = self.leaving or self.client.change_requested(plan.epoch)
        if group.change_agreed(wanted):
            raise StepBoundary

    def _leave_cleanly(self, plan: Epoch) -> None:
        """Every rank stopped at the same boundary: the current state is good; keep it."""
        if self.leaving and plan.rank == 0 and self.checkpointing is not None:
            self.checkpointing.save_next()
        self.state.commit()
        self._close_group(broken=False)
        if self.leaving:
            reason = f"{self.replica} left the job at step {self.state.step} (SIGTERM)"
            log(reason)
            if plan.rank == 0 and self.checkpointing is not None:
                # Stopped for good (scale-in, preemption, the job stopping): the step
                # reached is what a restart resumes from.
                self.checkpointing.final(self.state.committed)
            self.client.leave()
            raise Left(reason, self.state.step)
        self.client.sync(plan.epoch, self.state.step, failed=False, data=self.state.data)

    def _leave_broken(self, plan: Epoch, exc: Exception) -> None:
        """A collective failed mid-step: no state past the last commit can be trusted."""
        self._close_group(broken=True)
        state = self.state
        state.restore()
        step = state.committed_step if state.holds_group_state else None
        if step is not None and step == self._stuck_at:
            self._failures += 1
        else:
            self._stuck_at, self._failures = step, 1
        if self._failures > MAX_FAILURES_WITHOUT_PROGRESS:
            raise RendezvousError(
                f"{self.replica}: the group failed {self._failures} times in a row without "
                f"getting past step {step}; giving up. Last error: {_first_line(exc)}"
            ) from exc
        log(
            f"{self.replica}: epoch {plan.epoch} broke ({_first_line(exc)}); rolled back to "
            f"step {state.step}"
        )
        self.client.sync(plan.epoch, step, failed=True, data=state.data)

    def _finish(self, plan: Epoch) -> None:
        self._close_group(broken=False)
        if plan.rank == 0 and self.checkpointing is not None:
            self.checkpointing.final(self.state.committed)
        reporter().flush()  # the last reports go before done: the master may stop after it
        self.client.done(self.state.step)
        log(f"{self.replica} finished at step {self.state.step} in epoch {plan.epoch}")

    def _close_group(self, broken: bool) -> None:
        self._stop_reporting()
        deactivate()
        group, self.group = self.group, None
        if group is not None:
            group.close(broken=broken)
        gc.collect()

    def _stop_reporting(self) -> None:
        reporter, self._reporter = self._reporter, None
        if reporter is not None:
            reporter.remove()

    def _recoverable(self, exc: Exception, plan: Epoch) -> bool:
        if isinstance(exc, GroupAborted | dist.DistError) or self.client.aborted(plan.epoch):
            return True
        if getattr(exc, "elastic_recoverable", False):
            return True  # e.g. a parameter server dropped: roll back and re-form
        text = str(exc)
        return isinstance(exc, RuntimeError) and any(m in text for m in FAILURE_MARKERS)

    # --- other threads ----------------------------------------------------------------

    def _on_abort(self, epoch: int) -> None:
        group = self.group
        if group is not None and group.plan.epoch <= epoch:
            group.sever()
            active = current()
            for listener in list(active.abort_listeners) if active is not None else ():
                listener()

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.leaving = True


def _device_of(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
