"""The primal heuristic (placement.solver.primal) and the column-generation fix of issue #15.3.

Feasibility is checked independently of the solver: node packing by exact backtracking (fits_nodes),
routing by the served rates, budgets, ceilings and floors from the plan; quality against a direct MILP.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement.solver import allocation, colgen, formulation, highs, inputs, primal, solve, stages
from tests.unit.solver_helpers import cand, fits_nodes, pool

TOL = 1e-6


def _check_feasible(problem: inputs.FleetProblem, plan: allocation.Plan) -> None:
    """Independent checks: nodes, routing within capacity, floors, ceilings, budgets."""
    pools = {p.id: p for p in problem.pools}
    services = {s.id: s for s in problem.services}
    by_key = {c.key: c for c in problem.candidates}
    sizes: dict[str, list[int]] = defaultdict(list)
    for sp in plan.services:
        s = services[sp.service]
        per_role: dict[str, int] = defaultdict(int)
        for a in sp.assignments:
            c = by_key[inputs.CandidateKey(a.service, a.role, a.pool, a.precision, a.tp)]
            sizes[a.pool] += [a.tp] * a.replicas
            per_role[a.role] += a.replicas
            load = sum(r / cap for r, cap in zip(a.bucket_rps, c.max_rps_per_bucket, strict=True) if r > 0)
            assert all(cap > 0 for r, cap in zip(a.bucket_rps, c.max_rps_per_bucket, strict=True) if r > TOL)
            assert load <= a.replicas * (1 + 1e-6) + 1e-6
        for k, rate in enumerate(s.bucket_rps):
            routed = sum(a.bucket_rps[k] for a in sp.assignments if a.role != "decode")
            assert routed <= rate * (1 + 1e-6) + 1e-9
        if s.max_replicas is not None:
            assert all(n <= s.max_replicas for n in per_role.values())
        if s.max_dollars_per_hour is not None:
            assert sp.price_per_hour <= s.max_dollars_per_hour * (1 + 1e-9) + 1e-9
        if s.min_replicas and sp.assignments:
            assert all(n >= s.min_replicas for n in per_role.values())
    for pool_id, tps in sizes.items():
        p = pools[pool_id]
        assert fits_nodes(tps, p.devices_per_node, p.nodes), f"{pool_id}: {sorted(tps)} do not pack"


@st.composite
def fleets(draw: st.DrawFn) -> inputs.FleetProblem:
    """Small fleets: 2-4 services, 2-3 pools (one with 12-device nodes and TP 8), budgets, ceilings."""
    n_pools = draw(st.integers(2, 3))
    pools = [
        inputs.Pool(
            f"p{j}",
            f"chip{j}",
            12 if j == 0 else 8,
            draw(st.integers(1, 2)),
            draw(st.sampled_from([0.5, 1.0, 1.5, 2.5])),
        )
        for j in range(n_pools)
    ]
    services = []
    cands = []
    for i in range(draw(st.integers(2, 4))):
        sid = f"s{i}"
        rates = tuple(draw(st.floats(0.1, 6.0)) for _ in range(2))
        services.append(
            inputs.ServiceDemand(
                sid,
                rates,
                priority=draw(st.sampled_from([0, 100])),
                max_replicas=draw(st.sampled_from([None, 3, 6])),
                max_dollars_per_hour=draw(st.sampled_from([None, None, 12.0])),
            )
        )
        for p in pools:
            for tp in draw(st.sets(st.sampled_from([1, 2, 4, 8]), min_size=1, max_size=2)):
                caps = [draw(st.floats(0.5, 4.0)) * tp**0.5 for _ in rates]
                cands.append(cand(sid, p.id, caps, p.price_per_device_hour * tp, tp=tp))
    return inputs.FleetProblem(tuple(services), tuple(pools), tuple(cands))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets())
def test_the_heuristic_plan_is_feasible_and_never_below_the_direct_milp(problem: inputs.FleetProblem) -> None:
    plan = primal.solve(problem, inputs.SolveOptions(method="primal", time_limit_s=20))
    _check_feasible(problem, plan)
    if not math.isnan(plan.bound):
        # A bound is claimed only for a plan serving every service all it can be served even alone (its
        # budget or ceiling may forbid more), and it is below its price.
        assert plan.bound <= plan.price_per_hour * (1 + 1e-9) + 1e-9
        for sp in plan.services:
            if sp.status != "served":
                s = next(x for x in problem.services if x.id == sp.service)
                alone = inputs.FleetProblem(
                    (s,), problem.pools, tuple(c for c in problem.candidates if c.service == s.id)
                )
                best_alone = stages.solve_milp(alone, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
                assert sp.served_rps >= best_alone.services[0].served_rps - 1e-6 * max(1.0, sp.demand_rps)
    exact = stages.solve_milp(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9, time_limit_s=20))
    # The MILP's priority pins may give up inputs.UNMET_NOISE of a level's demand: that much slack.
    slack = inputs.UNMET_NOISE * max(1.0, sum(s.requests_per_second for s in problem.services))
    levels = sorted({s.priority for s in problem.services}, reverse=True)

    def by_level(p: allocation.Plan) -> list[float]:
        prio = {s.id: s.priority for s in problem.services}
        return [sum(sp.served_rps for sp in p.services if prio[sp.service] == lvl) for lvl in levels]

    # The MILP serves by priority first, lexicographically: the heuristic cannot serve more of the first
    # level where they differ; serving the same at every level, it cannot cost less.
    mine, best = by_level(plan), by_level(exact)
    for a, b in zip(mine, best, strict=True):
        assert a <= b + slack
        if a < b - slack:
            break
    same = all(abs(a - b) <= slack for a, b in zip(mine, best, strict=True))
    if same and exact.status == "optimal":
        assert plan.price_per_hour >= exact.price_per_hour * (1 - 1e-6) - 1e-6
    if not math.isnan(plan.bound) and exact.status == "optimal":
        # The optimum lies between the heuristic's bound and its price.
        assert plan.bound <= exact.objective * (1 + 1e-6) + 1e-6


def test_a_twelve_core_node_takes_one_tp8_replica() -> None:
    # 12-device nodes: TP 8 and TP 4 do not pack by device count (8 + 4 + ... ), the heuristic counts a
    # TP-8 replica as a whole node; two nodes hold two TP-8 replicas, not three (24 devices / 8).
    s = inputs.ServiceDemand("s", (5.9,))
    problem = inputs.FleetProblem(
        (s,),
        (pool("inf", devices_per_node=12, nodes=2), pool("dear", 8, 4, price=10.0)),
        (
            cand("s", "inf", [2.0], 8.0, tp=8),
            cand("s", "inf", [0.5], 4.0, tp=4),
            cand("s", "dear", [2.0], 80.0, tp=8),
        ),
    )
    plan = primal.solve(problem, inputs.SolveOptions(method="primal"))
    _check_feasible(problem, plan)
    assert plan.service("s").status == "served"


def test_higher_priority_is_placed_first_when_capacity_is_short() -> None:
    # One node, room for one replica: the priority-100 service gets it whatever the prices.
    services = (
        inputs.ServiceDemand("low", (1.0,), priority=0),
        inputs.ServiceDemand("high", (1.0,), priority=100),
    )
    problem = inputs.FleetProblem(
        services,
        (pool("a", devices_per_node=1, nodes=1),),
        (cand("low", "a", [2.0], 1.0), cand("high", "a", [2.0], 1.0)),
    )
    plan = primal.solve(problem, inputs.SolveOptions(method="primal"))
    assert plan.service("high").status == "served"
    assert plan.service("low").status == "unserved"
    assert math.isnan(plan.bound)  # no bound claimed for a plan leaving coverable demand out


def test_an_uncoverable_bucket_does_not_send_the_lp_to_the_priority_stages() -> None:
    # Bucket 1 has traffic no candidate can take (long prompts beyond every SLO): the MILP leaves it
    # unserved and plans the rest in one stage; the column-generation LP must agree (it said "needs
    # unmet" before, and the whole fleet went through the slower priority stages).
    s = inputs.ServiceDemand("s", (1.0, 0.3))
    problem = inputs.FleetProblem((s,), (pool("a", nodes=2),), (cand("s", "a", [2.0, 0.0], 1.0),))
    pruned = colgen.prune(problem, inputs.SolveOptions(max_candidates_per_bucket=1))
    assert not pruned.lp_needs_unmet
    assert pruned.full_lp_bound == pytest.approx(0.5)
    plan = stages.solve_milp(problem, inputs.SolveOptions(max_candidates_per_bucket=1))
    assert plan.stages == 1
    assert plan.service("s").served_rps == pytest.approx(1.0)


def test_auto_falls_back_to_the_heuristic_when_highs_finds_no_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_incumbent(*_args: object, **_kwargs: object) -> allocation.Plan:
        raise inputs.SolverError("solver: HiGHS stopped without a solution (time limit)")

    monkeypatch.setattr(stages, "solve_milp", no_incumbent)
    services = (inputs.ServiceDemand("a", (3.0,)), inputs.ServiceDemand("b", (1.0,)))
    problem = inputs.FleetProblem(
        services, (pool("x", nodes=1),), (cand("a", "x", [1.0], 1.0), cand("b", "x", [2.0], 1.0))
    )
    plan = solve.solve(problem)
    assert all(s.status == "served" for s in plan.services)
    assert plan.price_per_hour == pytest.approx(4.0)
    # The LP bound is 3.5 (b needs half a replica); the Lagrangian bound knows half a replica costs one.
    assert plan.bound_source == "lagrangian"
    assert plan.bound == pytest.approx(4.0) and plan.gap == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(inputs.SolverError):
        solve.solve(problem, inputs.SolveOptions(method="milp"))


def test_highs_from_a_start_returns_a_plan_at_least_as_good_as_the_start() -> None:
    # A deliberately poor start (both services on the dear pool): HiGHS, started from it, must return a
    # solution no dearer than the start, and here the optimum (both on the cheap pool).
    services = (inputs.ServiceDemand("a", (1.5,)), inputs.ServiceDemand("b", (0.5,)))
    pools = (pool("cheap", nodes=1, price=1.0), pool("dear", nodes=1, price=3.0))
    cands = tuple(cand(s.id, p.id, [1.0], p.price_per_device_hour) for s in services for p in pools)
    problem = inputs.FleetProblem(services, pools, cands)
    model = formulation.build(problem, inputs.SolveOptions())
    start_replicas = {
        c.key: (2 if c.service == "a" else 1) if c.pool == "dear" else 0 for c in model.candidates
    }
    start = [(model.n_index[k], float(start_replicas[c.key])) for k, c in enumerate(model.candidates)]
    run = highs.run_from(model, start, inputs.SolveOptions(mip_rel_gap=1e-9), time.perf_counter() + 30)
    assert run is not None
    assert run.objective <= 3 * 3.0 + 1e-9  # the start costs $9/h
    assert run.objective == pytest.approx(3.0)  # 2 + 1 replicas on the cheap pool
    plan = stages.decode(problem, model, run, stages=1, seconds=0.0)
    _check_feasible(problem, plan)


def test_polish_keeps_the_heuristic_plan_unless_highs_finds_a_cheaper_one() -> None:
    services = tuple(inputs.ServiceDemand(f"s{i}", (0.6 + 0.3 * i, 0.4)) for i in range(4))
    pools = (pool("a", 4, 1, 1.0), pool("b", 8, 1, 1.3))
    cands = tuple(
        cand(s.id, p.id, [1.0 + 0.1 * j, 2.0], p.price_per_device_hour * tp, tp=tp)
        for s in services
        for j, p in enumerate(pools)
        for tp in (1, 2)
    )
    problem = inputs.FleetProblem(services, pools, cands)
    plan = primal.solve(problem, inputs.SolveOptions(method="primal", mip_rel_gap=1e-9))
    _check_feasible(problem, plan)
    exact = stages.solve_milp(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
    # Polished by HiGHS from the heuristic's plan with every column the LP needs: the optimum here.
    assert plan.price_per_hour == pytest.approx(exact.price_per_hour, rel=1e-6)
    assert plan.bound <= exact.price_per_hour * (1 + 1e-9)


@pytest.mark.parametrize("method", ["milp", "primal", "dantzig-wolfe"])
@pytest.mark.parametrize("serving", ["aggregated", "disaggregated"])
def test_on_demand_floor_keeps_a_share_of_every_stage_off_spot(method: str, serving: str) -> None:
    roles: tuple[inputs.Role, ...] = ("aggregated",) if serving == "aggregated" else ("prefill", "decode")
    spot = inputs.Pool("spot", "x", 8, 2, 0.5, spot=True)
    od = inputs.Pool("od", "x", 8, 2, 2.0)
    s = inputs.ServiceDemand("s", (3.0, 1.0), serving=serving)  # type: ignore[arg-type]
    cands = tuple(
        cand("s", p.id, [1.0, 1.0], p.price_per_device_hour, role=role) for p in (spot, od) for role in roles
    )
    problem = inputs.FleetProblem((s,), (spot, od), cands)
    free = solve.solve(problem, inputs.SolveOptions(method=method))  # type: ignore[arg-type]
    assert all(a.pool == "spot" for a in free.service("s").assignments)
    plan = solve.solve(problem, inputs.SolveOptions(method=method, on_demand_floor=0.5))  # type: ignore[arg-type]
    _check_feasible(problem, plan)
    assert plan.service("s").status == "served"
    for stage in (("aggregated", "prefill"), ("aggregated", "decode")):
        for k, rate in enumerate(s.bucket_rps):
            routed = [a for a in plan.service("s").assignments if a.role in stage]
            on_demand = sum(a.bucket_rps[k] for a in routed if a.pool == "od")
            if routed:
                assert on_demand >= 0.5 * rate * (1 - 1e-6)


def test_on_demand_floor_without_an_on_demand_configuration_is_ignored_and_out_of_range_is_refused() -> None:
    spot = inputs.Pool("spot", "x", 8, 2, 0.5, spot=True)
    problem = inputs.FleetProblem(
        (inputs.ServiceDemand("s", (1.0,)),), (spot,), (cand("s", "spot", [2.0], 0.5),)
    )
    plan = solve.solve(problem, inputs.SolveOptions(on_demand_floor=0.5))
    assert plan.service("s").status == "served"
    with pytest.raises(inputs.InvalidProblemError, match="on_demand_floor"):
        solve.solve(problem, inputs.SolveOptions(on_demand_floor=1.5))


def test_the_milp_starts_from_the_current_placement_and_never_ends_worse() -> None:
    # What runs now (3 dear replicas of a) is feasible; started from it, the plan's objective (price plus
    # the stability penalty for what it removes) is never above the start's (its price, nothing removed).
    services = (inputs.ServiceDemand("a", (2.5,)), inputs.ServiceDemand("b", (0.8,)))
    pools = (pool("cheap", nodes=1, price=1.0), pool("dear", nodes=1, price=3.0))
    cands = tuple(cand(s.id, p.id, [1.0], p.price_per_device_hour) for s in services for p in pools)
    now = {
        inputs.CandidateKey("a", "aggregated", "dear", "bf16", 1): 3,
        inputs.CandidateKey("b", "aggregated", "cheap", "bf16", 1): 1,
    }
    problem = inputs.FleetProblem(services, pools, cands, now)
    start_price = 3 * 3.0 + 1 * 1.0
    for penalty in (0.0, 0.5, 5.0):
        options = inputs.SolveOptions(method="milp", move_penalty_per_device_hour=penalty, mip_rel_gap=1e-9)
        plan = solve.solve(problem, options)
        _check_feasible(problem, plan)
        assert plan.objective <= start_price + 1e-9
        assert all(s.status == "served" for s in plan.services)
    # Without a penalty the optimum moves a to the cheap pool (3 + 1 replicas fit its 8 devices): $4/h.
    plan = solve.solve(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
    assert plan.price_per_hour == pytest.approx(4.0)
    # With a penalty above the saving per device, a stays where it is.
    plan = solve.solve(problem, inputs.SolveOptions(method="milp", move_penalty_per_device_hour=5.0))
    assert plan.price_per_hour == pytest.approx(start_price)


def _specialists_fleet() -> inputs.FleetProblem:
    """Services whose cheapest plan splits three buckets over three specialist pools (the exact one-service
    MILP finds it; the vectorised single or primary + filler plan cannot), with a generalist pool too."""
    pools = (pool("a", 8, 1, 1.0), pool("b", 8, 1, 1.0), pool("c", 8, 1, 1.0), pool("g", 8, 2, 1.0))
    services = tuple(inputs.ServiceDemand(f"s{i}", (1.0 + 0.2 * i, 0.9, 0.8 + 0.1 * i)) for i in range(4))
    cands = tuple(
        c
        for s in services
        for c in (
            cand(s.id, "a", [4.0, 0.0, 0.0], 0.5),
            cand(s.id, "b", [0.0, 4.0, 0.0], 0.5),
            cand(s.id, "c", [0.0, 0.0, 4.0], 0.5),
            cand(s.id, "g", [1.2, 1.2, 1.2], 1.0),
        )
    )
    return inputs.FleetProblem(services, pools, cands)


def _fingerprint(plan: allocation.Plan) -> list[tuple[str, str, int, tuple[float, ...]]]:
    return [
        (a.service, a.pool, a.replicas, tuple(round(r, 9) for r in a.bucket_rps))
        for sp in plan.services
        for a in sp.assignments
    ]


def test_the_heuristic_is_deterministic_however_slow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work limits, not wall-clock caps: on a machine where every step seems to take 20 s (a loaded
    machine, in the extreme) the heuristic gives the very plan and bound it gives on a quiet one, as long
    as the time limit (the safety net) is not reached."""
    problem = _specialists_fleet()
    options = inputs.SolveOptions(method="primal", time_limit_s=1e9)
    quiet = primal.solve(problem, options)
    again = primal.solve(problem, options)
    assert _fingerprint(again) == _fingerprint(quiet) and again.bound == quiet.bound
    # Specialists: one replica per bucket on a, b and c ($1.50/h a service) beat the generalist (3 replicas
    # of g, or one specialist and 2 of g): the exact plans found it.
    assert quiet.price_per_hour == pytest.approx(4 * 1.5)
    real = time.perf_counter
    calls = [0]

    def slow() -> float:
        calls[0] += 1
        return real() + 20.0 * calls[0]

    monkeypatch.setattr(time, "perf_counter", slow)
    loaded = primal.solve(problem, options)
    monkeypatch.undo()
    assert calls[0] > 10
    _check_feasible(problem, loaded)
    assert _fingerprint(loaded) == _fingerprint(quiet)
    assert loaded.price_per_hour == quiet.price_per_hour and loaded.bound == quiet.bound


