"""Generate CustomResourceDefinitions from the pydantic API types (never hand-written).

pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3.0 schema. The conversion
inlines `$defs`, turns `anyOf [X, null]` into an optional X, maps numeric `exclusiveMinimum` to the
OpenAPI boolean form, and drops titles and `additionalProperties: false` (structural schemas prune or,
with strict field validation, reject unknown fields instead).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from chipfit.api import v1alpha1

# Keys of JSON Schema that have no place in a Kubernetes structural schema.
_DROPPED_KEYS = frozenset({"title", "$defs", "additionalProperties"})


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclasses.dataclass(frozen=True)
class Kind:
    """Everything a CRD needs beyond the schema."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    scope: str
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[PrinterColumn, ...]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{v1alpha1.GROUP}"

    @property
    def file_name(self) -> str:
        return f"{v1alpha1.GROUP}_{self.plural}.yaml"


CATEGORY = "chipfit"
_AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

KINDS: tuple[Kind, ...] = (
    Kind(
        kind="InferenceService",
        plural="inferenceservices",
        singular="inferenceservice",
        # KServe owns `isvc`; ours are distinct.
        short_names=("infsvc", "cfsvc"),
        scope="Namespaced",
        spec=v1alpha1.InferenceServiceSpec,
        status=v1alpha1.InferenceServiceStatus,
        columns=(
            PrinterColumn("Model", ".spec.model.id", description="Catalog model id"),
            PrinterColumn("Accelerator", ".status.acceleratorSummary", description="Chips serving it"),
            PrinterColumn("Replicas", ".status.replicasSummary", description="Ready/desired replicas"),
            PrinterColumn("$/h", ".status.predicted.dollarsPerHour", "number", "Predicted dollars per hour"),
            PrinterColumn("TTFT-p99-ms", ".status.predicted.ttftP99Ms", "number", "Predicted p99 TTFT"),
            PrinterColumn("SLO-TTFT-ms", ".spec.slo.ttftP99Ms", "number", "TTFT p99 objective", 1),
            PrinterColumn("ITL-p99-ms", ".status.predicted.itlP99Ms", "number", "Predicted p99 ITL", 1),
            PrinterColumn(
                "Observed-RPS",
                ".status.autoscaling.observedRequestsPerSecond",
                "number",
                "Request rate the engines report (autoscaling)",
                1,
            ),
            PrinterColumn(
                "SLO-Attained",
                ".status.autoscaling.sloAttainment",
                "number",
                "Share of requests within the TTFT objective over the autoscaler's window",
                1,
            ),
            PrinterColumn(
                "Scaled",
                ".status.autoscaling.lastDecision",
                description="Last autoscaling decision",
                priority=1,
            ),
            PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _AGE,
        ),
    ),
    Kind(
        kind="AcceleratorPool",
        plural="acceleratorpools",
        singular="acceleratorpool",
        short_names=("apool", "accpool"),
        scope="Cluster",
        spec=v1alpha1.AcceleratorPoolSpec,
        status=v1alpha1.AcceleratorPoolStatus,
        columns=(
            PrinterColumn("Accelerator", ".spec.accelerator"),
            PrinterColumn("Per-Node", ".spec.devicesPerNode", "integer", "Devices per node"),
            PrinterColumn("Nodes-Ready", ".status.nodesReady", "integer"),
            PrinterColumn("Devices", ".status.devicesTotal", "integer"),
            PrinterColumn("Allocated", ".status.devicesAllocated", "integer"),
            PrinterColumn("$/dev-h", ".spec.pricePerDeviceHour", "number", "Dollars per device-hour"),
            PrinterColumn("Spot", ".spec.spot", "boolean"),
            _AGE,
        ),
    ),
    Kind(
        kind="PerformanceProfile",
        plural="performanceprofiles",
        singular="performanceprofile",
        short_names=("perfprofile", "pprof"),
        scope="Cluster",
        spec=v1alpha1.PerformanceProfileSpec,
        status=v1alpha1.PerformanceProfileStatus,
        columns=(
            PrinterColumn("Model", ".spec.model"),
            PrinterColumn("Accelerator", ".spec.accelerator"),
            PrinterColumn("Precision", ".spec.precision"),
            PrinterColumn("Engine", ".spec.engine"),
            PrinterColumn("TP", ".spec.tensorParallel", "integer"),
            PrinterColumn("Version", ".spec.engineVersion", priority=1),
            PrinterColumn("Partial", ".spec.partial", "boolean", priority=1),
            _AGE,
        ),
    ),
    Kind(
        kind="ProfilingRun",
        plural="profilingruns",
        singular="profilingrun",
        short_names=("prun",),
        # Cluster-scoped: it owns the cluster-scoped PerformanceProfile it produces (a namespaced owner
        # cannot own a cluster-scoped object); its Job lives in the service's namespace.
        scope="Cluster",
        spec=v1alpha1.ProfilingRunSpec,
        status=v1alpha1.ProfilingRunStatus,
        columns=(
            PrinterColumn("Service", ".spec.service.name"),
            PrinterColumn("Pool", ".spec.pool"),
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Profile", ".status.profile"),
            _AGE,
        ),
    ),
)

KINDS_BY_NAME = {k.kind: k for k in KINDS}


class SchemaConversionError(ValueError):
    """The pydantic schema uses a construct that has no structural OpenAPI equivalent."""


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Structural OpenAPI v3.0 form of one JSON Schema node."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # field-level description and default win over the model's own
        return _resolve(merged, defs)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaConversionError(f"union of {len(branches)} types is not structural: {branches}")
        if node.get("default", ...) is None:
            del node["default"]
        return _resolve({**branches[0], **node}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            if key == "additionalProperties" and isinstance(value, dict):
                out[key] = _resolve(value, defs)
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _resolve(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3.0 structural schema of one API type."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return dict(_resolve(raw, raw.get("$defs", {})))


def render_crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = structural_schema(kind.spec)
    status_schema = structural_schema(kind.status)
    spec_schema["description"] = (kind.spec.__doc__ or "").strip()
    status_schema["description"] = (kind.status.__doc__ or "").strip()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "chipfit", "app.kubernetes.io/part-of": "chipfit"},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": kind.scope,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [_column(c) for c in kind.columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{kind.kind} ({v1alpha1.API_VERSION}).",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def _column(column: PrinterColumn) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
    if column.description:
        out["description"] = column.description
    if column.priority:
        out["priority"] = column.priority
    return out


def render_crd_yaml(kind: Kind) -> str:
    """The CRD as the YAML file committed in crds/."""
    header = "# Generated by `chipfit crds --write` from chipfit.api.v1alpha1. Do not edit.\n"
    return header + yaml.safe_dump(render_crd(kind), sort_keys=False, width=110)


def write_crds(*directories: Path) -> list[Path]:
    """Write every CRD into each directory; returns the files written."""
    written = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            path = directory / kind.file_name
            path.write_text(render_crd_yaml(kind))
            written.append(path)
    return written
