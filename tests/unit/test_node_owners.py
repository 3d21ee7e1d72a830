"""Which pool a node counts in when several pools' nodeSelectors match it (reconcile.node_owners).

The input is the one the full e2e session produced (tests/e2e/test_replan_node_loss.py run after
tests/e2e/test_operator.py, which leaves examples/10-fleet.yaml's pools and kwok nodes in the cluster):
the example pools select nodes by instance type and GPU product, the node-loss test's pools by
`chipfit.io/pool`, and the node-loss test's L4 and L40S nodes (rendered by e2e/fleet.py like any real node
of their kind) carry the instance type and product labels too. Ranking by label count alone gave those
nodes to the example pools, so the operator planned rp-l4 and rp-l40s with no nodes: 18 of 24 services
went to rp-a100, and after its nodes were lost the services allowed only rp-l40s or rp-a100 had nowhere to
go ("replica minimums cannot all be met").
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib
import sys
import types
from typing import Any

import yaml

from chipfit import handlers, metrics, planning, reconcile, render
from chipfit.api import v1alpha1
from tests.unit.test_replan_fanout import RecordingCluster, World, _replan

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_FLEET = REPO / "examples" / "10-fleet.yaml"
# tests/e2e/test_replan_node_loss.py's pools: (name, accelerator, $/device-h), 3 nodes of 8 devices each.
RP_POOLS = (
    ("rp-l4", "l4", 0.81),
    ("rp-l40s", "l40s", 1.84),
    ("rp-a100", "a100-80gb", 3.67),
    ("rp-h100", "h100", 6.234),
)


def fleet_module() -> types.ModuleType:
    """e2e/fleet.py, the fake fleet generator the e2e tier registers its nodes with."""
    name = "chipfit_e2e_fleet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "e2e" / "fleet.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def rp_pool_docs() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": name},
            "spec": {
                "accelerator": accelerator,
                "devicesPerNode": 8,
                "nodes": 3,
                "pricePerDeviceHour": price,
                "nodeSelector": {"chipfit.io/pool": name},
            },
        }
        for name, accelerator, price in RP_POOLS
    ]


def example_pool_docs() -> list[dict[str, Any]]:
    docs = yaml.safe_load_all(EXAMPLE_FLEET.read_text())
    return [d for d in docs if d and d.get("kind") == "AcceleratorPool"]


def session_input() -> tuple[list[v1alpha1.AcceleratorPool], list[dict[str, Any]]]:
    """The pools and the nodes of the cluster the node-loss test met in the full e2e session."""
    fleet = fleet_module()
    docs = example_pool_docs() + rp_pool_docs()
    nodes = fleet.render_fleet([fleet.parse_pool(d, "test") for d in docs])
    for node in nodes:  # what kwok's node-initialize stage adds
        node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return [v1alpha1.AcceleratorPool.model_validate(d) for d in docs], nodes


def capacities(
    pools: list[v1alpha1.AcceleratorPool], nodes: list[dict[str, Any]]
) -> dict[str, tuple[int, int]]:
    owners = reconcile.node_owners(pools, nodes)
    out = {}
    for pool in pools:
        chip = planning.pool_accelerator(pool)
        c = reconcile.pool_capacity(
            pool, render.resource_name(pool, chip), chip.resource_units_per_device, nodes, owners
        )
        out[pool.metadata.name] = (c.nodes_ready, c.devices_total)
    return out


def test_a_narrower_pool_keeps_its_nodes_when_a_broader_selector_with_more_labels_matches_them() -> None:
    pools, nodes = session_input()
    # The example pool l4-g6 (instance type + product: two labels) matches the rp-l4 nodes too.
    l4_g6 = next(p for p in pools if p.metadata.name == "l4-g6")
    rp_l4_nodes = [n for n in nodes if n["metadata"]["labels"]["chipfit.io/pool"] == "rp-l4"]
    assert all(reconcile._matches(l4_g6.spec.node_selector, n) for n in rp_l4_nodes)
    seen = capacities(pools, nodes)
    for name, _accelerator, _price in RP_POOLS:
        assert seen[name] == (3, 24), name
    # The example pools keep exactly their own nodes: every node counts once.
    alone = capacities(
        pools[: len(example_pool_docs())],
        [n for n in nodes if not n["metadata"]["name"].startswith("kwok-rp-")],
    )
    assert {k: v for k, v in seen.items() if k in alone} == alone
    owners = reconcile.node_owners(pools, nodes)
    assert len(owners) == len(nodes)


def test_nested_selectors_still_give_the_spot_nodes_to_the_spot_pool() -> None:
    pools, nodes = session_input()
    owners = reconcile.node_owners(pools, nodes)
    by_pool = collections.Counter(owners.values())
    spot = [
        n["metadata"]["name"]
        for n in nodes
        if n["metadata"]["labels"].get("karpenter.sh/capacity-type") == "spot"
    ]
    assert spot and all(owners[n] == "l4-g6-spot" for n in spot)
    assert by_pool["l4-g6"] == 4  # its on-demand nodes, not the spot ones its selector also matches


def test_equal_node_sets_go_to_the_selector_with_more_labels_then_by_name() -> None:
    node = {"metadata": {"name": "n", "labels": {"a": "1", "b": "2"}}}

    def pool(name: str, selector: dict[str, str]) -> v1alpha1.AcceleratorPool:
        return v1alpha1.AcceleratorPool.model_validate(
            {
                "metadata": {"name": name},
                "spec": {"accelerator": "l4", "devicesPerNode": 8, "nodes": 1, "nodeSelector": selector},
            }
        )

    assert reconcile.node_owners([pool("x", {"a": "1"}), pool("y", {"a": "1", "b": "2"})], [node]) == {
        "n": "y"
    }
    assert reconcile.node_owners([pool("y", {"b": "2"}), pool("x", {"a": "1"})], [node]) == {"n": "x"}


# tests/e2e/test_replan_node_loss.py's allowed-pool sets: every service can move, no pool takes them all.
ALLOWED = (
    ("rp-l4", "rp-l40s", "rp-a100", "rp-h100"),
    ("rp-l40s", "rp-a100"),
    ("rp-a100", "rp-h100"),
    ("rp-l4", "rp-h100"),
)


def _service(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"svc-{i:02d}", "namespace": "team", "uid": f"uid-{i}", "generation": 1},
        "spec": {
            "model": {"id": "llama-3.1-8b", "source": "meta-llama/Llama-3.1-8B-Instruct"},
            "precisions": ["bf16"],
            "slo": {"ttftP99Ms": 3000, "itlP99Ms": 150},
            "workload": {
                "requestsPerSecond": 0.5,
                "promptTokens": {"mean": 1155},
                "outputTokens": {"mean": 211},
                "maxContextTokens": 4096,
            },
            "replicas": {"min": 1, "max": 8},
            "placement": {"allowedPools": list(ALLOWED[i % len(ALLOWED)])},
        },
    }


def test_after_the_session_fleets_pool_loss_every_service_is_placed_elsewhere() -> None:
    """The operator's own re-plans (first plan, then the repair after rp-a100's nodes are deleted) on the
    session's pools and nodes: no service is left without a placement, none stays on the lost pool."""
    pools, nodes = session_input()
    world = World(
        cluster=RecordingCluster(),
        services=[_service(i) for i in range(8)],
        pools=[p.to_wire() | {"metadata": {"name": p.metadata.name, "generation": 1}} for p in pools],
        nodes=nodes,
    )
    fleet = handlers.Fleet(cluster=world.cluster, metrics=metrics.OperatorMetrics())  # type: ignore[arg-type]
    _replan(fleet, world)
    _replan(fleet, world)  # everything runs as planned
    # Every pool of the test sees its 3 nodes (it saw 0 for rp-l4 and rp-l40s before the fix).
    assert {name: world.cluster.statuses[name].get("nodesReady") for name, _, _ in RP_POOLS} == dict.fromkeys(
        (name for name, _, _ in RP_POOLS), 3
    )
    world.nodes = [n for n in nodes if n["metadata"]["labels"].get("chipfit.io/pool") != "rp-a100"]
    _replan(fleet, world, full=False)
    for body in world.services:
        name = body["metadata"]["name"]
        status = world.cluster.statuses[name]
        placed = {p["pool"] for p in status.get("placement") or () if p["replicas"] > 0}
        assert placed and "rp-a100" not in placed, (name, status)
        assert placed <= set(body["spec"]["placement"]["allowedPools"]), (name, placed)


