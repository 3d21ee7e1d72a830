"""chipfit.autoscaler: one tick on the examples fleet with Prometheus answers faked, absent or failing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from chipfit import autoscaler, planning, validation
from chipfit.api import v1alpha1

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def fleet() -> tuple[list[v1alpha1.InferenceService], list[v1alpha1.AcceleratorPool]]:
    loaded = validation.load_and_validate([EXAMPLES])
    assert not loaded.problems
    chat = [s for s in loaded.services if s.metadata.name == "chat-8b"]
    assert chat, "examples/ must keep the chat-8b service"
    return chat, list(loaded.pools)


def _answer(rate: float) -> Any:
    def query(promql: str) -> list[dict[str, Any]]:
        if promql.startswith('sum(rate({__name__=~"vllm:request_success_total"'):
            return [{"metric": {}, "value": [0, str(rate)]}]
        if "time_to_first_token_seconds_bucket" in promql and promql.startswith("histogram_quantile"):
            return [{"metric": {}, "value": [0, "0.2"]}]
        return []

    return query


def test_without_prometheus_every_service_says_so_and_nothing_changes(fleet):
    services, pools = fleet
    reports = autoscaler.Autoscaler().tick(services, pools, [], None, 0.0)
    assert len(reports) == len(services)
    for r in reports:
        assert r.outcome is None
        assert r.condition[:2] == (False, "NoPrometheus")


def test_a_rate_above_the_spec_scales_up_with_an_event_and_status(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    spec_rps = services[0].spec.workload.requests_per_second
    [low] = scaler.tick(services, pools, [], _answer(spec_rps), 0.0)
    [high] = scaler.tick(services, pools, [], _answer(spec_rps * 20), 30.0)
    assert low.outcome is not None and high.outcome is not None
    replicas_low = sum(p.replicas for p in low.outcome.placements)
    replicas_high = sum(p.replicas for p in high.outcome.placements)
    assert replicas_high > replicas_low
    assert high.event is not None and high.event[1] in ("ScaledUp", "ScaledMove")
    assert high.status is not None and high.status.observed_requests_per_second == pytest.approx(
        spec_rps * 20
    )
    assert high.status.observed_ttft_p99_ms == pytest.approx(200.0)
    assert high.status.dollars_per_hour and high.status.dollars_per_hour > 0
    assert high.condition[0] is True
    sid = planning.service_id(services[0])
    assert scaler.outcomes[sid] == high.outcome


def test_prometheus_down_holds_and_says_why(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    [first] = scaler.tick(services, pools, [], _answer(5.0), 0.0)

    def down(promql: str) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    [held] = scaler.tick(services, pools, [], down, 30.0)
    assert held.condition[:2] == (False, "MetricsUnavailable")
    assert "connection refused" in held.condition[2]
    assert held.status is not None and held.status.last_decision == "hold"
    assert held.outcome is not None and first.outcome is not None
    assert sum(p.replicas for p in held.outcome.placements) == sum(
        p.replicas for p in first.outcome.placements
    )


def test_drain_time_covers_the_longest_expected_request(fleet):
    from chipfit import render

    services, _ = fleet
    base = services[0]
    short = render.termination_grace_s(base)
    assert short >= render.TERMINATION_GRACE_S
    wl = base.spec.workload
    longer = base.model_copy(
        update={
            "spec": base.spec.model_copy(
                update={
                    "workload": wl.model_copy(
                        update={
                            "output_tokens": wl.output_tokens.model_copy(
                                update={"mean": 2000.0, "p99": 8000.0}
                            )
                        }
                    )
                }
            )
        }
    )
    # 8000 tokens at the ITL SLO, doubled: longer than the floor, never above the cap.
    expected = 2 * (base.spec.slo.ttft_p99_ms / 1000 + 8000 * base.spec.slo.itl_p99_ms / 1000)
    assert render.termination_grace_s(longer) == min(
        render.MAX_TERMINATION_GRACE_S, max(short, math.ceil(expected))
    )