def test_a_service_short_only_by_its_own_budget_still_gets_a_bound() -> None:
    """Demand no plan can serve (here: a budget buys two replicas of the three the traffic needs) is set
    apart from the gap: the bound covers the plans serving every service all it can, and holds."""
    pools = (pool("a", 8, 1, 1.0), pool("b", 8, 1, 2.0))
    services = (
        inputs.ServiceDemand("capped", (2.5, 0.4), max_dollars_per_hour=2.0),
        inputs.ServiceDemand("free", (1.5, 0.8)),
        inputs.ServiceDemand("other", (0.7, 1.9)),
    )
    cands = tuple(cand(s.id, p.id, [1.0, 1.0], p.price_per_device_hour) for s in services for p in pools)
    problem = inputs.FleetProblem(services, pools, cands)
    plan = primal.solve(problem, inputs.SolveOptions(method="primal", mip_rel_gap=1e-9))
    _check_feasible(problem, plan)
    capped = plan.service("capped")
    assert capped.status == "partial" and capped.served_rps == pytest.approx(2.0, rel=1e-5)
    assert not math.isnan(plan.bound)
    exact = stages.solve_milp(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
    assert exact.service("capped").served_rps == pytest.approx(2.0, rel=1e-5)
    assert plan.bound <= exact.price_per_hour * (1 + 1e-9)
    assert plan.price_per_hour == pytest.approx(exact.price_per_hour)


def test_no_bound_when_a_service_is_short_by_capacity_it_could_have_had() -> None:
    """A service short because the pools are full (not by its own limits) gets no bound claimed: the
    plan is then not comparable with the plans serving everything."""
    pools = (pool("a", 1, 2, 1.0),)
    services = (
        inputs.ServiceDemand("high", (1.5,), priority=100),
        inputs.ServiceDemand("low", (1.5,)),
    )
    cands = tuple(cand(s.id, "a", [1.0], 1.0) for s in services)
    problem = inputs.FleetProblem(services, pools, cands)
    plan = primal.solve(problem, inputs.SolveOptions(method="primal"))
    _check_feasible(problem, plan)
    assert plan.service("high").status == "served" and plan.service("low").status == "unserved"
    assert math.isnan(plan.bound) and plan.bound_source == "none"


@pytest.mark.parametrize("method", ["primal", "dantzig-wolfe"])
def test_per_configuration_replica_bounds_bind_in_the_heuristic_and_dantzig_wolfe(method: str) -> None:
    """FleetProblem.replica_bounds (the operator's repair pins) hold in every method, not only the MILP."""
    key = {p: inputs.CandidateKey("a", "aggregated", p, "bf16", 1) for p in ("p", "q")}

    def replicas(bounds: dict[str, tuple[int, int | None]]) -> dict[str, int]:
        problem = inputs.FleetProblem(
            (inputs.ServiceDemand("a", (2.5,)),),
            (pool("p", 4, 1, 1.0), pool("q", 4, 1, 5.0)),
            (cand("a", "p", [1.0], 1.0), cand("a", "q", [1.0], 5.0)),
            replica_bounds={key[p]: b for p, b in bounds.items()},
        )
        plan = solve.solve(problem, inputs.SolveOptions(method=method))  # type: ignore[arg-type]
        _check_feasible(problem, plan)
        return {a.pool: a.replicas for a in plan.service("a").assignments if a.replicas}

    assert replicas({}) == {"p": 3}
    assert replicas({"q": (2, 2)}) == {"p": 1, "q": 2}
    assert replicas({"p": (0, 2)}) == {"p": 2, "q": 1}
