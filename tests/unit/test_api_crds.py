"""The CRDs are generated from the API types, committed fresh, structural and useful in `kubectl get`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chipfit.api import crd

ROOT = Path(__file__).resolve().parents[2]
# Keys a structural schema may not carry (they come from JSON Schema and must be converted away).
NON_STRUCTURAL_KEYS = {"anyOf", "oneOf", "allOf", "$ref", "$defs", "title", "const"}


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


@pytest.mark.parametrize("directory", ["crds", "charts/chipfit/crds"])
@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_committed_crd_is_fresh(directory: str, kind: crd.Kind) -> None:
    path = ROOT / directory / kind.file_name
    assert path.exists(), f"{path} missing: run `chipfit crds --write`"
    assert path.read_text() == crd.render_crd_yaml(kind), f"{path} is stale: run `chipfit crds --write`"


@pytest.mark.parametrize("kind", crd.KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: crd.Kind) -> None:
    version = crd.render_crd(kind)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not NON_STRUCTURAL_KEYS & set(node), f"{path} has {NON_STRUCTURAL_KEYS & set(node)}"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        if "properties" in node and path.startswith(".properties"):
            assert node.get("type") == "object", f"{path} needs type: object"
            assert "additionalProperties" not in node, path
    assert version["subresources"] == {"status": {}}
    assert schema["required"] == ["spec"]


def test_inference_service_printer_columns_and_names() -> None:
    spec = crd.render_crd(crd.KINDS_BY_NAME["InferenceService"])["spec"]
    columns = {c["name"]: c["jsonPath"] for c in spec["versions"][0]["additionalPrinterColumns"]}
    assert columns["Accelerator"] == ".status.acceleratorSummary"
    assert columns["Replicas"] == ".status.replicasSummary"
    assert columns["$/h"] == ".status.predicted.dollarsPerHour"
    assert columns["TTFT-p99-ms"] == ".status.predicted.ttftP99Ms"
    assert "isvc" not in spec["names"]["shortNames"]  # KServe's
    assert spec["names"]["categories"] == ["chipfit"]
    assert spec["scope"] == "Namespaced"


def test_scopes() -> None:
    assert crd.KINDS_BY_NAME["AcceleratorPool"].scope == "Cluster"
    assert crd.KINDS_BY_NAME["PerformanceProfile"].scope == "Cluster"


def test_cel_rules_and_defaults_are_generated() -> None:
    spec = crd.render_crd(crd.KINDS_BY_NAME["InferenceService"])["spec"]
    props = spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    replica_rules = [r["rule"] for r in props["replicas"]["x-kubernetes-validations"]]
    assert "!has(self.max) || self.min <= self.max" in replica_rules
    assert props["slo"]["properties"]["ttftP99Ms"]["minimum"] == 0
    assert props["slo"]["properties"]["ttftP99Ms"]["exclusiveMinimum"] is True
    assert props["serving"]["default"] == "auto"
    assert props["engine"]["enum"] == ["vllm", "sglang", "trtllm", "tgi", "neuron"]
    assert set(props["slo"]["required"]) == {"ttftP99Ms", "itlP99Ms"}


def test_crd_files_are_single_yaml_documents() -> None:
    for kind in crd.KINDS:
        docs = list(yaml.safe_load_all((ROOT / "crds" / kind.file_name).read_text()))
        assert len(docs) == 1 and docs[0]["metadata"]["name"] == kind.crd_name
