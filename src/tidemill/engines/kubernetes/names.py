"""Names and labels of the objects the Kubernetes engine makes: one definition.

A replica's pod is named per launch (a restarted replica is a new pod, so the old one
can still be terminating), while its ``hostname`` under the job's headless Service is
stable: ``MASTER_ADDR`` and ``TIDEMILL_MASTER_ADDR`` resolve to whichever pod is the
replica now, and exist before any pod is ready.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "tidemill.io"
VERSION = "v1"
PLURAL = "trainingjobs"
KIND = "TrainingJob"
API_VERSION = f"{GROUP}/{VERSION}"
SCHEDULER_NAME = "tidemill"

MANAGED_BY = "app.kubernetes.io/managed-by"
JOB_LABEL = "tidemill.io/job-name"
UID_LABEL = "tidemill.io/job-uid"
ROLE_LABEL = "tidemill.io/role"
INDEX_LABEL = "tidemill.io/index"
LAUNCH_LABEL = "tidemill.io/launch-id"
UID_ANNOTATION = "tidemill.io/uid"
"""On a TrainingJob object: the tidemill job it is (set once the job is in the store)."""
SUSPEND_ANNOTATION = "tidemill.io/suspend-followed"
"""On a TrainingJob object: the ``spec.suspend`` ("true" or "false") tidemill last
applied to its job. A change of the field (``kubectl patch``) is applied once; a suspend
or resume made through tidemill is not undone by the object's older value, not even
after a restart."""
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
CPUSET_ANNOTATION = "tidemill.io/numa-cpus"
"""The CPUs of the NUMA node tidemill placed the pod's GPUs beside (a Linux CPU list).

Kubernetes has no field that pins a container to given CPUs: the kubelet picks them.
On a node whose kubelet runs ``cpuManagerPolicy: static`` and ``topologyManagerPolicy:
single-numa-node`` (or ``restricted``), a Guaranteed pod with whole cpus (tidemill
sets requests equal to limits) gets exclusive CPUs and its GPUs on one NUMA node; this
annotation records what tidemill planned, for a node agent or a person to compare."""

TOKEN_KEY = "token"
"""Key of the job credential in the job's Secret."""

_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]")


def split_key(job: str) -> tuple[str, str]:
    """``namespace/name`` -> (namespace, name)."""
    namespace, _, name = job.partition("/")
    return namespace, name


def _digest(text: str, size: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def dns_label(text: str, must_start_alpha: bool = False) -> str:
    """``text`` as a DNS label (lowercase, ``-``, at most 63): cut with a digest when long.

    >>> dns_label("digits-ddp-worker-0")
    'digits-ddp-worker-0'
    >>> len(dns_label("x" * 80))
    63
    """
    label = _INVALID.sub("-", text.lower()).strip("-") or "x"
    if must_start_alpha and not label[0].isalpha():
        label = f"tj-{label}"
    if len(label) <= _LABEL:
        return label
    return f"{label[: _LABEL - 7].rstrip('-')}-{_digest(text)}"


def service_name(job: str) -> str:
    """The job's headless Service (a DNS-1035 label: it starts with a letter)."""
    return dns_label(split_key(job)[1], must_start_alpha=True)


def hostname(job: str, role: str, index: int) -> str:
    """The replica's stable hostname under the job's Service."""
    return dns_label(f"{split_key(job)[1]}-{role}-{index}")


def pod_name(job: str, role: str, index: int, launch_id: str) -> str:
    """One pod per launch: the hostname plus a digest of the launch id.

    >>> pod_name("ads/ctr", "worker", 0, "l-1")
    'ctr-worker-0-...'
    """
    stem = hostname(job, role, index)[: _LABEL - 7].rstrip("-")
    return f"{stem}-{_digest(launch_id)}"


def replica_dns(job: str, role: str, index: int) -> str:
    """``hostname.service.namespace.svc``: resolvable once the pod has an address."""
    namespace = split_key(job)[0]
    return f"{hostname(job, role, index)}.{service_name(job)}.{namespace}.svc"


def secret_name(job: str) -> str:
    return dns_label(f"{split_key(job)[1]}-tidemill-token")


def label_value(text: str) -> str:
    """A label value (at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:_LABEL].strip("-._")
    return value or "x"


def flag(value: bool) -> str:
    """A boolean as an annotation holds it."""
    return "true" if value else "false"
