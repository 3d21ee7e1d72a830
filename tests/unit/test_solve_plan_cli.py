"""`chipfit plan` and chipfit.planning on small manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chipfit import cli, planning, validation
from chipfit.api import v1alpha1
from placement import catalog

FLEET = """
apiVersion: chipfit.io/v1alpha1
kind: AcceleratorPool
metadata: {name: h100s}
spec: {accelerator: h100, devicesPerNode: 8, nodes: 1}
---
apiVersion: chipfit.io/v1alpha1
kind: AcceleratorPool
metadata: {name: l40s}
spec: {accelerator: l40s, devicesPerNode: 8, nodes: 1, pricePerDeviceHour: 1.84}
---
apiVersion: chipfit.io/v1alpha1
kind: InferenceService
metadata: {name: chat, namespace: team}
spec:
  model: {id: llama-3.1-8b}
  precisions: [bf16]
  slo: {ttftP99Ms: 2000, itlP99Ms: 100}
  workload:
    requestsPerSecond: 2
    promptTokens: {mean: 500, p99: 2000}
    outputTokens: {mean: 100, p99: 400}
  serving: aggregated
"""


def test_plan_json_for_a_small_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    assert cli.main(["plan", "-f", str(tmp_path), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["apiVersion"], out["kind"]) == ("chipfit.io/v1alpha1", "FleetPlan")
    (service,) = out["services"]
    assert service["service"] == "team/chat"
    assert service["status"] == "served"
    assert service["dollarsPerHour"] == pytest.approx(out["totals"]["dollarsPerHour"])
    assert out["totals"]["allServed"] is True
    assert {a["pool"] for a in service["assignments"]} <= {"h100s", "l40s"}
    assert out["explanations"][0]["service"] == "team/chat"
    assert out["baseline"]["savings"] is None or out["baseline"]["savings"] >= -1e-9


def test_plan_table_for_a_small_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    assert cli.main(["plan", "-f", str(tmp_path / "fleet.yaml")]) == 0
    out = capsys.readouterr().out
    assert "team/chat" in out and "fleet total" in out and "why" in out


def test_invalid_manifest_prints_problems_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text(FLEET.replace("ttftP99Ms: 2000", "ttftP99Ms: -5"))
    assert cli.main(["plan", "-f", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "spec.slo.ttftP99Ms" in out


def test_no_services_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pools.yaml").write_text(FLEET.split("---")[0])
    assert cli.main(["plan", "-f", str(tmp_path)]) == 1
    assert "no InferenceService" in capsys.readouterr().err


def test_pool_capacity_and_price_default() -> None:
    pool = v1alpha1.AcceleratorPool.model_validate(
        {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": "p"},
            "spec": {"accelerator": "h100", "devicesPerNode": 8, "nodes": 3},
        }
    )
    p = planning.to_pool(pool)
    assert p.devices_total == 24
    assert p.price_per_device_hour == catalog.get_accelerator("h100").default_price_per_hour


def test_plan_fleet_without_baseline(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    loaded = validation.load_and_validate([tmp_path])
    result = planning.plan_fleet(loaded.services, loaded.pools, loaded.profiles, with_baseline=False)
    assert result.single_type_kind == "none" and result.savings_vs_single_type is None
    assert result.plan.service("team/chat").status == "served"
