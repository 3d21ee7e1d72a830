"""e2e/fleet.py without a cluster: AcceleratorPool manifests -> fake GPU Node objects."""

from __future__ import annotations

import pathlib
import types
from typing import Any

import pytest

import placement.catalog

FIXTURE_POOLS = pathlib.Path(__file__).resolve().parent / "fixtures" / "pools.yaml"


def _pool_doc(**spec: Any) -> dict[str, Any]:
    """An AcceleratorPool document with the given spec fields over a valid L4 pool."""
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "AcceleratorPool",
        "metadata": {"name": "p"},
        "spec": {"accelerator": "l4", "devicesPerNode": 4, "nodes": 1, **spec},
    }


def _nodes_by_pool(fleet: types.ModuleType) -> dict[str, list[dict[str, Any]]]:
    """Fixture fleet nodes grouped by their pool label."""
    nodes = fleet.render_fleet(fleet.load_pools([FIXTURE_POOLS]))
    grouped: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        grouped.setdefault(node["metadata"]["labels"][fleet.POOL_LABEL_KEY], []).append(node)
    return grouped


def test_one_node_per_planned_node_with_devices_in_capacity_and_allocatable(fleet: types.ModuleType) -> None:
    grouped = _nodes_by_pool(fleet)
    assert {pool: len(nodes) for pool, nodes in grouped.items()} == {
        "e2e-l4": 2,
        "e2e-h100-spot": 2,
        "e2e-h100-mig-1g10": 1,
        "e2e-mi300x": 1,
        "e2e-inf2": 1,
    }
    expected_devices = {
        "e2e-l4": ("nvidia.com/gpu", "4"),
        "e2e-h100-spot": ("nvidia.com/gpu", "8"),
        "e2e-h100-mig-1g10": ("nvidia.com/mig-1g.10gb", "56"),
        "e2e-mi300x": ("amd.com/gpu", "8"),
        # 12 Inferentia2 chips of 2 NeuronCores each: the Neuron device plugin advertises cores.
        "e2e-inf2": ("aws.amazon.com/neuroncore", "24"),
    }
    for pool, (resource, count) in expected_devices.items():
        for node in grouped[pool]:
            assert node["status"]["capacity"][resource] == count
            assert node["status"]["allocatable"][resource] == count


def test_labels_are_those_of_real_nodes_of_that_kind(fleet: types.ModuleType) -> None:
    grouped = _nodes_by_pool(fleet)
    l4 = grouped["e2e-l4"][0]["metadata"]["labels"]
    assert l4["nvidia.com/gpu.product"] == placement.catalog.get_accelerator("l4").product_label
    assert l4["node.kubernetes.io/instance-type"] == "g6.12xlarge"
    assert l4["karpenter.sh/capacity-type"] == "on-demand"
    assert l4["chipfit.io/node-group"] == "l4"  # the pool's nodeSelector
    h100 = grouped["e2e-h100-spot"][0]["metadata"]["labels"]
    assert h100["karpenter.sh/capacity-type"] == "spot"
    assert h100["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    mig = grouped["e2e-h100-mig-1g10"][0]["metadata"]["labels"]
    assert mig["nvidia.com/gpu.product"] == placement.catalog.get_accelerator("h100").product_label
    assert mig["nvidia.com/mig.strategy"] == "mixed"
    mi300x = grouped["e2e-mi300x"][0]["metadata"]["labels"]
    assert mi300x["amd.com/gpu.product-name"] == placement.catalog.get_accelerator("mi300x").product_label
    assert mi300x["topology.kubernetes.io/region"] == "eastus"
    assert grouped["e2e-inf2"][0]["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "inf2.48xlarge"


def test_nodes_spread_over_zones_and_carry_pool_taints(fleet: types.ModuleType) -> None:
    h100 = _nodes_by_pool(fleet)["e2e-h100-spot"]
    zones = {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in h100}
    assert zones == {"us-east-1a", "us-east-1b"}
    for node in h100:
        assert node["spec"]["taints"] == [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
        ]
        assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_resource_name_override_and_node_cap(fleet: types.ModuleType) -> None:
    pool = fleet.parse_pool(_pool_doc(resourceName="nvidia.com/gpu.shared", nodes=1000), "x.yaml")
    nodes = fleet.render_nodes(pool)
    assert len(nodes) == fleet.MAX_FAKE_NODES_PER_POOL
    assert nodes[0]["status"]["capacity"]["nvidia.com/gpu.shared"] == "4"
    assert "nvidia.com/gpu" not in nodes[0]["status"]["capacity"]


def test_unknown_device_count_gets_a_synthetic_instance_type(fleet: types.ModuleType) -> None:
    node = fleet.render_nodes(fleet.parse_pool(_pool_doc(devicesPerNode=3), "x.yaml"))[0]
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "chipfit-e2e.l4-x3"
    assert node["status"]["capacity"]["cpu"] == str(3 * fleet.FALLBACK_VCPUS_PER_DEVICE)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"accelerator": "tpu-v5"}, "spec.accelerator"),
        ({"devicesPerNode": 0}, "spec.devicesPerNode"),
        ({"nodes": True}, "spec.nodes"),
        ({"taints": [{"key": "k", "effect": "Sometimes"}]}, "spec.taints[0].effect"),
        ({"nodeSelector": ["a"]}, "spec.nodeSelector"),
    ],
)
def test_bad_pool_is_one_line_error_naming_the_field(
    fleet: types.ModuleType, spec: dict[str, Any], field: str
) -> None:
    with pytest.raises(fleet.PoolError) as raised:
        fleet.parse_pool(_pool_doc(**spec), "pools.yaml")
    message = str(raised.value)
    assert f": {field}:" in message
    assert message.startswith("pools.yaml: AcceleratorPool p: ")
    assert "\n" not in message


def test_cli_prints_nodes_and_reports_bad_input(
    fleet: types.ModuleType, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet.main([str(FIXTURE_POOLS)]) == 0
    assert capsys.readouterr().out.count("kind: Node\n") == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: chipfit.io/v1alpha1\nkind: AcceleratorPool\nmetadata: {name: b}\nspec: {}\n")
    assert fleet.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"fleet: {bad}: AcceleratorPool b: spec.accelerator: required\n"
