"""One connection to the Kubernetes API: the official client, raw JSON, bounded retries.

Objects travel as plain dicts (``_preload_content=False``): the engine reads a few
fields of thousands of pods, and the client's model classes would cost more than the
HTTP. A call that meets a 5xx, a 429 or a broken connection is retried with backoff a
few times, then raises :class:`ClusterUnavailable`; the last failure is kept for
``/healthz`` until a call succeeds again. 4xx answers are the caller's to handle.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tidemill.engines.kubernetes.options import KubernetesOptions

API_CALLS: dict[tuple[str, str], frozenset[str]] = {
    ("", "nodes"): frozenset({"list", "watch"}),
    ("", "pods"): frozenset({"get", "list", "watch", "create", "delete"}),
    ("", "pods/binding"): frozenset({"create"}),
    ("", "pods/log"): frozenset({"get"}),
    ("", "pods/exec"): frozenset({"get", "create"}),
    ("", "services"): frozenset({"create"}),
    ("", "secrets"): frozenset({"create"}),
    ("networking.k8s.io", "networkpolicies"): frozenset({"create"}),
    ("tidemill.io", "trainingjobs"): frozenset(
        {"get", "list", "watch", "create", "patch", "delete"}
    ),
    ("tidemill.io", "trainingjobs/status"): frozenset({"patch"}),
    ("scheduling.volcano.sh", "podgroups"): frozenset({"create"}),
    ("metrics.k8s.io", "pods"): frozenset({"list"}),
}
"""(API group, resource) -> the verbs the engine uses: deploy/kubernetes/clusterrole.yaml
grants exactly these, and the tests check every call the engine makes against them."""
RETRY_DELAYS_S = (0.1, 0.3, 1.0)
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class ClusterUnavailable(RuntimeError):
    """The API server did not answer, or answered 5xx, after retries."""


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (None: no answer at all)."""
    return exc.status if isinstance(exc, ApiException) else None


def load_client(options: KubernetesOptions) -> client.ApiClient:
    """In-cluster when no kubeconfig is given and a service account is mounted; else
    the kubeconfig (``options.kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``)."""
    configuration = client.Configuration()
    if options.kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except config.ConfigException:
            pass
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=options.kubeconfig,
        context=options.context,
        client_configuration=configuration,
    )
    return client.ApiClient(configuration)


class Cluster:
    """Typed entry points (core, custom objects) that return JSON and retry."""

    def __init__(self, options: KubernetesOptions, api_client: client.ApiClient | None = None):
        self.options = options
        self.api_client = api_client or load_client(options)
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.networking = client.NetworkingV1Api(self.api_client)
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._problem_since: float | None = None

    def problem(self) -> str | None:
        """Why the API server cannot be used now (for ``/healthz``), or None."""
        with self._lock:
            if self._problem is None or self._problem_since is None:
                return None
            since = time.time() - self._problem_since
            return f"Kubernetes API unavailable for {since:.0f} s: {self._problem}"

    def _healthy(self) -> None:
        with self._lock:
            self._problem = self._problem_since = None

    def _failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self._problem = f"{what}: {_describe(exc)}"
            if self._problem_since is None:
                self._problem_since = time.time()

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)`` answered as JSON (None for an empty body)."""
        kwargs.setdefault("_request_timeout", self.options.request_timeout_s)
        kwargs["_preload_content"] = False
        delays = iter(RETRY_DELAYS_S)
        tries = 0
        while True:
            tries += 1
            try:
                body = method(*args, **kwargs).data
                self._healthy()
                return json.loads(body) if body else None
            except ApiException as exc:
                if exc.status not in RETRIED_STATUSES:
                    self._healthy()
                    raise
                failure: BaseException = exc
            except (HTTPError, OSError) as exc:
                failure = exc
            self._failed(what, failure)
            delay = next(delays, None)
            if delay is None:
                raise ClusterUnavailable(
                    f"{what}: {_describe(failure)} (after {tries} tries)"
                ) from failure
            time.sleep(delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
