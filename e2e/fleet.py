"""Fake GPU fleet: kwok Node objects rendered from AcceleratorPool manifests.

Usage: python e2e/fleet.py [FILE_OR_DIR ...]  (default examples/) prints a multi-document YAML of Nodes.
Each pool becomes `spec.nodes` Nodes (capped, see MAX_FAKE_NODES_PER_POOL) carrying the labels a real
node of that kind carries (GPU feature discovery / device-plugin labellers, cloud well-known labels),
the pool's nodeSelector labels and taints, and the pool's extended resource in capacity and allocatable.
kwok (annotation kwok.x-k8s.io/node=fake) keeps them Ready and runs the pods bound to them.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import pydantic
import yaml

import placement.catalog
from chipfit.api import v1alpha1

API_GROUP: Final = "chipfit.io"
POOL_KIND: Final = "AcceleratorPool"

# kwok manages nodes carrying this annotation (e2e/cluster.sh passes the same selector to kwok).
KWOK_ANNOTATION: Final = ("kwok.x-k8s.io/node", "fake")
# Every generated node carries this label, so the fleet can be listed and deleted as one.
FLEET_LABEL: Final = ("kwok.x-k8s.io/fleet", "chipfit")
POOL_LABEL_KEY: Final = "chipfit.io/pool"
ACCELERATOR_LABEL_KEY: Final = "chipfit.io/accelerator"
# Karpenter's well-known capacity-type label (https://karpenter.sh/docs/reference/well-known-labels/).
CAPACITY_TYPE_LABEL_KEY: Final = "karpenter.sh/capacity-type"
INSTANCE_TYPE_LABEL_KEY: Final = "node.kubernetes.io/instance-type"
REGION_LABEL_KEY: Final = "topology.kubernetes.io/region"
ZONE_LABEL_KEY: Final = "topology.kubernetes.io/zone"

# kwok heartbeats every node's Lease; the tests need a few nodes per pool, and the machine is a shared
# 2-core one, so large planning capacities are registered only up to this many nodes per pool.
MAX_FAKE_NODES_PER_POOL: Final = 8
# The kubelet default for --max-pods (kubelet config reference: maxPods default 110).
MAX_PODS_PER_NODE: Final = 110
# Root volume size we give every fake node; any realistic value works, nothing writes to it.
EPHEMERAL_STORAGE: Final = "500Gi"
MIB: Final = 2**20


@dataclasses.dataclass(frozen=True)
class InstanceShape:
    """A cloud instance type: its name and the CPU and memory a node of it has."""

    instance_type: str
    vcpus: int
    memory_gib: int
    cloud: str


# (accelerator id, devices per node) -> the instance type that has exactly that many devices. Sources:
# AWS EC2 accelerated computing instance specs (https://aws.amazon.com/ec2/instance-types/g6/, /g6e/,
# /p4/, /p5/, /inf2/) and Azure ND MI300X v5 (https://learn.microsoft.com/azure/virtual-machines/sizes/
# gpu-accelerated/ndmi300xv5-series). inf2 devices are chips (two NeuronCores each).
INSTANCE_SHAPES: Final[Mapping[tuple[str, int], InstanceShape]] = {
    ("l4", 1): InstanceShape("g6.xlarge", 4, 16, "aws"),
    ("l4", 4): InstanceShape("g6.12xlarge", 48, 192, "aws"),
    ("l4", 8): InstanceShape("g6.48xlarge", 192, 768, "aws"),
    ("l40s", 1): InstanceShape("g6e.xlarge", 4, 32, "aws"),
    ("l40s", 4): InstanceShape("g6e.12xlarge", 48, 384, "aws"),
    ("l40s", 8): InstanceShape("g6e.48xlarge", 192, 1536, "aws"),
    ("a100-80gb", 8): InstanceShape("p4de.24xlarge", 96, 1152, "aws"),
    ("h100", 8): InstanceShape("p5.48xlarge", 192, 2048, "aws"),
    ("h200", 8): InstanceShape("p5e.48xlarge", 192, 2048, "aws"),
    ("mi300x", 8): InstanceShape("Standard_ND96isr_MI300X_v5", 96, 1850, "azure"),
    ("inf2", 1): InstanceShape("inf2.8xlarge", 32, 128, "aws"),
    ("inf2", 6): InstanceShape("inf2.24xlarge", 96, 384, "aws"),
    ("inf2", 12): InstanceShape("inf2.48xlarge", 192, 768, "aws"),
}
# MIG pools run on the parent's 8-GPU instance (the shapes above); devicesPerNode counts slices.
MIG_HOST_GPUS: Final = 8
# A (accelerator, device count) pair without a real instance type gets a synthetic shape this large.
FALLBACK_VCPUS_PER_DEVICE: Final = 24
FALLBACK_MEMORY_GIB_PER_DEVICE: Final = 256

# Three zones per cloud region, nodes of a pool spread round-robin (as a zonal node group does).
ZONES: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    "aws": ("us-east-1", ("us-east-1a", "us-east-1b", "us-east-1c")),
    "azure": ("eastus", ("eastus-1", "eastus-2", "eastus-3")),
}
TAINT_EFFECTS: Final = ("NoSchedule", "PreferNoSchedule", "NoExecute")


class PoolError(ValueError):
    """An AcceleratorPool manifest this generator cannot turn into nodes (one-line message)."""


@dataclasses.dataclass(frozen=True)
class Pool:
    """The fields of an AcceleratorPool that decide what its nodes look like."""

    name: str
    accelerator: placement.catalog.Accelerator
    # The whole chip a slice is cut from (the accelerator itself for a whole chip).
    whole_chip: placement.catalog.Accelerator
    devices_per_node: int
    nodes: int
    spot: bool
    node_selector: Mapping[str, str]
    taints: tuple[Mapping[str, str], ...]
    resource_name: str


def _field(where: str, spec: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """Read spec[key] as `kind`, or raise a PoolError naming the field."""
    value = spec.get(key)
    if value is None:
        if default is None:
            raise PoolError(f"{where}: spec.{key}: required")
        value = default
    # bool is an int subclass: a YAML `true` must not pass as a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise PoolError(f"{where}: spec.{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse_pool(doc: Mapping[str, Any], source: str) -> Pool:
    """Turn one AcceleratorPool document into a Pool, or raise a one-line PoolError."""
    name = str((doc.get("metadata") or {}).get("name", ""))
    where = f"{source}: AcceleratorPool {name or '<unnamed>'}"
    if not name:
        raise PoolError(f"{where}: metadata.name: required")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        raise PoolError(f"{where}: spec: required mapping")
    accelerator_id = _field(where, spec, "accelerator", str)
    accelerator, whole_chip = _chip(
        where, accelerator_id, spec.get("acceleratorSpec"), spec.get("pricePerDeviceHour")
    )
    devices_per_node = _field(where, spec, "devicesPerNode", int)
    nodes = _field(where, spec, "nodes", int)
    for key, value in (("devicesPerNode", devices_per_node), ("nodes", nodes)):
        if value < 1:
            raise PoolError(f"{where}: spec.{key}: must be >= 1, got {value}")
    node_selector = _field(where, spec, "nodeSelector", dict, {})
    taints = _field(where, spec, "taints", list, [])
    for i, taint in enumerate(taints):
        if not isinstance(taint, Mapping) or not isinstance(taint.get("key"), str):
            raise PoolError(f"{where}: spec.taints[{i}].key: required string")
        if taint.get("effect") not in TAINT_EFFECTS:
            raise PoolError(f"{where}: spec.taints[{i}].effect: one of {', '.join(TAINT_EFFECTS)}")
    return Pool(
        name=name,
        accelerator=accelerator,
        whole_chip=whole_chip,
        devices_per_node=devices_per_node,
        nodes=nodes,
        spot=_field(where, spec, "spot", bool, False),
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        taints=tuple(
            {k: str(v) for k, v in taint.items() if k in ("key", "value", "effect")} for taint in taints
        ),
        resource_name=_field(where, spec, "resourceName", str, accelerator.resource_name),
    )


def _chip(
    where: str, accelerator_id: str, declared: Any, price: Any
) -> tuple[placement.catalog.Accelerator, placement.catalog.Accelerator]:
    """The pool's chip and the whole chip it is (or is cut from): its acceleratorSpec, else the catalog."""
    parent_id = accelerator_id.split("/", 1)[0]
    try:
        if declared is None:
            chip = placement.catalog.get_accelerator(accelerator_id)
            return chip, placement.catalog.get_accelerator(parent_id)
        whole = v1alpha1.AcceleratorSpec.model_validate(declared).to_catalog(
            parent_id, price if isinstance(price, int | float) else None
        )
        return placement.catalog.resolve_accelerator(accelerator_id, whole), whole
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PoolError(f"{where}: spec.acceleratorSpec.{loc}: {first['msg']}") from None
    except (placement.catalog.UnknownIdError, placement.catalog.SpecError) as error:
        field = "accelerator" if declared is None else "acceleratorSpec"
        raise PoolError(f"{where}: spec.{field}: {error}") from None


