"""Candidate building with synthetic capacity oracles, and the explanations built on them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement import candidates, explain, perf, profiles, workload
from placement.solver import inputs, solve


def wl(rps: float = 4.0) -> workload.BucketedWorkload:
    """Two buckets: short (half the traffic) and long."""
    return workload.from_grid(rps, (0, 1000, 8000), (0, 500), [[0.5], [0.5]])


def spec(**overrides: object) -> candidates.ServiceSpec:
    fields: dict[str, object] = {
        "id": "ns/svc",
        "model": "m",
        "precisions": ("bf16",),
        "ttft_p99_ms": 500.0,
        "itl_p99_ms": 50.0,
        "workload": wl(),
        "tp_degrees": (1, 2),
    }
    fields.update(overrides)
    return candidates.ServiceSpec(**fields)  # type: ignore[arg-type]


def oracle_from(
    table: dict[tuple[str, int], tuple[float, float]],
) -> tuple[candidates.CapacityOracle, list[int]]:
    """(accelerator, tp) -> (rps for prompts <= 1000, rps above); also counts the questions asked."""
    asked: list[int] = []

    def oracle(q: candidates.Query) -> candidates.Capacity:
        asked.append(q.prompt_tokens)
        short, long_ = table.get((q.accelerator, q.tp), (0.0, 0.0))
        rps = short if q.prompt_tokens <= 1000 else long_
        if rps <= 0.0:
            return candidates.Capacity(
                0.0,
                None,
                None,
                f"TTFT p99 900 ms > {q.ttft_p99_ms:g} ms at zero load",
                "test",
                900.0,
                10.0,
                True,
            )
        return candidates.Capacity(rps, 100.0, 20.0, None, "test")

    return oracle, asked


POOLS = (
    inputs.Pool("small", "l4", 8, 1, 1.0),
    inputs.Pool("big", "h100", 8, 1, 5.0),
    inputs.Pool("mig", "h100/3g.40gb", 16, 1, 2.0, spot=True),
)


def test_candidates_and_rejections_follow_the_oracle() -> None:
    oracle, _ = oracle_from({("l4", 1): (2.0, 0.0), ("h100", 1): (10.0, 5.0)})
    cset = candidates.build([spec()], POOLS, oracle=oracle)
    keys = {(c.pool, c.tp): c.max_rps_per_bucket for c in cset.problem.candidates}
    assert keys == {("small", 1): (2.0, 0.0), ("big", 1): (10.0, 5.0)}
    price = {(c.pool, c.tp): c.price_per_hour for c in cset.problem.candidates}
    assert price[("big", 1)] == 5.0
    # MIG slices: the catalog caps TP at 1, so only tp 1 is asked and rejected.
    assert {(r.pool, r.tp) for r in cset.rejections} == {("small", 2), ("big", 2), ("mig", 1)}


def test_monotone_answers_skip_larger_buckets() -> None:
    # Once 1000-token prompts fail and the oracle vouches that larger requests never do better
    # (size_monotone), the 8000-token bucket's answer is not used, even when the oracle (asked about every
    # bucket in one batch) gives one.
    oracle, _ = oracle_from({("l4", 1): (0.0, 5.0)})
    cset = candidates.build([spec(tp_degrees=(1,))], POOLS[:1], oracle=oracle)
    assert cset.problem.candidates == ()
    assert [r.prompt_tokens for r in cset.rejections] == [1000]


def test_placement_constraints_filter_pools() -> None:
    oracle, _ = oracle_from(
        {("h100", 1): (10.0, 5.0), ("h100/3g.40gb", 1): (3.0, 1.0), ("l4", 1): (2.0, 1.0)}
    )
    only_h100 = candidates.build([spec(allowed_accelerators=frozenset({"h100"}))], POOLS, oracle=oracle)
    assert {c.pool for c in only_h100.problem.candidates} == {"big", "mig"}  # h100 admits its MIG slices
    no_spot = candidates.build([spec(spot_allowed=False)], POOLS, oracle=oracle)
    assert "mig" not in {c.pool for c in no_spot.problem.candidates}
    excluded = candidates.build([spec(excluded_pools=frozenset({"big"}))], POOLS, oracle=oracle)
    assert "big" not in {c.pool for c in excluded.problem.candidates}
    nothing = candidates.build([spec(allowed_pools=frozenset())], POOLS, oracle=oracle)
    assert "placement constraints" in nothing.excluded["ns/svc"]


def test_measured_profile_wins_unless_measured_under_a_looser_slo() -> None:
    table = profiles.BucketProfile("m", "l4", "bf16", 1, (0, 1000, 8000), (0, 500), ((7.0,), (3.0,)))
    fallback, _ = oracle_from({("l4", 1): (1.0, 1.0)})
    cset = candidates.build(
        [spec(tp_degrees=(1,))], POOLS[:1], oracle=candidates.profile_oracle([table], fallback)
    )
    (c,) = cset.problem.candidates
    assert c.max_rps_per_bucket == (7.0, 3.0)
    loose = profiles.BucketProfile(
        "m", "l4", "bf16", 1, (0, 1000, 8000), (0, 500), ((7.0,), (3.0,)), ttft_p99_ms=2000.0
    )
    cset = candidates.build(
        [spec(tp_degrees=(1,))], POOLS[:1], oracle=candidates.profile_oracle([loose], fallback)
    )
    (c,) = cset.problem.candidates
    assert c.max_rps_per_bucket == (1.0, 1.0)


def test_perf_oracle_answers_for_catalog_and_unknown_ids() -> None:
    q = candidates.Query("llama-3.1-8b", "h100", "bf16", 1, "aggregated", "vllm", 1024, 256, 5000.0, 200.0)
    answer = candidates.perf_oracle(q)
    assert answer.max_rps > 0.0 and answer.source == "perf"
    unknown = candidates.perf_oracle(
        candidates.Query("llama-3.1-8b", "x900", "bf16", 1, "aggregated", "vllm", 1024, 256, 5000.0, 200.0)
    )
    assert unknown.max_rps == 0.0 and unknown.reason is not None and "x900" in unknown.reason


def test_explanations_name_runners_up_and_the_binding_reason() -> None:
    oracle, _ = oracle_from({("l4", 1): (2.0, 1.0), ("h100", 1): (10.0, 5.0)})
    cset = candidates.build(
        [spec(), spec(id="ns/huge", model="huge")], POOLS[:2], oracle=_huge_fits_nowhere(oracle)
    )
    plan = solve.solve(cset.problem)
    by_service = {e.service: e for e in explain.explain(cset, plan)}
    served = by_service["ns/svc"]
    assert plan.service("ns/svc").status == "served"
    assert any(r.price_per_hour is not None for r in served.runners_up) or served.runners_up == ()
    huge = by_service["ns/huge"]
    assert plan.service("ns/huge").status == "unserved"
    assert huge.summary.startswith("no pool meets TTFT p99 500 ms for huge")
    assert "900 ms" in huge.summary


def _huge_fits_nowhere(oracle: candidates.CapacityOracle) -> candidates.CapacityOracle:
    def wrapped(q: candidates.Query) -> candidates.Capacity:
        if q.model == "huge":
            return candidates.Capacity(0.0, None, None, "TTFT p99 900 ms > 500 ms", "test", 900.0, 10.0, True)
        return oracle(q)

    return wrapped


@pytest.mark.parametrize("mode", ["aggregated", "disaggregated", "auto"])
def test_roles_follow_the_serving_mode(mode: str) -> None:
    oracle, _ = oracle_from({("h100", 1): (10.0, 5.0)})
    cset = candidates.build([spec(serving=mode)], POOLS[1:2], oracle=oracle)
    roles = {c.role for c in cset.problem.candidates}
    want = {"aggregated": {"aggregated"}, "disaggregated": {"prefill", "decode"}}.get(
        mode, {"aggregated", "prefill", "decode"}
    )
    assert roles == want
    assert solve.solve(cset.problem).service("ns/svc").status == "served"


def test_slos_reported_met_are_met_by_the_performance_model() -> None:
    # A real plan on perf-model capacities: re-ask the model for every bucket each assignment carries and
    # check the time-shared load fits in its replicas (what "SLO met" means for a plan).
    wl_ = workload.from_mean_p99(6.0, 800, 3000, 150, 500)
    svc = spec(
        model="llama-3.1-8b", precisions=("bf16", "fp8"), workload=wl_, tp_degrees=(1, 2), serving="auto"
    )
    pools = (inputs.Pool("l40s", "l40s", 8, 2, 1.84), inputs.Pool("h100", "h100", 8, 1, 4.92))
    cset = candidates.build([svc], pools)
    plan = solve.solve(cset.problem)
    assert plan.service("ns/svc").status == "served"
    slo = perf.LatencySlo(svc.ttft_p99_ms, svc.itl_p99_ms)
    for a in plan.service("ns/svc").assignments:
        load = 0.0
        for b, routed in zip(wl_.buckets, a.bucket_rps, strict=True):
            if routed <= 0.0:
                continue
            rate = perf.max_rate_under_slo(
                perf.ReplicaConfig("llama-3.1-8b", a.accelerator, a.precision, a.tp, a.role),
                b.prompt_mean,
                b.output_mean_tokens,
                slo,
                prompt_tokens_p99=float(b.prompt_tokens),
                output_tokens_p99=float(b.output_tokens),
            )
            assert rate.max_rps > 0.0
            load += routed / rate.max_rps
        assert load <= a.replicas * (1 + 1e-6)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[candidates.ServiceSpec], list[inputs.Pool]]:
    """Random services (lognormal workloads, modes, constraints) and pools, for the whole pipeline."""
    accs = ["l4", "h100", "h100/3g.40gb", "mi300x"]
    pools = [
        inputs.Pool(
            f"p{i}",
            draw(st.sampled_from(accs)),
            draw(st.sampled_from([1, 4, 8])),
            draw(st.integers(0, 2)),
            draw(st.floats(0.1, 10)),
            spot=draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 3)))
    ]
    specs = []
    for i in range(draw(st.integers(1, 3))):
        mean_p = draw(st.floats(10, 8000))
        mean_o = draw(st.floats(5, 1000))
        specs.append(
            spec(
                id=f"ns/s{i}",
                workload=workload.from_mean_p99(
                    draw(st.floats(0, 50)),
                    mean_p,
                    mean_p * draw(st.floats(1, 5)),
                    mean_o,
                    mean_o * draw(st.floats(1, 5)),
                ),
                serving=draw(st.sampled_from(["aggregated", "disaggregated", "auto"])),
                priority=draw(st.integers(0, 2)),
                max_dollars_per_hour=draw(st.none() | st.floats(0.5, 100)),
                spot_allowed=draw(st.booleans()),
                tp_degrees=(1, 2, 4),
            )
        )
    return specs, pools


def _synthetic(q: candidates.Query) -> candidates.Capacity:
    """Capacity falling with request size, zero for the 3g slice above 4k-token prompts."""
    if q.accelerator == "h100/3g.40gb" and q.prompt_tokens > 4096:
        return candidates.Capacity(
            0.0, None, None, "TTFT p99 900 ms > 500 ms at zero load", "test", 900.0, 9.0, True
        )
    base = {"l4": 2.0, "h100": 20.0, "h100/3g.40gb": 8.0, "mi300x": 25.0}[q.accelerator] * q.tp
    return candidates.Capacity(
        base * 1000.0 / (q.prompt_tokens + 10 * q.output_tokens), 100.0, 20.0, None, "test"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_pipeline_never_crashes_and_explains_every_service(
    fleet: tuple[list[candidates.ServiceSpec], list[inputs.Pool]],
) -> None:
    specs, pools = fleet
    cset = candidates.build(specs, pools, oracle=_synthetic)
    plan = solve.solve(cset.problem, inputs.SolveOptions(time_limit_s=10.0))
    explanations = explain.explain(cset, plan)
    assert [e.service for e in explanations] == [s.id for s in specs]
    for e, sp in zip(explanations, plan.services, strict=True):
        assert e.summary
        assert (sp.status == "served") == (sp.reason is None)
    used = {p.id: 0 for p in pools}
    for sp in plan.services:
        for a in sp.assignments:
            used[a.pool] += a.devices
    assert all(used[p.id] <= p.devices_total for p in pools)
