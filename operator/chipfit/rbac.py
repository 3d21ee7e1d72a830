"""The operator's Kubernetes API access, declared once: the chart's ClusterRole must equal this table.

tests/unit/test_chart_rbac.py renders the chart and compares its ClusterRole with `OPERATOR_PERMISSIONS`;
the operator's own tests check that the code touches nothing outside it. Adding an API call to the
operator therefore means adding a row here, with the reason, and the same rule to the chart.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete"]

# Groups named once so the table reads as a list of reasons.
CORE: Final = ""
CHIPFIT: Final = "chipfit.io"
APPS: Final = "apps"
BATCH: Final = "batch"
KOPF: Final = "kopf.dev"
RBAC: Final = "rbac.authorization.k8s.io"
APIEXTENSIONS: Final = "apiextensions.k8s.io"

WATCH: Final[tuple[Verb, ...]] = ("list", "watch")
# Server-side apply is a PATCH, and also needs create when the object does not exist yet.
APPLY: Final[tuple[Verb, ...]] = ("create", "patch")

# When a permission is needed only with a chart feature on, the values key that turns it on.
Condition = Literal["leaderElection.enabled"]


@dataclasses.dataclass(frozen=True)
class Permission:
    """One ClusterRole rule: verbs on one resource of one API group, and why the operator needs them."""

    api_group: str
    resource: str
    verbs: tuple[Verb, ...]
    why: str
    only_when: Condition | None = None


OPERATOR_PERMISSIONS: Final[tuple[Permission, ...]] = (
    # chipfit's own resources: kopf lists and watches them and patches its annotations (progress, last
    # handled spec); the fleet re-plan lists them and reads one service by name.
    Permission(CHIPFIT, "inferenceservices", ("get", *WATCH, "patch"), "kopf handlers, fleet re-plan"),
    Permission(CHIPFIT, "inferenceservices/status", ("patch",), "placement, predictions, conditions"),
    Permission(CHIPFIT, "acceleratorpools", (*WATCH, "patch"), "kopf handlers, fleet re-plan"),
    Permission(CHIPFIT, "acceleratorpools/status", ("patch",), "nodes and devices seen, allocated"),
    # Profiles: watched for measured capacity; a finished ProfilingRun's result is applied as one.
    Permission(CHIPFIT, "performanceprofiles", (*WATCH, *APPLY), "measured capacity; profiling results"),
    Permission(CHIPFIT, "profilingruns", (*WATCH, "patch"), "kopf event handlers of profiling runs"),
    Permission(CHIPFIT, "profilingruns/status", ("patch",), "run phase, Job, profile, conditions"),
    # What a placement becomes: Deployments (watched to advance rollouts) and Services per role and pool,
    # applied server-side and deleted when a placement moves; both watched into kopf indexes, which
    # reconciles read instead of listing them per service.
    Permission(APPS, "deployments", (*WATCH, *APPLY, "delete"), "serving replicas; rollout progress"),
    Permission(CORE, "services", (*WATCH, *APPLY, "delete"), "stable endpoints per role for the router"),
    # A profiling run: one Job, watched and read back for its outcome.
    Permission(BATCH, "jobs", ("get", *WATCH, *APPLY), "profiling Jobs"),
    # A router that discovers its prefill and decode pods (SGLang) runs as its own ServiceAccount with a
    # Role to watch pods in its namespace; the API server lets the operator grant only what it holds
    # itself (RBAC escalation check), hence pods here too, which also quote the scheduler's reasons and
    # carry the profiler's result (its termination message).
    Permission(CORE, "serviceaccounts", APPLY, "identity of a pod-discovering router"),
    Permission(RBAC, "roles", APPLY, "a router's right to watch its service's pods"),
    Permission(RBAC, "rolebindings", APPLY, "binds that Role to the router's ServiceAccount"),
    Permission(CORE, "pods", ("get", *WATCH), "routers; scheduler reasons; profiler results"),
    # The fleet as it really is: ready, schedulable nodes and their allocatable devices.
    Permission(CORE, "nodes", WATCH, "pool capacity, cordons, node loss"),
    # Events explaining placements (chipfit.kube) and handler failures (kopf), both core/v1.
    Permission(CORE, "events", ("create",), "explain placements and failures"),
    # kopf itself: it watches CRDs to notice resources appearing or changing.
    Permission(APIEXTENSIONS, "customresourcedefinitions", WATCH, "kopf's resource scanning"),
    Permission(
        KOPF,
        "clusterkopfpeerings",
        (*WATCH, "patch"),
        "kopf peering: replicas heartbeat here; only the highest priority acts",
        only_when="leaderElection.enabled",
    ),
)


def permissions(enabled: frozenset[Condition] = frozenset()) -> tuple[Permission, ...]:
    """The rows that apply when the chart features in `enabled` are on."""
    return tuple(p for p in OPERATOR_PERMISSIONS if p.only_when is None or p.only_when in enabled)


def render_cluster_role_rules(enabled: frozenset[Condition] = frozenset()) -> list[dict[str, list[str]]]:
    """The ClusterRole `rules` for these permissions, one rule per row, verbs sorted."""
    return [
        {"apiGroups": [p.api_group], "resources": [p.resource], "verbs": sorted(p.verbs)}
        for p in permissions(enabled)
    ]
