"""Thin calls to the Kubernetes API: create a rendered RayJob, read its status, stream its logs.

Everything else (what the RayJob contains) is :mod:`eoforge.k8s.render`'s. API errors become
:class:`~eoforge.errors.ServiceError` with what failed, where, and how to fix it: no
kubeconfig, the KubeRay CRDs not installed, a missing or forbidden namespace, a name taken.
The ``kubernetes`` package is imported inside the functions (it is slow to import).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eoforge.errors import ServiceError
from eoforge.k8s.render import RenderedJob

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
JSON = {"Content-Type": "application/json"}  # sent explicitly: the client leaves it out of JSON bodies
TERMINAL = {"Complete", "Failed", "ValidationFailed"}  # RayJob .status.jobDeploymentStatus
KUBERAY_INSTALL = (
    "install the KubeRay operator: helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && "
    "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0 -n kuberay-system --create-namespace"
)


def api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An API client from a kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``).

    Inside a pod with no kubeconfig, the pod's service account is used.

    Raises:
        ServiceError: no kubeconfig, or one that cannot be loaded (bad file, unknown context).
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    files = [Path(p).expanduser() for p in source.split(os.pathsep) if p]
    if not any(f.is_file() for f in files):
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        raise ServiceError(
            f"Kubernetes: no kubeconfig at {source}: get credentials first "
            "(GKE: gcloud container clusters get-credentials CLUSTER --region REGION; "
            "EKS: aws eks update-kubeconfig --name CLUSTER; kind: kind export kubeconfig), "
            "or pass --kubeconfig PATH"
        )
    try:
        return config.new_client_from_config(config_file=source, context=context, persist_config=False)
    except ConfigException as exc:
        where = f"{source}" + (f" (context {context!r})" if context else "")
        raise ServiceError(f"Kubernetes: cannot use kubeconfig {where}: {exc}") from None


class ApiCallError(ServiceError):
    """A ServiceError from an API response; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int | None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details or {}


def _status_body(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _api_error(exc: Any, action: str, namespace: str) -> ApiCallError:
    """Turn an ApiException into an error that says what to do."""
    body = _status_body(exc)
    status, details = exc.status, body.get("details") or {}
    message = body.get("message") or (exc.body or exc.reason or "").strip()
    kind = details.get("kind")
    prefix = f"Kubernetes: {action} in namespace {namespace!r}"
    if status == 401:
        msg = f"{prefix}: unauthorized ({message}); refresh your cluster credentials"
    elif status == 403:
        msg = (
            f"{prefix}: forbidden: {message}. Ask for the Role eoforge-submitter (k8s/base/rbac.yaml) "
            f"bound to you in {namespace!r}, or pass --namespace with one you may use"
        )
    elif status == 404 and kind == "namespaces":
        msg = (
            f"{prefix}: namespace {namespace!r} does not exist; apply the manifests first "
            "(kubectl apply -k k8s/overlays/<overlay>) or pass --namespace"
        )
    elif status == 404 and not body:  # no Status object: the API group itself is not served
        msg = f"{prefix}: the cluster does not serve {GROUP}/{VERSION} RayJobs; {KUBERAY_INSTALL}"
    else:
        msg = f"{prefix}: HTTP {status} {exc.reason}: {message}"
    return ApiCallError(msg, status, details)


def _call(fn: Callable[..., Any], action: str, namespace: str, *args: Any, **kwargs: Any) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise _api_error(exc, action, namespace) from None
    except HTTPError as exc:
        raise ServiceError(f"Kubernetes: {action}: cannot reach the API server: {exc}") from None


def submit(job: RenderedJob, api: ApiClient, namespace: str | None = None) -> dict[str, Any]:
    """Create the ConfigMaps the RayJob mounts (unless present) and then the RayJob.

    ConfigMap names carry a content hash, so an existing one has the same content.

    Returns:
        The created RayJob as the API server returned it.

    Raises:
        ServiceError: see :func:`_api_error`; also when the RayJob name is taken.
    """
    from kubernetes import client

    ns = namespace or job.namespace
    core = client.CoreV1Api(api)
    for configmap in job.configmaps:
        body = copy.deepcopy(configmap)
        body["metadata"]["namespace"] = ns
        try:
            action = f"create ConfigMap {body['metadata']['name']}"
            _call(core.create_namespaced_config_map, action, ns, ns, body, _headers=JSON)
        except ApiCallError as err:
            if err.status != 409:
                raise
    rayjob = copy.deepcopy(job.rayjob)
    rayjob["metadata"]["namespace"] = ns
    action = f"create RayJob {job.name}"
    custom = client.CustomObjectsApi(api)
    try:
        return _call(
            custom.create_namespaced_custom_object,
            action,
            ns,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            rayjob,
            _headers=JSON,
        )
    except ApiCallError as err:
        if err.status == 409:
            raise ServiceError(
                f"Kubernetes: RayJob {ns}/{job.name} already exists. To run it again (it resumes from its "
                f"last checkpoint): kubectl -n {ns} delete rayjob {job.name}, then submit again; "
                "for a new run, change run.name"
            ) from None
        raise


def get_rayjob(api: ApiClient, name: str, namespace: str) -> dict[str, Any]:
    """The RayJob object.

    Raises:
        ServiceError: it does not exist, the CRD is missing, or access is denied.
    """
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    try:
        return _call(
            custom.get_namespaced_custom_object,
            f"get RayJob {name}",
            namespace,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )
    except ApiCallError as err:
        if err.status == 404 and err.details.get("kind") == PLURAL:
            raise ServiceError(
                f"Kubernetes: RayJob {namespace}/{name} not found (kubectl -n {namespace} get rayjobs)"
            ) from None
        raise


def summarize(rayjob: dict[str, Any]) -> dict[str, Any]:
    """The fields of a RayJob's status a person looks at."""
    status = rayjob.get("status") or {}
    meta = rayjob.get("metadata") or {}
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "deployment": status.get("jobDeploymentStatus", "Pending"),
        "job": status.get("jobStatus", ""),
        "ray_cluster": status.get("rayClusterName", ""),
        "dashboard": status.get("dashboardURL", ""),
        "job_id": status.get("jobId", ""),
        "start": status.get("startTime", ""),
        "end": status.get("endTime", ""),
        "attempts_failed": status.get("failed", 0),
        "message": status.get("message", ""),
    }


