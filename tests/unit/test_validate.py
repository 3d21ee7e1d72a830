"""`chipfit validate`: the examples pass; every bad manifest is rejected with its field named, by the CLI
and, for schema-level mistakes, by the committed CRD schema itself (jsonschema + the CRD's CEL rules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chipfit import cli, manifests, validation
from chipfit.api import crd, v1alpha1

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "bad_manifests").glob("*.yaml"))
MIN_BAD_MANIFESTS = 20


def _header(path: Path, key: str) -> str:
    match = re.search(rf"^# {key}: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} lacks a '# {key}:' header"
    return match.group(1)


def _committed_schema(kind: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "crds" / crd.KINDS_BY_NAME[kind].file_name).read_text())
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_corpus_is_large_enough() -> None:
    schema_level = [p for p in BAD if _header(p, "rejected-by") == "schema"]
    assert len(schema_level) >= MIN_BAD_MANIFESTS


def test_examples_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "-f", str(ROOT / "examples")]) == 0
    assert "6 InferenceService" in capsys.readouterr().out


def test_examples_round_trip_through_the_models() -> None:
    result = validation.load_and_validate([ROOT / "examples"])
    assert not result.problems
    for obj in [*result.services, *result.pools]:
        again = validation.validate_documents([manifests.Document("mem", 0, obj.to_wire())])
        assert not again.problems, again.problems


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_cli_rejects_bad_manifest_naming_the_field(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    field = _header(path, "expect-field")
    assert cli.main(["validate", "-f", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines, "no problem printed"
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any(f": {field}: " in line for line in lines), lines


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_committed_crd_schema_agrees(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    field = _header(path, "expect-field")
    layer = _header(path, "rejected-by")
    if field.startswith("metadata."):
        pytest.skip("metadata is validated by the API server's ObjectMeta rules, not the CRD schema")
    errors = validation.schema_errors(_committed_schema(body["kind"]), body)
    if layer == "schema":
        assert field in [e.field for e in errors], errors
    else:
        assert errors == [], "a semantic-only case must pass the CRD schema, else it belongs to 'schema'"


def test_problems_are_lines_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.yaml").write_text("apiVersion: chipfit.io/v1alpha1\nkind: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    missing = tmp_path / "nope.yaml"
    assert cli.main(["validate", "-f", str(tmp_path), str(missing)]) == 1
    out = capsys.readouterr().out
    assert "broken.yaml: file: invalid YAML at line 3" in out
    assert "list.yaml: document 1: expected a mapping, got list" in out
    assert "nope.yaml: file: no such file or directory" in out


def test_duplicate_objects_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = (
        (ROOT / "tests/bad_manifests/pool-zero-devices.yaml")
        .read_text()
        .replace("devicesPerNode: 0", "devicesPerNode: 8")
    )
    (tmp_path / "a.yaml").write_text(pool)
    (tmp_path / "b.yaml").write_text(pool)
    assert cli.main(["validate", "-f", str(tmp_path)]) == 1
    assert "metadata.name: duplicate of the one in" in capsys.readouterr().out


def test_other_api_groups_are_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    assert cli.main(["validate", "-f", str(tmp_path)]) == 1  # nothing of ours to validate
    assert "no chipfit objects" in capsys.readouterr().err


def test_cel_sees_defaults_like_the_api_server() -> None:
    # scaleToZero defaults to false and min to 0: the rules must evaluate against the defaulted object.
    body = yaml.safe_load((ROOT / "tests/bad_manifests/svc-min-gt-max.yaml").read_text())
    body["spec"]["replicas"] = {"max": 3}
    assert validation.crd_errors("InferenceService", body) == []


def test_numbers_written_as_integers_compare_with_floats() -> None:
    body = yaml.safe_load((ROOT / "tests/bad_manifests/svc-p99-below-mean.yaml").read_text())
    body["spec"]["workload"]["promptTokens"] = {"mean": 2000.5, "p99": 4000}
    assert validation.crd_errors("InferenceService", body) == []


def test_semantic_checks_are_reusable_on_typed_objects() -> None:
    body = yaml.safe_load((ROOT / "tests/bad_manifests/svc-context-too-long.yaml").read_text())
    service = v1alpha1.InferenceService.model_validate(body)
    errors = validation.service_problems(service)
    assert [e.field for e in errors] == ["spec.workload.maxContextTokens"]
    assert "4096" in errors[0].reason
