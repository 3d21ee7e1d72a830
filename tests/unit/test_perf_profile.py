"""Measured profiles take precedence over the model and are interpolated."""

from __future__ import annotations

import pytest

from placement import perf, profiles

CONFIG = perf.ReplicaConfig("llama-3.1-8b", "l40s", "fp8", 1, engine="vllm")


def sweep(**overrides: object) -> profiles.MeasuredProfile:
    """A concurrency sweep at 1000 prompt / 200 output tokens: throughput saturates, latency climbs."""
    fields: dict[str, object] = {
        "model": "llama-3.1-8b",
        "accelerator": "l40s",
        "precision": "fp8",
        "tp": 1,
        "engine": "vllm",
        "prompt_tokens": 1000,
        "output_tokens": 200,
        "points": (
            profiles.SweepPoint(1, 50.0, ttft_p99_ms=60, itl_p99_ms=20),
            profiles.SweepPoint(8, 360.0, ttft_p99_ms=120, itl_p99_ms=24),
            profiles.SweepPoint(32, 1000.0, ttft_p99_ms=400, itl_p99_ms=36),
            profiles.SweepPoint(64, 1400.0, ttft_p99_ms=1200, itl_p99_ms=52),
        ),
        "source": "test sweep",
    }
    fields.update(overrides)
    return profiles.MeasuredProfile(**fields)  # type: ignore[arg-type]


def test_sweep_interpolates_the_highest_slo_meeting_rate() -> None:
    # ITL 40 ms falls between concurrency 32 (36 ms) and 64 (52 ms): at 32 + 32 x 4/16 = 40, where
    # tokens/s interpolate to 1000 + 400 x 0.25 = 1100, i.e. 5.5 req/s of 200 output tokens.
    result = perf.max_rate_under_slo(CONFIG, 1000, 200, perf.LatencySlo(2000, 40), profiles=(sweep(),))
    assert result.source == "profile:test sweep"
    assert result.max_rps == pytest.approx(5.5, rel=0.01)
    assert result.itl_p99_ms <= 40


def test_sweep_that_never_meets_the_slo_gives_zero() -> None:
    result = perf.max_rate_under_slo(CONFIG, 1000, 200, perf.LatencySlo(2000, 10), profiles=(sweep(),))
    assert result.max_rps == 0.0 and result.reason is not None and "measured" in result.reason


def test_profile_for_another_configuration_is_ignored() -> None:
    other = sweep(accelerator="h100")
    modelled = perf.max_rate_under_slo(CONFIG, 1000, 200, perf.LatencySlo(2000, 40), profiles=(other,))
    assert modelled.source == "model"


def test_sweep_is_rescaled_by_the_model_for_another_request_size() -> None:
    slo = perf.LatencySlo(2000, 40)
    at_size = perf.max_rate_under_slo(CONFIG, 1000, 200, slo, profiles=(sweep(),))
    longer = perf.max_rate_under_slo(CONFIG, 4000, 200, slo, profiles=(sweep(),))
    assert longer.source.startswith("profile:")
    assert 0 < longer.max_rps < at_size.max_rps


def test_bucket_table_answers_only_under_an_slo_at_least_as_strict() -> None:
    table = profiles.MeasuredProfile(
        model="llama-3.1-8b",
        accelerator="l40s",
        precision="fp8",
        tp=1,
        engine="vllm",
        buckets=(
            profiles.BucketRate(0, 512, 0, 256, 9.0),
            profiles.BucketRate(512, 2048, 0, 256, 4.0),
        ),
        bucket_ttft_p99_ms=1000,
        bucket_itl_p99_ms=40,
        source="melange-style",
    )
    assert (
        perf.max_rate_under_slo(CONFIG, 1000, 200, perf.LatencySlo(1500, 50), profiles=(table,)).max_rps
        == 4.0
    )
    assert (
        perf.max_rate_under_slo(CONFIG, 300, 100, perf.LatencySlo(1000, 40), profiles=(table,)).max_rps == 9.0
    )
    # A stricter SLO than the table's: the table cannot vouch for it, the model answers.
    stricter = perf.max_rate_under_slo(CONFIG, 300, 100, perf.LatencySlo(500, 40), profiles=(table,))
    assert stricter.source == "model"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"points": ()}, "needs points"),
        ({"prompt_tokens": None}, "needs prompt_tokens"),
        (
            {
                "points": (
                    profiles.SweepPoint(8, 1.0, 1.0, 1.0),
                    profiles.SweepPoint(4, 1.0, 1.0, 1.0),
                )
            },
            "must increase",
        ),
        ({"tp": 0}, "tp must be"),
    ],
)
def test_malformed_profiles_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(profiles.ProfileError, match=message):
        sweep(**overrides)


def test_per_point_sizes_and_rates_as_the_api_records_them() -> None:
    points = (
        profiles.SweepPoint(1, 50.0, 60, 20, prompt_tokens=1000, output_tokens=200, requests_per_s=0.25),
        profiles.SweepPoint(32, 1000.0, 400, 36, prompt_tokens=1000, output_tokens=200, requests_per_s=5.0),
        profiles.SweepPoint(64, 1400.0, 1200, 52, prompt_tokens=1000, output_tokens=200, requests_per_s=7.0),
    )
    profile = sweep(prompt_tokens=None, output_tokens=None, points=points)
    assert profile.sweep_prompt_tokens == 1000 and profile.sweep_output_tokens == 200
    # ITL 40 ms is a quarter of the way from concurrency 32 to 64: 5.0 + 2.0 x 0.25 = 5.5 req/s.
    result = perf.max_rate_under_slo(CONFIG, 1000, 200, perf.LatencySlo(2000, 40), profiles=(profile,))
    assert result.max_rps == pytest.approx(5.5, rel=0.01)


def test_bucket_table_from_upper_edges() -> None:
    table = profiles.MeasuredProfile.from_bucket_edges(
        "llama-3.1-8b", "l40s", "fp8", 1, "vllm", (512, 2048), (256, 1024), ((9.0, 3.0), (4.0, 1.5)), 1000, 40
    )
    assert len(table.buckets) == 4
    assert (
        perf.max_rate_under_slo(CONFIG, 1000, 500, perf.LatencySlo(1000, 40), profiles=(table,)).max_rps
        == 1.5
    )
    with pytest.raises(profiles.ProfileError, match="max_rps needs 2 rows"):
        profiles.MeasuredProfile.from_bucket_edges(
            "llama-3.1-8b", "l40s", "fp8", 1, "vllm", (512, 2048), (256,), ((9.0,),), 1000, 40
        )
