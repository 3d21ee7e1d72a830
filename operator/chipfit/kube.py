"""The only module that talks to the Kubernetes API (kopf's own watches aside).

Server-side apply with field manager "chipfit", deletes, status patches, Events, and the lists the
fleet re-plan reads. Errors come back as `ApiError` with `transient` set for conflicts, throttling and
server errors (callers retry those) and clear for the rest.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
from collections.abc import Iterator, Mapping
from typing import Any, Final

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from chipfit.api import v1alpha1

FIELD_MANAGER: Final = "chipfit"
REPORTING_COMPONENT: Final = "chipfit-operator"
# HTTP statuses worth retrying: conflict, throttling, and the server's own failures.
TRANSIENT_STATUSES: Final = frozenset({409, 429, 500, 502, 503, 504})
# Cluster-scoped objects (AcceleratorPools) get their Events in this namespace, as kubectl describe expects.
CLUSTER_EVENTS_NAMESPACE: Final = "default"
# Bound on one API call; the apiserver answers in milliseconds, a hung connection must not hang a reconcile.
REQUEST_TIMEOUT_S: Final = 30


class ApiError(Exception):
    """A failed API call: what was attempted, the HTTP status, and whether a retry may succeed."""

    def __init__(self, action: str, status: int | None, reason: str) -> None:
        super().__init__(f"{action}: {status or 'no response'} {reason}")
        self.status = status
        self.transient = status is None or status in TRANSIENT_STATUSES


@dataclasses.dataclass(frozen=True)
class Kinds:
    """apiVersion and kind of everything chipfit reads or writes."""

    deployment: tuple[str, str] = ("apps/v1", "Deployment")
    service: tuple[str, str] = ("v1", "Service")
    node: tuple[str, str] = ("v1", "Node")
    pod: tuple[str, str] = ("v1", "Pod")
    event: tuple[str, str] = ("v1", "Event")
    inference_service: tuple[str, str] = (v1alpha1.API_VERSION, "InferenceService")
    pool: tuple[str, str] = (v1alpha1.API_VERSION, "AcceleratorPool")
    profile: tuple[str, str] = (v1alpha1.API_VERSION, "PerformanceProfile")
    profiling_run: tuple[str, str] = (v1alpha1.API_VERSION, "ProfilingRun")
    job: tuple[str, str] = ("batch/v1", "Job")


KINDS: Final = Kinds()


def new_api_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """An ApiClient from the in-cluster service account, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is not None:
            raise kubernetes.config.ConfigException("kubeconfig given")
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return kubernetes.client.ApiClient(configuration)


def _call(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one API call, turning client exceptions into ApiError."""
    try:
        return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    except DynamicApiError as exc:
        raise ApiError(action, exc.status, str(exc.reason)) from None
    except kubernetes.client.ApiException as exc:
        raise ApiError(action, exc.status, str(exc.reason)) from None
    except (OSError, kubernetes.client.exceptions.OpenApiException) as exc:
        raise ApiError(action, None, str(exc)) from None


class Kube:
    """Typed access to the cluster for the operator."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        """Wrap an ApiClient; discovery happens lazily, once per kind."""
        self.api_client = api_client
        self._dynamic: DynamicClient | None = None

    @property
    def dynamic(self) -> DynamicClient:
        """The dynamic client (created on first use: its discovery calls the API server)."""
        if self._dynamic is None:
            try:
                self._dynamic = DynamicClient(self.api_client)
            except DynamicApiError as exc:
                raise ApiError("discovery", exc.status, str(exc.reason)) from None
        return self._dynamic

    @functools.cache  # noqa: B019  (one Kube per process; the cache lives as long as the client)
    def _resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except DynamicApiError as exc:
            raise ApiError(f"discover {kind}", exc.status, str(exc.reason)) from None

    # --- reads -------------------------------------------------------------------------------------------

    def _list(
        self, kinds: tuple[str, str], namespace: str | None = None, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        resource = self._resource(*kinds)
        result = _call(f"list {kinds[1]}", resource.get, namespace=namespace, label_selector=label_selector)
        items: list[dict[str, Any]] = result.to_dict().get("items", [])
        for item in items:
            # List items carry no apiVersion/kind; typed parsing wants them.
            item.setdefault("apiVersion", kinds[0])
            item.setdefault("kind", kinds[1])
        return items

    def list_inference_services(self) -> list[dict[str, Any]]:
        """Every InferenceService in every namespace."""
        return self._list(KINDS.inference_service)

    def list_pools(self) -> list[dict[str, Any]]:
        """Every AcceleratorPool."""
        return self._list(KINDS.pool)

    def list_profiles(self) -> list[dict[str, Any]]:
        """Every PerformanceProfile."""
        return self._list(KINDS.profile)

    def list_nodes(self) -> list[dict[str, Any]]:
        """Every Node."""
        return self._list(KINDS.node)

    def list_owned(
        self, namespace: str, label_selector: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Deployments and Services in `namespace` matching a label selector."""
        return (
            self._list(KINDS.deployment, namespace, label_selector),
            self._list(KINDS.service, namespace, label_selector),
        )

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Pods in `namespace` matching a label selector."""
        return self._list(KINDS.pod, namespace, label_selector)

    def get_inference_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One InferenceService, None when it is gone."""
        resource = self._resource(*KINDS.inference_service)
        try:
            result = _call("get InferenceService", resource.get, name=name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = result.to_dict()
        return body

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Job, None when it is gone."""
        resource = self._resource(*KINDS.job)
        try:
            result = _call("get Job", resource.get, name=name, namespace=namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        body: dict[str, Any] = result.to_dict()
        return body

    # --- writes ------------------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> None:
        """Server-side apply as field manager "chipfit", taking over fields others set (force)."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        _call(
            f"apply {obj['kind']} {meta.get('namespace', '')}/{meta['name']}",
            resource.server_side_apply,
            body=dict(obj),
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete one object (its dependents in the background); False when it was already gone."""
        resource = self._resource(api_version, kind)
        try:
            _call(
                f"delete {kind} {namespace or ''}/{name}",
                resource.delete,
                name=name,
                namespace=namespace,
                body={"propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def patch_status(
        self,
        kinds: tuple[str, str],
        namespace: str | None,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch the status subresource (null values remove fields).

        With `resource_version`, the patch applies only to that version of the object (else 409 Conflict):
        a writer that read the status earlier cannot overwrite what another wrote since.
        """
        resource = self._resource(*kinds)
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        _call(
            f"patch {kinds[1]} {namespace or ''}/{name} status",
            resource.status.patch,
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
        )

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about `involved` (an object body), shown by kubectl describe."""
        meta = involved["metadata"]
        namespace = meta.get("namespace") or CLUSTER_EVENTS_NAMESPACE
        now = datetime.datetime.now(datetime.UTC)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "count": 1,
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": REPORTING_COMPONENT,
        }
        resource = self._resource(*KINDS.event)
        _call(f"post Event {reason}", resource.create, body=body, namespace=namespace)


def iter_conditions(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """status.conditions of any object, or nothing."""
    yield from (obj.get("status") or {}).get("conditions") or ()
