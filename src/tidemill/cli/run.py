"""``tidemill server`` and ``tidemill run``: the commands that host a server themselves.

``run`` is the laptop path: validate, start an embedded server on a free port, submit,
watch the job to its end, and exit 0 (Succeeded), 1 (Failed), 2 (invalid, or a gang
this machine can never hold) or 130 (Ctrl-C or SIGTERM: the job is deleted, replicas
that outlive the delete are killed, and ``run`` returns within 3 s; see
:mod:`tidemill.cli.interrupt`). Killed outright (``kill -9``), ``run`` leaves no local
replica running either: each is tethered to it and stops itself; ``run`` again with the
same ``--state-dir`` resumes the job (see :mod:`tidemill.cli.resume`).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from tidemill.api.cluster import ClusterSpec, NodeSpec, this_machine
from tidemill.api.job import TrainingJob
from tidemill.api.limits import MAX_JOBS_PER_NAMESPACE
from tidemill.api.loader import load_job_file
from tidemill.api.metrics import METRIC_REPORTS_PER_JOB
from tidemill.api.status import JobPhase
from tidemill.cli import interrupt
from tidemill.cli.common import checked_store_url, fail, fail_invalid, reports_errors, say
from tidemill.cli.exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID
from tidemill.cli.interrupt import OnceStop, shielded, stop_job
from tidemill.cli.kubernetes import (
    AdvertiseOption,
    ContextOption,
    ExtendedOption,
    GangOption,
    ImageOption,
    KubeconfigOption,
    KubeNamespaceOption,
    NetworkPolicyOption,
    SharingOption,
    engine_options,
)
from tidemill.cli.progress import JobProgress, print_outcome, progress_sink
from tidemill.cli.resume import CannotResume, Takeover, takeover
from tidemill.cli.scripts import missing_scripts
from tidemill.client import Client, NotFound
from tidemill.controller import admission
from tidemill.controller.admission import Oversubscription
from tidemill.engines.registry import DEFAULT_ENGINE, UnknownEngine, check_engine_name, engine_names

ClusterOption = Annotated[
    Path | None,
    typer.Option("--cluster", help="Cluster file: nodes, queues, priority classes."),
]


def _known_engine(name: str) -> str:
    """Refuse an unknown ``--engine`` before anything starts (exit 2, the known names)."""
    try:
        return check_engine_name(name)
    except UnknownEngine as exc:
        raise typer.BadParameter(str(exc).removeprefix("engine: ")) from None


EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        callback=_known_engine,
        help=f"What runs the replicas: {', '.join(engine_names())}.",
    ),
]


def _checked_checkpoint_root(value: str | None) -> str | None:
    """``--checkpoint-root``, refused at start as a job's ``checkpoint.dir`` is at submit
    (every job that names no dir would be refused for it, long after)."""
    if value is None:
        return None
    from tidemill.checkpoint import parse_checkpoint_url  # torch comes with it: only when given

    try:
        parse_checkpoint_url(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _checked_host_names(names: list[str] | None) -> list[str] | None:
    """``--allow-host`` names, refused at start when one is no DNS name."""
    from tidemill.server.origins import UnusableHostName, allowed_names

    try:
        allowed_names(names or ())
    except UnusableHostName as exc:
        raise typer.BadParameter(str(exc).removeprefix("--allow-host ")) from None
    return names


@reports_errors
def server(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the database and job logs live.")
    ] = Path("~/.tidemill"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8500,
    cluster: ClusterOption = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            envvar="TIDEMILL_STORE_URL",
            callback=checked_store_url,
            help="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db "
            "(default: SQLite in --state-dir).",
        ),
    ] = None,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth",
            help="Require a token on every call but /healthz (always on beyond loopback). "
            "The first start writes an admin token to STATE_DIR/admin-token.",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve a non-loopback --host without auth (trusted networks only)."
        ),
    ] = False,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            callback=_checked_host_names,
            help="A name requests may be addressed to besides localhost, 127.0.0.1 and ::1 "
            "(a proxy's; repeat for more). A server on loopback refuses other names, so a web "
            "page cannot reach it through a DNS name pointed at this machine.",
        ),
    ] = None,
    engine: EngineOption = DEFAULT_ENGINE,
    namespace: KubeNamespaceOption = None,
    default_image: ImageOption = None,
    kubeconfig: KubeconfigOption = None,
    kube_context: ContextOption = None,
    gang_scheduler: GangOption = "tidemill",
    gpu_sharing: SharingOption = "hami",
    extended_resource: ExtendedOption = None,
    network_policy: NetworkPolicyOption = True,
    advertise_url: AdvertiseOption = None,
    checkpoint_root: Annotated[
        str | None,
        typer.Option(
            "--checkpoint-root",
            help="Where jobs that name no checkpoint.dir keep their checkpoints: a path or "
            "an fsspec URL (s3://bucket/tidemill) every replica can reach (default: "
            "STATE_DIR/checkpoints on the local engine; none on Kubernetes).",
            callback=_checked_checkpoint_root,
        ),
    ] = None,
    metrics_history: Annotated[
        int,
        typer.Option(
            "--metrics-history",
            min=1,
            max=10_000_000,
            help="Training-metric reports kept per job; the oldest are dropped beyond it.",
        ),
    ] = METRIC_REPORTS_PER_JOB,
    max_jobs_per_namespace: Annotated[
        int,
        typer.Option(
            "--max-jobs-per-namespace",
            min=1,
            max=10_000_000,
            help="Unfinished jobs (pending, running or suspended) one namespace may hold; "
            "a submit past it is refused (403 QuotaExceeded). Each pending job costs every "
            "scheduling pass.",
        ),
    ] = MAX_JOBS_PER_NAMESPACE,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            min=1,
            max=1_000_000,
            help="HTTP connections held at once; one more is answered 503 and closed "
            "(default: half the open-file limit, at most 4096, so files stay for the jobs).",
        ),
    ] = None,
) -> None:
    """Run the control plane until Ctrl-C or SIGTERM.

    On loopback it runs open unless --auth is given; on any other address it needs
    --auth (or --insecure) and exits 2 otherwise. In every mode it refuses changes
    requested by another site's web page.
    """
    from tidemill.controller.reconciler import ControllerConfig
    from tidemill.server.connections import ConnectionBounds
    from tidemill.server.limits import Limits
    from tidemill.server.origins import UnusableHostName
    from tidemill.server.runner import InsecureServer, ServerRunner

    options = engine_options(
        engine,
        namespace,
        default_image,
        kubeconfig,
        kube_context,
        gang_scheduler,
        gpu_sharing,
        extended_resource,
        network_policy,
    )
    try:
        runner = ServerRunner(
            state_dir,
            cluster,
            host=host,
            port=port,
            store_url=store_url,
            auth=auth,
            insecure=insecure,
            engine=engine,
            engine_options=options,
            advertise_url=advertise_url,
            checkpoint_root=checkpoint_root,
            limits=Limits(metric_reports_per_job=metrics_history),
            allow_hosts=allow_host or (),
            connections=ConnectionBounds(max_connections) if max_connections else None,
            controller_config=ControllerConfig(max_jobs_per_namespace=max_jobs_per_namespace),
        )
    except (InsecureServer, UnusableHostName) as exc:
        fail(str(exc), code=EXIT_INVALID)
    except (OSError, RuntimeError) as exc:
        fail(str(exc))
    if auth:
        mode = "auth on"
    elif runner.own_user is not None:
        mode = f"auth OFF: open to its own user (uid {runner.own_user}) only"
    else:
        mode = "auth OFF: every caller may do anything"
    say(f"tidemill server on {runner.url} ({mode}; state in {state_dir}); Ctrl-C stops it")
    for warning in runner.warnings:
        say(f"warning: {warning}")
    if runner.admin_token_file is not None:
        say(
            f"admin token written to {runner.admin_token_file} (mode 0600); use it with "
            f"`export TIDEMILL_TOKEN=$(cat {runner.admin_token_file})`"
        )
    try:
        runner.serve_forever()
    except (OSError, RuntimeError) as exc:
        fail(str(exc))


@reports_errors
def run(
    file: Annotated[Path, typer.Argument(help="Job file to run on this machine; - for stdin.")],
    cluster: ClusterOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Keep state here (default: a temporary folder); the same job file run "
            "again on it resumes the job if it did not finish.",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary state folder (logs, database).")
    ] = False,
    oversubscribe: Annotated[
        bool,
        typer.Option(
            "--oversubscribe",
            help="Run a job larger than this machine anyway: its replicas share the machine "
            "(a Warning event says by how much).",
        ),
    ] = False,
    engine: EngineOption = DEFAULT_ENGINE,
) -> None:
    """Run one job on an embedded server and stream its logs and events to the end."""
    job = load_job_file(file)
    if job.spec.suspend:
        fail(
            "spec.suspend: a suspended job waits for `tidemill resume`, and the server of "
            "`tidemill run` lives only as long as the run; submit it to a server "
            "(`tidemill submit`), or drop the field",
            code=EXIT_INVALID,
        )
    if oversubscribe and cluster is not None:
        fail("--oversubscribe enlarges this machine; leave out --cluster", code=EXIT_INVALID)
    enlarged = _fit_this_machine(job, oversubscribe) if cluster is None else None
    from tidemill.server.runner import ServerRunner

    with ExitStack() as stack:
        stack.enter_context(_terminate_as_interrupt())
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="tidemill-run-"))
            if keep:
                stack.callback(say, f"state kept in {state_dir}")
            else:
                stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
        if enlarged is not None:
            cluster = _cluster_file(state_dir, enlarged.node)
        try:
            runner = ServerRunner(
                state_dir, cluster, port=0, engine=engine, engine_options=_engine_options(engine)
            )
        except RuntimeError as exc:
            fail(str(exc))
        stop_server = OnceStop(runner.stop)
        stack.callback(stop_server)
        try:
            plan = takeover(runner.store, job, state_dir)
        except CannotResume as exc:
            stop_server()
            fail(exc.message, exc.lines())
        try:
            url = runner.start()
        except RuntimeError as exc:
            fail(str(exc))
        say(
            f"tidemill server on {url}: dashboard {url}/, API docs {url}/docs; state in {state_dir}"
        )
        for warning in runner.warnings:
            say(f"warning: {warning}")
        for warning in missing_scripts(job):
            say(f"warning: {file}: {warning}")
        client = stack.enter_context(Client(url))
        if plan is Takeover.RESUME:
            view = client.get(job.metadata.name, job.metadata.namespace)
            say(f"resuming job {view.namespace}/{view.name} ({view.phase}) from {state_dir}")
            if view.phase is JobPhase.SUSPENDED:  # suspended through this run's server
                view = client.resume(view.name, view.namespace)
        else:
            if plan is Takeover.SUBMIT_AFTER_DELETION:
                say(f"waiting for job {job.key}, deleted by an earlier run, to be gone")
                _wait_deleted(client, job)
            view = client.submit(job)
        key = f"{view.namespace}/{view.name}"
        if enlarged is not None and plan is not Takeover.RESUME:
            with runner.store.transaction() as tx:
                tx.add_event(key, "Oversubscribed", enlarged.message, warning=True)
        sink = progress_sink(view)
        progress = JobProgress(client, view, sink, poll_s=0.25)
        try:
            with sink:
                final = progress.follow()
        except KeyboardInterrupt:
            say(f"interrupted: deleting job {view.namespace}/{view.name}")
            with shielded():
                now = time.monotonic()
                deadline = now + interrupt.BUDGET_S
                stop_job(url, progress.view, now + interrupt.GRACE_S, deadline)
                stop_server(deadline)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        print_outcome(final)
    if final.phase is not JobPhase.SUCCEEDED:
        raise typer.Exit(EXIT_FAILURE)


def _fit_this_machine(job: TrainingJob, oversubscribe: bool) -> Oversubscription | None:
    """Refuse (exit 2) a gang this machine can never hold, unless told to oversubscribe;
    then return the machine enlarged to the gang."""
    machine = this_machine()
    if oversubscribe:
        return admission.oversubscribe(machine, job)
    problems = admission.capacity_problems(job, [machine])
    if problems:
        fail_invalid(
            "the job can never run on this machine; `tidemill run --oversubscribe` runs it "
            "anyway, with its replicas sharing the machine",
            problems,
        )
    return None


DELETION_WAIT_S = 60.0
"""How long ``run`` waits for an earlier run's job deletion to finish (seconds, normally)."""