def test_a_declared_chips_node_label_limits_the_nodes_its_pool_counts() -> None:
    """A pool whose chip declares a node label counts only nodes carrying it: its pods' node affinity names
    that label (render.node_affinity), so they could never run on the others."""
    spec = {
        "vendor": "nvidia",
        "memoryGib": 96,
        "memoryBandwidthGbps": 4000,
        "denseTflops": {"bf16": 800},
        "precisions": ["bf16"],
        "interconnectGbps": 200,
        "maxTensorParallel": 4,
        "nodeLabel": {"key": "nvidia.com/gpu.product", "value": "ACME-X1"},
        "source": "test",
    }
    acme = v1alpha1.AcceleratorPool.model_validate(
        {
            "metadata": {"name": "acme"},
            "spec": {"accelerator": "acme-x1", "devicesPerNode": 4, "nodes": 2, "acceleratorSpec": spec},
        }
    )

    def node(name: str, product: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product}},
            "status": {
                "allocatable": {"nvidia.com/gpu": "4"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    nodes = [node("x1", "ACME-X1"), node("h100", "NVIDIA-H100-80GB-HBM3")]
    assert reconcile.node_owners([acme], nodes) == {"x1": "acme"}
    assert capacities([acme], nodes) == {"acme": (1, 4)}
    # The same without owners (pool_capacity's own matching).
    assert reconcile.pool_capacity(acme, "nvidia.com/gpu", 1, nodes).nodes_ready == 1
