"""Engine releases: TensorRT-LLM v1.0's measured differences from v0.17 reach the predictions, unknown
releases get the documented default and say so, and a profile is never applied to another release."""

from __future__ import annotations

import pytest

from placement import calibration, candidates, catalog, engine_version, perf, profiles

H100 = catalog.get_accelerator("h100")


def throughput(version: str | None, isl: float, osl: float) -> float:
    config = perf.ReplicaConfig("llama-3.1-8b", H100, "fp8", 1, engine="trtllm")
    eff = engine_version.efficiency(H100, "trtllm", version).efficiency
    return perf.offline_throughput(config, isl, osl, efficiency=eff).output_tokens_per_s


def test_the_v1_ratios_come_from_the_two_releases_measurements() -> None:
    ratio = calibration.engine_version_ratios()[("trtllm", "1.0")]
    assert ratio.reference == "0.17" and ratio.cells >= 9
    # v1.0's published decode-heavy cells are faster than v0.17's, its prefill-heavy cells slower.
    assert ratio.bandwidth_ratio > 1.0 > ratio.compute_ratio


def test_v1_predictions_move_the_way_the_release_measured() -> None:
    assert throughput("1.0", 128, 4096) > throughput("0.17", 128, 4096)
    assert throughput("1.0", 20000, 200) < throughput("0.17", 20000, 200)


@pytest.mark.parametrize("version", ["0.17", "v0.17.0", "0.17.1rc2"])
def test_the_reference_release_is_the_fitted_family(version: str) -> None:
    versioned = engine_version.efficiency(H100, "trtllm", version)
    assert versioned.efficiency == perf.efficiency_for(H100, "trtllm") and versioned.measured


def test_an_unmeasured_release_gets_the_default_and_says_so() -> None:
    versioned = engine_version.efficiency(H100, "trtllm", "1.3.0")
    assert versioned.efficiency == perf.efficiency_for(H100, "trtllm")
    assert not versioned.measured and "no measurements of this release" in versioned.note
    unstated = engine_version.efficiency(H100, "vllm", None)
    assert unstated.measured and "version not given" in unstated.note


def _query(version: str | None) -> candidates.Query:
    return candidates.Query(
        "llama-3.1-8b", "h100", "fp8", 1, "aggregated", "trtllm", 1024, 256, 5000.0, 200.0,
        engine_version=version,
    )  # fmt: skip


def _profile(version: str | None, engine: str = "trtllm") -> profiles.BucketProfile:
    return profiles.BucketProfile(
        "llama-3.1-8b", "h100", "fp8", 1, (0, 2048), (0, 512), ((42.0,),),
        engine=engine, engine_version=version, source="bench-0.17",
    )  # fmt: skip


def test_a_profile_applies_only_to_its_release_and_engine() -> None:
    same = candidates.profile_oracle([_profile("0.17")])(_query("0.17.1"))
    assert same.max_rps == 42.0 and same.trust is not None and same.trust.level == "measured"
    other = candidates.profile_oracle([_profile("0.17")])(_query("1.0"))
    assert other.source == "perf" and other.max_rps != 42.0
    assert other.trust is not None and any(
        "not applied" in n and "trtllm 1.0" in n for n in other.trust.notes
    )
    engine = candidates.profile_oracle([_profile(None, engine="vllm")])(_query(None))
    assert engine.source == "perf" and engine.trust is not None
    assert any("measured on vllm" in n for n in engine.trust.notes)