def _wait_deleted(client: Client, job: TrainingJob) -> None:
    """Return once the job of ``job``'s name is gone; exit 1 if it stays."""
    deadline = time.monotonic() + DELETION_WAIT_S
    while time.monotonic() < deadline:
        try:
            client.get(job.metadata.name, job.metadata.namespace)
        except NotFound:
            return
        time.sleep(0.2)
    fail(f"job {job.key} is still being deleted after {DELETION_WAIT_S:g}s; try again later")


def _engine_options(engine: str) -> dict[str, object]:
    """Local replicas stop when ``run`` ends, however it ends: no later control plane
    takes over a ``run``'s jobs, so after a ``kill -9`` nothing else would stop them.
    A job ``run`` deletes (Ctrl-C) keeps its logs: the state folder is the user's (and a
    temporary one goes whole at the end)."""
    return {"tethered": True, "keep_files": True} if engine == "local" else {"keep_files": True}


def _cluster_file(state_dir: Path, node: NodeSpec) -> Path:
    """The embedded server's cluster: this one (enlarged) node."""
    path = state_dir / "oversubscribed-cluster.json"
    cluster = ClusterSpec(nodes=[node]).model_dump(mode="json", by_alias=True, exclude_none=True)
    path.write_text(json.dumps(cluster))
    return path


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C, so a killed `run` leaves no replicas behind, and
    from the moment it makes its state folder, no folder either."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["run", "server"]