def load_pools(paths: Iterable[pathlib.Path]) -> list[Pool]:
    """Every AcceleratorPool in the given YAML files and folders (other kinds are ignored)."""
    pools: list[Pool] = []
    for path in paths:
        files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
        for file in files:
            try:
                docs = list(yaml.safe_load_all(file.read_text()))
            except (OSError, yaml.YAMLError) as error:
                raise PoolError(f"{file}: {str(error).splitlines()[0]}") from None
            for doc in docs:
                if not isinstance(doc, Mapping) or doc.get("kind") != POOL_KIND:
                    continue
                if not str(doc.get("apiVersion", "")).startswith(f"{API_GROUP}/"):
                    continue
                pools.append(parse_pool(doc, str(file)))
    return pools


def instance_shape(pool: Pool) -> InstanceShape:
    """The instance type a node of this pool is (the parent's 8-GPU machine for MIG slices)."""
    accelerator = pool.accelerator
    if accelerator.parent is not None:
        shape = INSTANCE_SHAPES.get((accelerator.parent, MIG_HOST_GPUS))
        if shape is not None:
            return shape
    shape = INSTANCE_SHAPES.get((accelerator.id, pool.devices_per_node))
    if shape is not None:
        return shape
    cloud = "azure" if accelerator.vendor == "amd" else "aws"
    return InstanceShape(
        instance_type=f"chipfit-e2e.{accelerator.id.replace('/', '-')}-x{pool.devices_per_node}",
        vcpus=FALLBACK_VCPUS_PER_DEVICE * pool.devices_per_node,
        memory_gib=FALLBACK_MEMORY_GIB_PER_DEVICE * pool.devices_per_node,
        cloud=cloud,
    )


