"""The Kubernetes engine on the command line: ``tidemill server --engine kubernetes``
options, and ``tidemill manifests JOB.yaml`` (the objects it would create, offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tidemill.api.loader import load_job_file
from tidemill.cli.common import echo, fail, reports_errors
from tidemill.cli.exit_codes import EXIT_INVALID
from tidemill.client import normalise_url, server_url_problem

GangOption = Annotated[
    str,
    typer.Option(
        "--gang-scheduler",
        help="Kubernetes: 'tidemill' binds whole gangs itself; 'volcano' emits a PodGroup "
        "and leaves binding to Volcano.",
    ),
]
SharingOption = Annotated[
    str,
    typer.Option(
        "--gpu-sharing",
        help="Kubernetes: the device plugin fractional GPUs map to: hami, time-slicing, none.",
    ),
]
ImageOption = Annotated[
    str | None,
    typer.Option("--default-image", help="Kubernetes: the image of roles that name none."),
]
KubeNamespaceOption = Annotated[
    list[str] | None,
    typer.Option(
        "--namespace",
        help="Kubernetes: a namespace jobs may use (repeat for more; default: any).",
    ),
]
KubeconfigOption = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        help="Kubernetes: a kubeconfig (default: in-cluster, else $KUBECONFIG or ~/.kube/config).",
    ),
]
ContextOption = Annotated[
    str | None, typer.Option("--kube-context", help="Kubernetes: the kubeconfig context.")
]
ExtendedOption = Annotated[
    list[str] | None,
    typer.Option(
        "--extended-resource",
        help="Kubernetes: an extended resource to count per node, e.g. rdma/hca "
        "(repeat for more; cpu, memory and nvidia.com/gpu are always counted).",
    ),
]
NetworkPolicyOption = Annotated[
    bool,
    typer.Option(
        "--network-policy/--no-network-policy",
        help="Kubernetes: one NetworkPolicy per job, so that its pods accept connections "
        "only from the job's own pods (PyTorch's rendezvous store authenticates no peer).",
    ),
]


def _checked_advertise_url(value: str | None) -> str | None:
    """Every replica is told this URL: one it cannot use would fail them all, later.
    ``host:port`` means ``http://host:port``, as for ``--server``."""
    if value is None:
        return None
    url = normalise_url(value)
    problem = server_url_problem(url)
    if problem is not None:
        raise typer.BadParameter(
            f"{value!r} is not a server URL ({problem}); e.g. "
            "http://tidemill.tidemill-system.svc:8500"
        )
    return url


AdvertiseOption = Annotated[
    str | None,
    typer.Option(
        "--advertise-url",
        help="The URL replicas reach this server by (default: its own; on Kubernetes, its "
        "Service, e.g. http://tidemill.tidemill-system.svc:8500).",
        callback=_checked_advertise_url,
    ),
]


def engine_options(
    engine: str,
    namespaces: list[str] | None,
    default_image: str | None,
    kubeconfig: str | None,
    context: str | None,
    gang_scheduler: str,
    gpu_sharing: str,
    extended_resources: list[str] | None = None,
    network_policy: bool = True,
) -> dict[str, Any]:
    """The engine's constructor options; Kubernetes ones given to another engine are refused."""
    from tidemill.engines.kubernetes.options import KubernetesOptionError, KubernetesOptions

    given = {
        "--namespace": namespaces,
        "--default-image": default_image,
        "--kubeconfig": kubeconfig,
        "--kube-context": context,
        "--gang-scheduler": None if gang_scheduler == "tidemill" else gang_scheduler,
        "--gpu-sharing": None if gpu_sharing == "hami" else gpu_sharing,
        "--extended-resource": extended_resources,
        "--no-network-policy": not network_policy,
    }
    if engine != "kubernetes":
        extra = [name for name, value in given.items() if value]
        if extra:
            fail(f"{', '.join(extra)}: only with --engine kubernetes", code=EXIT_INVALID)
        return {}
    try:
        options = KubernetesOptions(
            kubeconfig=kubeconfig,
            context=context,
            namespaces=tuple(namespaces or ()),
            default_image=default_image,
            gang_scheduler=gang_scheduler,
            gpu_sharing=gpu_sharing,
            extended_resources=tuple(dict.fromkeys(extended_resources or ())),
            network_policy=network_policy,
        )
    except KubernetesOptionError as exc:
        fail(str(exc), code=EXIT_INVALID)
    return {"options": options}


@reports_errors
def manifests(
    file: Annotated[Path, typer.Argument(help="The job file; - for stdin.")],
    default_image: ImageOption = None,
    gang_scheduler: GangOption = "tidemill",
    gpu_sharing: SharingOption = "hami",
    network_policy: NetworkPolicyOption = True,
    output: Annotated[
        str, typer.Option("--output", "-o", help="yaml (one document per object) or json.")
    ] = "yaml",
) -> None:
    """Print the Kubernetes objects the engine would create for JOB.yaml (no cluster needed).

    Pods are shown unbound: tidemill binds each to the node its scheduler picks.
    """
    from tidemill.engines.kubernetes.options import KubernetesOptionError, KubernetesOptions
    from tidemill.engines.kubernetes.plan import job_manifests

    if output not in ("yaml", "json"):
        fail(f"--output: {output!r} is not yaml or json", code=EXIT_INVALID)
    job = load_job_file(file)
    try:
        options = KubernetesOptions(
            default_image=default_image,
            gang_scheduler=gang_scheduler,
            gpu_sharing=gpu_sharing,
            network_policy=network_policy,
        )
        objects = job_manifests(job, options)
    except (KubernetesOptionError, ValueError) as exc:
        fail(str(exc), code=EXIT_INVALID)
    if output == "json":
        echo(json.dumps(objects, indent=2))
    else:
        echo(yaml.safe_dump_all(objects, sort_keys=False).rstrip())
