"""The placement MILP against known optima, a brute-force enumerator and generated instances."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.solver import allocation, decompose, inputs, solve
from tests.unit.solver_helpers import brute_force, cand, fits_nodes, pool


def demand(service_id: str, *rates: float, **kwargs: object) -> inputs.ServiceDemand:
    """A service with these per-bucket rates."""
    return inputs.ServiceDemand(service_id, tuple(rates), **kwargs)  # type: ignore[arg-type]


def test_single_bucket_rounds_replicas_up() -> None:
    problem = inputs.FleetProblem(
        services=(demand("s", 10.0),),
        pools=(pool("a", nodes=4),),
        candidates=(cand("s", "a", [3.0], 2.0),),
    )
    plan = solve.solve(problem)
    assert plan.status == "optimal"
    (a,) = plan.service("s").assignments
    assert a.replicas == 4  # ceil(10 / 3)
    assert plan.price_per_hour == pytest.approx(8.0)
    assert plan.service("s").status == "served"


def test_split_by_bucket_is_cheaper_than_either_chip_alone() -> None:
    # Chip a is great at short requests, chip b at long ones; each alone needs 2 replicas, mixed 1 + 1.
    problem = inputs.FleetProblem(
        services=(demand("s", 5.0, 5.0),),
        pools=(pool("a"), pool("b")),
        candidates=(cand("s", "a", [10.0, 1.0], 1.0), cand("s", "b", [1.0, 10.0], 1.0)),
    )
    plan = solve.solve(problem)
    assert plan.price_per_hour == pytest.approx(2.0)
    routed = {a.pool: a.bucket_rps for a in plan.service("s").assignments}
    assert routed["a"] == pytest.approx((5.0, 0.0))
    assert routed["b"] == pytest.approx((0.0, 5.0))


def test_tp_packing_is_exact_on_odd_nodes() -> None:
    # 6-device nodes: a TP-4 replica leaves 2 devices, which only TP-1/2 replicas can use.
    problem = inputs.FleetProblem(
        services=(demand("big", 2.0), demand("small", 4.0)),
        pools=(pool("p", devices_per_node=6, nodes=2),),
        candidates=(cand("big", "p", [1.0], 4.0, tp=4), cand("small", "p", [1.0], 1.0, tp=1)),
    )
    plan = solve.solve(problem)
    assert plan.service("big").status == "served"
    assert plan.service("small").status == "served"
    assert plan.pools[0].devices_used == 12

    # A third TP-4 replica does not fit even though 12 devices exist in total.
    short = inputs.FleetProblem(
        services=(demand("big", 3.0),),
        pools=(pool("p", devices_per_node=6, nodes=2),),
        candidates=(cand("big", "p", [1.0], 4.0, tp=4),),
    )
    plan = solve.solve(short)
    assert plan.service("big").status == "partial"
    assert plan.service("big").served_rps == pytest.approx(2.0, rel=1e-5)


def test_disaggregated_auto_picks_the_cheaper_mode() -> None:
    agg = cand("s", "a", [1.0], 3.0)
    pre = cand("s", "b", [4.0], 1.0, role="prefill")
    dec = cand("s", "c", [2.0], 1.0, role="decode")
    problem = inputs.FleetProblem(
        services=(demand("s", 4.0, serving="auto"),),
        pools=(pool("a"), pool("b"), pool("c")),
        candidates=(agg, pre, dec),
    )
    plan = solve.solve(problem)
    # Aggregated: 4 x $3 = 12; disaggregated: 1 prefill + 2 decode = $3.
    assert plan.service("s").mode == "disaggregated"
    assert plan.price_per_hour == pytest.approx(3.0)
    reps = {a.role: a.replicas for a in plan.service("s").assignments}
    assert reps == {"prefill": 1, "decode": 2}

    cheap_agg = inputs.FleetProblem(
        services=(demand("s", 4.0, serving="auto"),),
        pools=(pool("a"), pool("b"), pool("c")),
        candidates=(cand("s", "a", [4.0], 1.0), pre, dec),
    )
    plan = solve.solve(cheap_agg)
    assert plan.service("s").mode == "aggregated"
    assert plan.price_per_hour == pytest.approx(1.0)


def test_auto_never_mixes_modes_within_a_service() -> None:
    # Mixing (1 agg replica for 1 req/s + disaggregated for the rest) would be cheaper, but one mode wins.
    problem = inputs.FleetProblem(
        services=(demand("s", 3.0, serving="auto"),),
        pools=(pool("a"), pool("b"), pool("c")),
        candidates=(
            cand("s", "a", [1.0], 1.0),
            cand("s", "b", [2.0], 1.0, role="prefill"),
            cand("s", "c", [2.0], 1.0, role="decode"),
        ),
    )
    plan = solve.solve(problem)
    roles = {a.role for a in plan.service("s").assignments}
    assert roles in ({"aggregated"}, {"prefill", "decode"})
    assert plan.service("s").status == "served"


def test_priority_never_loses_capacity_to_lower_priority() -> None:
    # One node of 8 devices; each service wants 6 replicas. The higher priority gets all 6 even though
    # the lower-priority service would use the chips at a lower price per request.
    problem = inputs.FleetProblem(
        services=(demand("low", 6.0, priority=0), demand("high", 6.0, priority=10)),
        pools=(pool("p"),),
        candidates=(cand("low", "p", [1.0], 1.0), cand("high", "p", [1.0], 5.0)),
    )
    plan = solve.solve(problem)
    assert plan.service("high").status == "served"
    assert plan.service("low").status == "partial"
    assert plan.service("low").served_rps == pytest.approx(2.0, rel=1e-5)
    assert plan.service("low").reason is not None and "priority" in plan.service("low").reason
    assert plan.stages > 1


def test_budget_limits_a_service_and_says_so() -> None:
    problem = inputs.FleetProblem(
        services=(demand("s", 10.0, max_dollars_per_hour=3.0),),
        pools=(pool("p", nodes=2),),
        candidates=(cand("s", "p", [1.0], 1.0),),
    )
    plan = solve.solve(problem)
    s = plan.service("s")
    assert s.status == "partial"
    assert s.price_per_hour <= 3.0
    assert s.served_rps == pytest.approx(3.0, rel=1e-5)
    assert s.reason is not None and "budget" in s.reason


def test_stability_penalty_keeps_running_replicas() -> None:
    running = cand("s", "old", [1.0], 1.0)
    cheaper = cand("s", "new", [1.0], 0.9)
    base = inputs.FleetProblem(
        services=(demand("s", 4.0),),
        pools=(pool("old"), pool("new")),
        candidates=(running, cheaper),
        current_replicas={running.key: 4},
    )
    moved = solve.solve(base)
    assert {a.pool for a in moved.service("s").assignments} == {"new"}
    kept = solve.solve(base, inputs.SolveOptions(move_penalty_per_device_hour=0.5))
    assert {a.pool: a.replicas for a in kept.service("s").assignments} == {"old": 4}
    assert kept.price_per_hour == pytest.approx(4.0)


def test_zero_traffic_and_min_replicas() -> None:
    problem = inputs.FleetProblem(
        services=(demand("idle", 0.0), demand("warm", 0.0, min_replicas=2)),
        pools=(pool("a"), pool("b")),
        candidates=(
            cand("idle", "a", [1.0], 1.0),
            cand("warm", "a", [1.0], 3.0),
            cand("warm", "b", [1.0], 2.0),
        ),
    )
    plan = solve.solve(problem)
    assert plan.service("idle").assignments == ()
    assert plan.service("idle").status == "served"
    assert plan.service("warm").price_per_hour == pytest.approx(4.0)


def test_model_that_fits_nowhere_is_unserved_with_a_reason() -> None:
    problem = inputs.FleetProblem(
        services=(demand("huge", 2.0), demand("ok", 1.0)),
        pools=(pool("a"),),
        candidates=(cand("huge", "a", [0.0], 1.0), cand("ok", "a", [1.0], 1.0)),
    )
    plan = solve.solve(problem)
    assert plan.service("huge").status == "unserved"
    assert plan.service("huge").reason is not None and "SLO" in plan.service("huge").reason
    assert plan.service("ok").status == "served"
    assert plan.stages == 1  # uncoverable demand needs no lexicographic stages


def test_no_pools_leaves_everything_unserved() -> None:
    plan = solve.solve(inputs.FleetProblem(services=(demand("s", 1.0),), pools=(), candidates=()))
    assert plan.service("s").status == "unserved"
    assert plan.price_per_hour == 0.0


def test_min_replicas_that_cannot_fit_raise_infeasible() -> None:
    problem = inputs.FleetProblem(
        services=(demand("s", 0.0, min_replicas=3),),
        pools=(pool("a", devices_per_node=2),),
        candidates=(cand("s", "a", [1.0], 1.0),),
    )
    with pytest.raises(inputs.InfeasibleError, match="replica minimums"):
        solve.solve(problem)


@pytest.mark.parametrize(
    ("problem", "field"),
    [
        (inputs.FleetProblem((demand("s", -1.0),), (pool("a"),), ()), "bucket_rps"),
        (inputs.FleetProblem((demand("s", 1.0),), (pool("a"),), (cand("s", "zz", [1.0], 1.0),)), "pool"),
        (
            inputs.FleetProblem((demand("s", 1.0),), (pool("a"),), (cand("s", "a", [1.0, 2.0], 1.0),)),
            "max_rps_per_bucket",
        ),
        (
            inputs.FleetProblem(
                (demand("s", 1.0),), (pool("a", devices_per_node=2),), (cand("s", "a", [1.0], 1.0, tp=4),)
            ),
            "tp",
        ),
        (inputs.FleetProblem((demand("s", 1.0),), (pool("a"), pool("a")), ()), "defined twice"),
        (
            inputs.FleetProblem(
                (demand("s", 1.0),), (pool("a"),), (cand("s", "a", [1.0], 1.0, role="prefill"),)
            ),
            "role",
        ),
    ],
)
def test_invalid_problems_name_the_field(problem: inputs.FleetProblem, field: str) -> None:
    with pytest.raises(inputs.InvalidProblemError, match=field):
        solve.solve(problem)


def test_inputs_are_not_mutated() -> None:
    current = {cand("s", "a", [1.0], 1.0).key: 1}
    problem = inputs.FleetProblem((demand("s", 2.0),), (pool("a"),), (cand("s", "a", [1.0], 1.0),), current)
    before = repr(problem)
    solve.solve(problem, inputs.SolveOptions(move_penalty_per_device_hour=1.0))
    assert repr(problem) == before


# ---------------------------------------------------------------------------------------------------
# Brute force and generated instances.

caps_st = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0]), min_size=2, max_size=2)


@st.composite
def tiny_problems(draw: st.DrawFn) -> inputs.FleetProblem:
    """Up to 2 services x 2 buckets on up to 2 pools with TP 1 or 2."""
    n_pools = draw(st.integers(1, 2))
    pools = tuple(
        inputs.Pool(f"p{j}", f"p{j}", draw(st.sampled_from([2, 3, 4])), draw(st.integers(0, 2)), 1.0)
        for j in range(n_pools)
    )
    services = []
    cands = []
    for i in range(draw(st.integers(1, 2))):
        rates = tuple(draw(st.sampled_from([0.0, 0.5, 1.0, 2.5, 4.0])) for _ in range(2))
        services.append(inputs.ServiceDemand(f"s{i}", rates, priority=draw(st.integers(0, 1))))
        for p in pools:
            for tp in draw(st.sets(st.sampled_from([1, 2]), min_size=1, max_size=2)):
                if tp <= p.devices_per_node:
                    price = draw(st.sampled_from([0.5, 1.0, 1.7, 3.0])) * tp
                    cands.append(cand(f"s{i}", p.id, draw(caps_st), price, tp=tp))
    return inputs.FleetProblem(tuple(services), pools, tuple(cands))


def _check_plan(problem: inputs.FleetProblem, plan: allocation.Plan) -> None:
    """Independent checks: pools fit node by node, replicas carry their load, traffic adds up."""
    pools = {p.id: p for p in problem.pools}
    for p in problem.pools:
        sizes = [
            a.tp for s in plan.services for a in s.assignments if a.pool == p.id for _ in range(a.replicas)
        ]
        assert fits_nodes(sizes, p.devices_per_node, p.nodes), f"pool {p.id} over-allocated"
        assert sum(sizes) <= pools[p.id].devices_total
    caps = {c.key: c.max_rps_per_bucket for c in problem.candidates}
    for s, demand_ in zip(plan.services, problem.services, strict=True):
        # A request passes aggregated or prefill replicas once, and aggregated or decode replicas once.
        front = [0.0] * len(demand_.bucket_rps)
        back = [0.0] * len(demand_.bucket_rps)
        for a in s.assignments:
            key = inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)
            load = sum(r / c for r, c in zip(a.bucket_rps, caps[key], strict=False) if r > 0)
            assert load <= a.replicas * (1 + 1e-6) + 1e-6
            if a.role != "decode":
                front = [x + y for x, y in zip(front, a.bucket_rps, strict=False)]
            if a.role != "prefill":
                back = [x + y for x, y in zip(back, a.bucket_rps, strict=False)]
        for f, b, want in zip(front, back, demand_.bucket_rps, strict=False):
            assert f <= want * (1 + 1e-6) + 1e-9
            assert f == pytest.approx(b, abs=1e-5 * max(1.0, want))
        # HiGHS's feasibility tolerance is relative to the row scaling: allow 1e-5 of the demand.
        assert sum(front) == pytest.approx(s.served_rps, abs=1e-5 * max(1.0, demand_.requests_per_second))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems())
def test_matches_brute_force_and_never_over_allocates(problem: inputs.FleetProblem) -> None:
    plan = solve.solve(problem)
    _check_plan(problem, plan)
    best = brute_force(problem)
    fully_served = all(s.status == "served" for s in plan.services)
    if best is None:
        assert not fully_served
    else:
        assert fully_served
        assert plan.price_per_hour == pytest.approx(best, rel=1e-6, abs=1e-6)


@st.composite
def messy_problems(draw: st.DrawFn) -> inputs.FleetProblem:
    """Arbitrary shapes, modes, floors, budgets and priorities: the solver must answer or raise cleanly."""
    pools = tuple(
        inputs.Pool(f"p{j}", "x", draw(st.integers(1, 8)), draw(st.integers(0, 3)), draw(st.floats(0, 10)))
        for j in range(draw(st.integers(0, 3)))
    )
    services = []
    cands = []
    n_buckets = draw(st.integers(1, 3))
    for i in range(draw(st.integers(1, 3))):
        mode = draw(st.sampled_from(inputs.SERVING_MODES))
        services.append(
            inputs.ServiceDemand(
                f"s{i}",
                tuple(draw(st.floats(0, 20)) for _ in range(n_buckets)),
                serving=mode,
                min_replicas=draw(st.integers(0, 2)),
                priority=draw(st.integers(0, 2)),
                max_dollars_per_hour=draw(st.none() | st.floats(0, 50)),
            )
        )
        roles: list[inputs.Role] = {
            "aggregated": ["aggregated"],
            "disaggregated": ["prefill", "decode"],
            "auto": ["aggregated", "prefill", "decode"],
        }[mode]  # type: ignore[assignment]
        for p in pools:
            for role in roles:
                tp = draw(st.sampled_from([t for t in (1, 2, 4, 8) if t <= p.devices_per_node]))
                caps = [draw(st.sampled_from([0.0, 0.3, 1.0, 7.5])) for _ in range(n_buckets)]
                cands.append(cand(f"s{i}", p.id, caps, draw(st.floats(0, 20)), tp=tp, role=role))
    return inputs.FleetProblem(tuple(services), pools, tuple(cands))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_problems())
def test_generated_problems_never_crash_or_over_allocate(problem: inputs.FleetProblem) -> None:
    try:
        plan = solve.solve(problem)
    except inputs.InfeasibleError as error:
        assert any(s.min_replicas > 0 for s in problem.services), str(error)
        return
    _check_plan(problem, plan)
    assert plan.price_per_hour >= 0.0 and math.isfinite(plan.price_per_hour)
    for s in plan.services:
        assert (s.status == "served") == (s.reason is None)
        if s.price_per_hour > 0 and s.status == "served":
            budget = next(d.max_dollars_per_hour for d in problem.services if d.id == s.service)
            assert budget is None or s.price_per_hour <= budget + 1e-6


# ---------------------------------------------------------------------------------------------------
# Column generation and the large-fleet decomposition against the exact MILP.


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems())
def test_column_generation_keeps_plans_valid_and_bounds_honest(problem: inputs.FleetProblem) -> None:
    exact = solve.solve(problem, inputs.SolveOptions(method="milp"))
    pruned = solve.solve(problem, inputs.SolveOptions(method="milp", max_candidates_per_bucket=1))
    _check_plan(problem, pruned)
    if all(s.status == "served" for s in pruned.services):
        assert pruned.price_per_hour >= exact.price_per_hour - 1e-6
    if pruned.bound_source == "full-lp" and all(s.status == "served" for s in exact.services):
        assert pruned.bound <= exact.price_per_hour + 1e-6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny_problems())
def test_decomposition_is_feasible_and_its_bound_valid(problem: inputs.FleetProblem) -> None:
    options = inputs.SolveOptions(method="decompose")
    if not decompose.decomposable(problem, options):
        with pytest.raises(inputs.InvalidProblemError):
            decompose.decompose(problem, options)
        return
    plan = solve.solve(problem, options)
    _check_plan(problem, plan)
    exact = solve.solve(problem, inputs.SolveOptions(method="milp"))
    if all(s.status == "served" for s in exact.services) and all(s.status == "served" for s in plan.services):
        assert plan.price_per_hour >= exact.price_per_hour - 1e-6
        assert plan.bound <= exact.price_per_hour + 1e-6


def test_decomposition_prices_full_pools_out() -> None:
    # Both services prefer pool a (cheaper per req/s) but it holds only one of them.
    problem = inputs.FleetProblem(
        services=(demand("s1", 4.0), demand("s2", 4.0)),
        pools=(pool("a", devices_per_node=4, nodes=1), pool("b", devices_per_node=8, nodes=1)),
        candidates=(
            cand("s1", "a", [1.0], 1.0),
            cand("s2", "a", [1.0], 1.0),
            cand("s1", "b", [1.0], 1.5),
            cand("s2", "b", [1.0], 1.5),
        ),
    )
    plan = decompose.decompose(problem)
    _check_plan(problem, plan)
    assert plan.price_per_hour == pytest.approx(10.0)
    assert {a.pool for s in plan.services for a in s.assignments} == {"a", "b"}


def test_max_utilization_leaves_headroom_and_reports_real_utilization() -> None:
    problem = inputs.FleetProblem(
        services=(demand("s", 10.0),),
        pools=(pool("a", nodes=4),),
        candidates=(cand("s", "a", [3.0], 2.0),),
    )
    plan = solve.solve(problem, inputs.SolveOptions(max_utilization=0.5))
    (a,) = plan.service("s").assignments
    assert a.replicas == 7  # ceil(10 / (3 x 0.5))
    assert a.utilization == pytest.approx(10.0 / (7 * 3.0))
    with pytest.raises(inputs.InvalidProblemError, match="max_utilization"):
        solve.solve(problem, inputs.SolveOptions(max_utilization=0.0))


def test_auto_turns_on_column_generation_for_many_candidates() -> None:
    # 60 disaggregated services x 2 roles x 50 pools = 6,000 candidates: above the auto threshold.
    pools = tuple(inputs.Pool(f"p{j}", f"chip{j % 5}", 8, 4, 1.0 + 0.1 * (j % 7)) for j in range(50))
    services = tuple(
        inputs.ServiceDemand(f"s{i}", (1.0 + i % 3, 2.0), serving="disaggregated") for i in range(60)
    )
    cands = tuple(
        cand(s.id, p.id, [1.0 + (j % 4), 0.5 + (j % 3)], p.price_per_device_hour, role=role)
        for s in services
        for j, p in enumerate(pools)
        for role in ("prefill", "decode")
    )
    problem = inputs.FleetProblem(services, pools, cands)
    assert len(cands) > solve.AUTO_COLUMN_GENERATION_CANDIDATES
    # Small integer services make the LP bound weak and HiGHS slow to prove optimality: any incumbent will do.
    plan = solve.solve(problem, inputs.SolveOptions(time_limit_s=3.0))
    _check_plan(problem, plan)
    assert plan.bound_source == "full-lp"
    assert plan.bound <= plan.price_per_hour + 1e-6
    assert all(s.status == "served" for s in plan.services)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messy_problems())
def test_decomposition_handles_every_mode_and_floor(problem: inputs.FleetProblem) -> None:
    # Any serving mode and replica floors; no ceilings or budgets (those go to the MILP).
    problem = inputs.FleetProblem(
        tuple(dataclasses.replace(s, max_replicas=None, max_dollars_per_hour=None) for s in problem.services),
        problem.pools,
        problem.candidates,
    )
    options = inputs.SolveOptions(method="decompose")
    if not decompose.decomposable(problem, options):
        return
    try:
        plan = solve.solve(problem, options)
    except inputs.InfeasibleError:
        # Floors that do not fit are hard, as in the MILP.
        assert any(s.min_replicas > 0 for s in problem.services)
        return
    _check_plan(problem, plan)
    for sp, demand_ in zip(plan.services, problem.services, strict=True):
        for role in {a.role for a in sp.assignments}:
            placed = sum(a.replicas for a in sp.assignments if a.role == role)
            assert placed >= demand_.min_replicas
    try:
        exact = solve.solve(problem, inputs.SolveOptions(method="milp"))
    except inputs.InfeasibleError:
        return
    if all(s.status == "served" for s in exact.services) and all(s.status == "served" for s in plan.services):
        assert plan.price_per_hour >= exact.price_per_hour - 1e-6
        assert plan.bound <= exact.price_per_hour + 1e-6