def wait_for(
    api: ApiClient,
    name: str,
    namespace: str,
    timeout_s: float,
    on_change: Callable[[dict[str, Any]], None],
    poll_s: float = 5.0,
) -> dict[str, Any]:
    """Poll until the RayJob's deployment status is terminal; report each change.

    Raises:
        ServiceError: not terminal after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    last: tuple[Any, ...] = ()
    while True:
        summary = summarize(get_rayjob(api, name, namespace))
        key = (summary["deployment"], summary["job"], summary["message"])
        if key != last:
            on_change(summary)
            last = key
        if summary["deployment"] in TERMINAL:
            return summary
        if time.monotonic() >= deadline:
            raise ServiceError(f"RayJob {namespace}/{name}: still {summary['deployment']} after {timeout_s:g} s")
        time.sleep(poll_s)


def stream_logs(api: ApiClient, name: str, namespace: str, write: Callable[[str], None], follow: bool = True) -> str:
    """Write the log of the RayJob's submitter pod (it relays the Ray job driver's output).

    Returns:
        The pod read.

    Raises:
        ServiceError: no submitter pod yet (the Ray head is not ready), or API errors.
    """
    from kubernetes import client

    core = client.CoreV1Api(api)
    selector = f"batch.kubernetes.io/job-name={name}"
    pods = _call(
        core.list_namespaced_pod, f"list pods of RayJob {name}", namespace, namespace, label_selector=selector
    ).items
    if not pods:
        state = summarize(get_rayjob(api, name, namespace))["deployment"]
        raise ServiceError(
            f"RayJob {namespace}/{name} ({state}): no submitter pod yet; it starts once the Ray head is ready "
            f"(eoforge k8s status {name} --wait)"
        )
    pod = max(pods, key=lambda p: str(p.metadata.creation_timestamp or "")).metadata.name
    resp = _call(
        core.read_namespaced_pod_log,
        f"read the log of pod {pod}",
        namespace,
        pod,
        namespace,
        follow=follow,
        _preload_content=False,
    )
    for chunk in resp.stream(4096):
        write(chunk.decode("utf-8", errors="replace"))
    return pod
