"""How the Kubernetes engine talks to its cluster: ``tidemill server --engine kubernetes``.

Fractional GPUs need a sharing device plugin; :data:`GPU_SHARING` maps a replica's
share of one device to that plugin's resources:

- ``hami`` (Project-HAMi): ``nvidia.com/gpu: 1`` plus ``nvidia.com/gpucores`` and
  ``nvidia.com/gpumem-percentage`` = the share in percent;
- ``time-slicing`` (NVIDIA's device plugin with ``renameByDefault``):
  ``nvidia.com/gpu.shared: 1`` (the plugin's replicas decide the share, not tidemill);
- ``none``: a fractional GPU is refused at submit.
Whole GPUs are always ``nvidia.com/gpu: N``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tidemill.api.extended import name_problem

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_SERVER_URL = "http://tidemill.tidemill-system.svc:8500"
"""Where pods reach the server deployed by deploy/kubernetes (``--advertise-url``)."""
GPU_SHARING = ("hami", "time-slicing", "none")
GANG_SCHEDULERS = ("tidemill", "volcano")


class KubernetesOptionError(ValueError):
    """An engine option has a value the engine cannot use; the message names it."""


@dataclass(frozen=True)
class KubernetesOptions:
    kubeconfig: str | None = None
    """a kubeconfig file; None: in-cluster (service account), else ``$KUBECONFIG`` or
    ``~/.kube/config``"""
    context: str | None = None
    namespaces: tuple[str, ...] = ()
    """the Kubernetes namespaces (= tidemill namespaces) jobs may use; empty: any"""
    default_image: str | None = None
    """the image of roles that name none (and of the job master)"""
    gang_scheduler: str = "tidemill"
    """``tidemill`` binds pods itself; ``volcano`` emits a PodGroup and leaves binding
    to a Volcano scheduler running in the cluster"""
    gpu_sharing: str = "hami"
    gpu_product_label: str = "nvidia.com/gpu.product"
    """the node label naming its GPU model (set by NVIDIA's GPU feature discovery)"""
    master_cpu: str = "100m"
    master_memory: str = "256Mi"
    """what the per-job master pod requests"""
    image_pull_policy: str = "IfNotPresent"
    request_timeout_s: float = 10.0
    network_policy: bool = True
    """one NetworkPolicy per job: its pods accept connections only from the job's own
    pods (enforced by the cluster's network plugin, where it implements NetworkPolicy)"""
    labels: dict[str, str] = field(default_factory=dict)
    """extra labels on every object the engine makes"""
    extended_resources: tuple[str, ...] = ()
    """extended resources (``rdma/hca``) the inventory counts per node, besides cpu,
    memory and ``nvidia.com/gpu``; a job may only ask for these"""

    def __post_init__(self) -> None:
        if self.gang_scheduler not in GANG_SCHEDULERS:
            raise KubernetesOptionError(
                f"gang scheduler {self.gang_scheduler!r}: expected one of "
                f"{', '.join(GANG_SCHEDULERS)}"
            )
        for name in self.extended_resources:
            problem = name_problem(name)
            if problem is not None:
                raise KubernetesOptionError(f"extended resource {problem}")
        if self.gpu_sharing not in GPU_SHARING:
            raise KubernetesOptionError(
                f"GPU sharing {self.gpu_sharing!r}: expected one of {', '.join(GPU_SHARING)}"
            )