def device_labels(pool: Pool) -> dict[str, str]:
    """Labels the vendor's node labeller sets (NVIDIA GPU feature discovery, ROCm labeller, Neuron)."""
    accelerator = pool.accelerator
    # A declared chip without a nodeLabel has no product label to carry.
    labels = {accelerator.product_label_key: accelerator.product_label} if accelerator.product_label else {}
    if accelerator.vendor == "nvidia":
        # GPU feature discovery: gpu.memory in MiB of one whole GPU; mixed MIG strategy exposes
        # nvidia.com/mig-<profile> resources next to the product label of the parent.
        parent = pool.whole_chip
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.memory"] = str(parent.memory_bytes // MIB)
        if accelerator.parent is None:
            labels["nvidia.com/gpu.count"] = str(pool.devices_per_node)
        else:
            labels["nvidia.com/gpu.count"] = str(MIG_HOST_GPUS)
            labels["nvidia.com/mig.capable"] = "true"
            labels["nvidia.com/mig.strategy"] = "mixed"
    return labels


def render_nodes(pool: Pool) -> list[dict[str, Any]]:
    """The kwok Node objects of one pool (at most MAX_FAKE_NODES_PER_POOL)."""
    shape = instance_shape(pool)
    region, zones = ZONES[shape.cloud]
    devices = pool.devices_per_node * pool.accelerator.resource_units_per_device
    resources = {
        "cpu": str(shape.vcpus),
        "memory": f"{shape.memory_gib}Gi",
        "ephemeral-storage": EPHEMERAL_STORAGE,
        "pods": str(MAX_PODS_PER_NODE),
        pool.resource_name: str(devices),
    }
    nodes = []
    for index in range(min(pool.nodes, MAX_FAKE_NODES_PER_POOL)):
        name = f"kwok-{pool.name}-{index}"
        labels = {
            FLEET_LABEL[0]: FLEET_LABEL[1],
            "type": "kwok",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            INSTANCE_TYPE_LABEL_KEY: shape.instance_type,
            REGION_LABEL_KEY: region,
            ZONE_LABEL_KEY: zones[index % len(zones)],
            CAPACITY_TYPE_LABEL_KEY: "spot" if pool.spot else "on-demand",
            POOL_LABEL_KEY: pool.name,
            ACCELERATOR_LABEL_KEY: pool.accelerator.id.replace("/", "_"),
            **device_labels(pool),
            # Last: the pool's own selector is what its pods will select on, so it wins a clash.
            **pool.node_selector,
        }
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            },
            "spec": {"taints": [dict(t) for t in pool.taints]} if pool.taints else {},
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                # nodeInfo, conditions and addresses are filled in by kwok's node-initialize stage.
            },
        }
        nodes.append(node)
    return nodes


def render_fleet(pools: Sequence[Pool]) -> list[dict[str, Any]]:
    """All Nodes of all pools, pools in the given order."""
    return [node for pool in pools for node in render_nodes(pool)]


def main(argv: Sequence[str]) -> int:
    """Print the fleet of the pools found in argv (default examples/) as multi-document YAML."""
    repo = pathlib.Path(__file__).resolve().parent.parent
    paths = [pathlib.Path(a) for a in argv] or [repo / "examples"]
    try:
        pools = load_pools(paths)
    except PoolError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 1
    for pool in pools:
        if pool.nodes > MAX_FAKE_NODES_PER_POOL:
            print(
                f"fleet: pool {pool.name}: registering {MAX_FAKE_NODES_PER_POOL} of {pool.nodes} nodes",
                file=sys.stderr,
            )
    sys.stdout.write(yaml.safe_dump_all(render_fleet(pools), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
