"""Chips as data: a pool declares a chip the catalog lacks by its specs; it validates, plans, renders and is
predicted from its specs with its vendor's efficiency family, and every answer says so."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from chipfit import cli, manifests, planning, render, validation
from chipfit.api import v1alpha1
from placement import candidates, catalog, perf, trust
from tests.unit.chipfit_builders import POOLS, SERVICES

ACME_SPEC: dict[str, Any] = {
    "vendor": "nvidia",
    "memoryGib": 96,
    "memoryBandwidthGbps": 4000,
    "denseTflops": {"bf16": 800, "fp16": 800, "fp8": 1600},
    "precisions": ["bf16", "fp8"],
    "interconnectGbps": 200,
    "maxTensorParallel": 4,
    "nodeLabel": {"key": "nvidia.com/gpu.product", "value": "ACME-X1"},
    "source": "ACME X1 datasheet (test)",
}


def acme_pool(name: str = "acme", **spec: Any) -> dict[str, Any]:
    body = {
        "accelerator": "acme-x1",
        "devicesPerNode": 4,
        "nodes": 2,
        "pricePerDeviceHour": 2.5,
        "acceleratorSpec": ACME_SPEC,
        **spec,
    }
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": "AcceleratorPool",
        "metadata": {"name": name},
        "spec": body,
    }


def chat_on(accelerators: list[str]) -> dict[str, Any]:
    service = SERVICES["chat-8b"].to_wire()
    service["spec"]["placement"] = {"allowedAccelerators": accelerators}
    service["spec"]["workload"]["requestsPerSecond"] = 5
    return service


def validated(*bodies: dict[str, Any]) -> validation.Validated:
    return validation.validate_documents([manifests.Document(f"doc{i}", 0, b) for i, b in enumerate(bodies)])


def test_declared_chip_validates_and_a_service_may_ask_for_it() -> None:
    result = validated(acme_pool(), chat_on(["acme-x1"]))
    assert result.problems == []
    assert [p.spec.accelerator for p in result.pools] == ["acme-x1"]


def test_a_service_asking_for_an_undeclared_chip_names_the_field() -> None:
    result = validated(acme_pool(), chat_on(["zeta-9"]))
    assert [(p.field, "zeta-9" in p.reason) for p in result.problems] == [
        ("spec.placement.allowedAccelerators[0]", True)
    ]


def test_pools_must_agree_on_one_ids_specs() -> None:
    faster = {**ACME_SPEC, "memoryBandwidthGbps": 8000}
    result = validated(acme_pool("a"), acme_pool("b", acceleratorSpec=faster))
    assert len(result.problems) == 1
    assert result.problems[0].field == "spec.acceleratorSpec" and "pool a" in result.problems[0].reason


def test_the_declared_chip_plans_and_the_explanation_says_uncalibrated() -> None:
    result = validated(acme_pool(), chat_on(["acme-x1"]))
    fleet = planning.plan_fleet(result.services, result.pools, with_baseline=False)
    placed = fleet.plan.services[0]
    assert placed.status == "served"
    assert {a.accelerator for a in placed.assignments} == {"acme-x1"}
    assert trust.UNCALIBRATED_NOTE in fleet.explanations[0].summary


def test_headroom_derates_capacity_predicted_from_specs_only() -> None:
    result = validated(acme_pool(), chat_on(["acme-x1"]))
    pools = [planning.to_pool(p) for p in result.pools]
    chips = planning.fleet_accelerators(result.pools)
    spec = planning.to_spec(result.services[0])
    on = candidates.build([spec], pools, accelerators=chips, headroom=True).problem.candidates
    off = candidates.build([spec], pools, accelerators=chips, headroom=False).problem.candidates
    assert len(on) == len(off) > 0
    for a, b in zip(on, off, strict=True):
        for cap_on, cap_off in zip(a.max_rps_per_bucket, b.max_rps_per_bucket, strict=True):
            assert cap_on == pytest.approx(cap_off / (1 + trust.FROM_SPECS_TYPICAL_ERROR))


def test_a_declared_chip_with_a_catalog_chips_figures_predicts_the_same_throughput() -> None:
    h100 = catalog.get_accelerator("h100")
    twin = catalog.accelerator_from_spec(
        id="my-h100",
        vendor="nvidia",
        memory_bytes=h100.memory_bytes,
        mem_bandwidth_bytes_per_s=h100.mem_bandwidth_bytes_per_s,
        dense_tflops={p: f / catalog.TERA for p, f in h100.dense_flops_per_s.items()},
        interconnect_bytes_per_s=h100.interconnect_bytes_per_s,
        precisions=h100.precisions,
        max_tp=h100.max_tp,
    )
    same = [
        perf.offline_throughput(
            perf.ReplicaConfig("llama-3.1-70b", chip, "fp8", 2, engine="trtllm"), 1000, 200
        )
        for chip in (h100, twin)
    ]
    assert same[0].output_tokens_per_s == pytest.approx(same[1].output_tokens_per_s)
    levels = [
        trust.assess(perf.ReplicaConfig("llama-3.1-70b", chip, "fp8", 2, engine="trtllm"), 1000, 200).level
        for chip in (h100, twin)
    ]
    assert levels == ["calibrated", "uncalibrated"]


def test_render_requests_the_declared_resource_and_selects_its_node_label() -> None:
    pool = v1alpha1.AcceleratorPool.model_validate(
        acme_pool(acceleratorSpec={**ACME_SPEC, "resourceName": "acme.com/npu"})
    )
    service = SERVICES["chat-8b"].model_copy(deep=True)
    placed = v1alpha1.RolePlacement(
        role="aggregated", pool="acme", accelerator="acme-x1", precision="fp8", tensor_parallel=2, replicas=1
    )
    deployment = render.render_deployment(
        service, placed, pool, render.engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=64)
    )
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"acme.com/npu": "2"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["ACME-X1"]} in expressions


def test_the_plan_prices_an_engine_configuration_for_the_declared_chip() -> None:
    result = validated(acme_pool(), chat_on(["acme-x1"]))
    fleet = planning.plan_fleet(result.services, result.pools, with_baseline=False)
    (assignment,) = [a for a in fleet.plan.services[0].assignments if a.replicas > 0][:1]
    config = assignment.engine_config
    # The sequence cap comes from the declared chip's memory (the renderer runs exactly this).
    assert config is not None and config.max_num_seqs is not None and config.max_num_seqs > 0


def test_a_slice_of_a_declared_chip_is_cut_from_its_partitions() -> None:
    spec = {
        **ACME_SPEC,
        "partitions": [{"profile": "1g.12gb", "computeSlices": 1, "memorySlices": 1, "maxInstances": 7}],
    }
    pool = v1alpha1.AcceleratorPool.model_validate(
        acme_pool(accelerator="acme-x1/1g.12gb", acceleratorSpec=spec, resourceName="nvidia.com/mig-1g.12gb")
    )
    chip = planning.pool_accelerator(pool)
    assert chip.parent == "acme-x1" and chip.max_tp == 1
    assert chip.memory_bytes == pytest.approx(96 * catalog.GIB / 8, rel=1e-6)
    assert chip.resource_name == "nvidia.com/mig-1g.12gb"


def test_every_catalog_figure_carries_a_source() -> None:
    text = (Path(catalog.__file__).parent / "data" / catalog.ACCELERATORS_TOML).read_text()
    entry = next(c for c in tomllib.loads(text)["chip"] if c["id"] == "b200")
    broken = {k: v for k, v in entry.items() if k != "mem_bandwidth_source"}
    with pytest.raises(catalog.SpecError, match="mem_bandwidth_source"):
        catalog._catalog_chip(broken, {})


def test_trust_levels_of_catalog_chips() -> None:
    def level(chip: str, engine: str, isl: float = 1000, osl: float = 200) -> trust.Trust:
        return trust.assess(perf.ReplicaConfig("llama-3.1-8b", chip, "bf16", 1, engine=engine), isl, osl)

    assert level("h100", "trtllm").level == "calibrated" and level("h100", "trtllm").in_range
    assert level("h100", "vllm").level == "engine-derived"
    assert level("b200", "vllm").level == "uncalibrated"
    assert level("inf2", "neuron").level == "prior"
    far = level("h100", "trtllm", isl=100_000)
    assert not far.in_range and "prompt 100000 outside" in far.label
    assert far.typical_error > level("h100", "trtllm").typical_error


def test_predict_says_uncalibrated_for_a_pool_declared_chip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(yaml.safe_dump(acme_pool()))
    args = ["predict", "--model", "llama-3.1-8b", "--pool", str(manifest), "--precision", "fp8"]
    assert cli.main([*args, "--isl", "2048", "--osl", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chip"] == "acme-x1" and report["price_per_device_hour"] == 2.5
    assert report["trust"].startswith(trust.UNCALIBRATED_NOTE) and report["trust_level"] == "uncalibrated"
    assert cli.main([*args, "--isl", "2048", "--osl", "128"]) == 0
    assert "uncalibrated: predicted from specs" in capsys.readouterr().out


def test_headroom_is_an_option_and_costs_what_the_derate_says() -> None:
    busy = chat_on(["acme-x1"])
    busy["spec"]["workload"]["requestsPerSecond"] = 60
    result = validated(acme_pool(nodes=8), busy)
    kept = planning.plan_fleet(result.services, result.pools, with_baseline=False)
    bare = planning.plan_fleet(result.services, result.pools, with_baseline=False, headroom=False)
    assert kept.plan.price_per_hour >= bare.plan.price_per_hour
    kept_capacity = sum(sum(c.max_rps_per_bucket) for c in kept.candidates.problem.candidates)
    bare_capacity = sum(sum(c.max_rps_per_bucket) for c in bare.candidates.problem.candidates)
    assert kept_capacity == pytest.approx(bare_capacity / (1 + trust.FROM_SPECS_TYPICAL_ERROR))
    assert "of predicted capacity" in kept.explanations[0].summary
    assert "of predicted capacity" not in bare.explanations[0].summary


def test_no_prefill_or_decode_candidates_where_the_engines_cannot_split_them() -> None:
    service = SERVICES["assistant-70b"].model_copy(deep=True)
    service.spec.placement = v1alpha1.PlacementConstraints(allowed_accelerators=["inf2", "h100"])
    pools = [planning.to_pool(p) for p in POOLS.values() if p.spec.accelerator in ("inf2", "h100")]
    cset = candidates.build([planning.to_spec(service)], pools)
    roles = {(c.accelerator, c.role) for c in cset.problem.candidates}
    assert {r for a, r in roles if a == "inf2"} <= {"aggregated"}
    assert {"prefill", "decode"} & {r for a, r in roles if a == "h100"}
    # The renderer refuses the same split (one rule: catalog.ENGINE_DISAGGREGATED_VENDORS).
    assert "aws" not in catalog.ENGINE_DISAGGREGATED_VENDORS["vllm"]
