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
EVENTS: Final = "events.k8s.io"
KOPF: Final = "kopf.dev"
APIEXTENSIONS: Final = "apiextensions.k8s.io"

READ: Final[tuple[Verb, ...]] = ("get", "list", "watch")
# Server-side apply is a PATCH; create covers the first apply of an object kopf has not seen yet.
OWN: Final[tuple[Verb, ...]] = ("get", "list", "watch", "create", "patch", "delete")

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
    # chipfit's own resources: kopf watches them and patches finalizers and its progress annotations.
    Permission(CHIPFIT, "inferenceservices", ("get", "list", "watch", "patch"), "watch services, finalizers"),
    Permission(CHIPFIT, "inferenceservices/status", ("get", "patch"), "write placement and conditions"),
    Permission(CHIPFIT, "acceleratorpools", ("get", "list", "watch", "patch"), "watch the fleet, finalizers"),
    Permission(CHIPFIT, "acceleratorpools/status", ("get", "patch"), "write nodes/devices seen, allocated"),
    Permission(CHIPFIT, "performanceprofiles", ("get", "list", "watch", "patch"), "read measured profiles"),
    Permission(CHIPFIT, "performanceprofiles/status", ("get", "patch"), "report whether a profile is used"),
    # What a placement becomes: one Deployment and one Service per (service, role, pool).
    Permission(APPS, "deployments", OWN, "serving replicas (server-side apply, drain old placements)"),
    Permission(CORE, "services", OWN, "stable endpoints per role for the router and users"),
    # The fleet as it really is.
    Permission(CORE, "nodes", READ, "pool capacity: allocatable extended resources, cordons"),
    Permission(CORE, "pods", ("list", "watch"), "ready replicas and where the scheduler bound them"),
    # Events explaining placements; kopf posts core/v1 events, the kubernetes client events.k8s.io ones.
    Permission(CORE, "events", ("create", "patch"), "kopf's handler events and placement explanations"),
    Permission(EVENTS, "events", ("create", "patch"), "placement events through the events.k8s.io API"),
    # kopf itself.
    Permission(APIEXTENSIONS, "customresourcedefinitions", READ, "kopf discovers and watches its CRDs"),
    Permission(
        KOPF,
        "clusterkopfpeerings",
        ("get", "list", "watch", "patch"),
        "kopf peering: replicas see each other; only the highest priority acts",
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
