"""Solver quality pieces of #15: the replica-count cuts and the Dantzig-Wolfe decomposition over services."""

from __future__ import annotations

import random

import pytest

from placement.solver import allocation, dantzig_wolfe, inputs, solve
from tests.unit.solver_helpers import brute_force, cand, pool


def _served(plan: allocation.Plan) -> float:
    return sum(s.served_rps for s in plan.services)


@pytest.mark.parametrize("serving", ["aggregated", "disaggregated"])
def test_count_cut_keeps_partial_service_under_a_budget(serving: str) -> None:
    # 2.1 req/s on a 2.0 req/s replica: full service needs two replicas (the cut says so), but the budget
    # buys one per role, which serves 2.0 req/s. A cut without the unmet term would forbid that plan.
    roles: tuple[inputs.Role, ...] = ("aggregated",) if serving == "aggregated" else ("prefill", "decode")
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("s", (2.1,), serving=serving, max_dollars_per_hour=len(roles) * 1.0),),  # type: ignore[arg-type]
        pools=(pool("a", nodes=2),),
        candidates=tuple(cand("s", "a", [2.0], 1.0, role=role) for role in roles),
    )
    plan = solve.solve(problem)
    assert _served(plan) == pytest.approx(2.0, rel=1e-5)
    assert plan.price_per_hour == pytest.approx(len(roles) * 1.0)


def test_count_cut_with_two_buckets_matches_brute_force() -> None:
    # Loads just above whole replicas, where the LP alone is weakest; the cut must not cut the optimum.
    rng = random.Random(7)
    for _ in range(8):
        services = tuple(
            inputs.ServiceDemand(sid, (rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0))) for sid in ("s1", "s2")
        )
        pools = (pool("a", 2, 2), pool("b", 2, 2))
        cands = tuple(
            cand(s.id, p.id, [rng.uniform(1.0, 3.0), rng.uniform(1.0, 3.0)], rng.uniform(1.0, 2.0))
            for s in services
            for p in pools
        )
        problem = inputs.FleetProblem(services, pools, cands)
        expected = brute_force(problem)
        plan = solve.solve(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
        if expected is None:
            assert any(s.status != "served" for s in plan.services)
        else:
            assert plan.price_per_hour == pytest.approx(expected, rel=1e-6)


def _fleet(seed: int, n_services: int, nodes: int, priorities: bool) -> inputs.FleetProblem:
    """Disaggregated services on three chips with near-equal candidates (what makes one MILP slow)."""
    rng = random.Random(seed)
    pools = tuple(inputs.Pool(f"p{j}", f"chip{j % 3}", 4, nodes, 1.0 + 0.25 * (j % 3)) for j in range(6))
    services = tuple(
        inputs.ServiceDemand(
            f"s{i}",
            (rng.uniform(0.5, 3.0), rng.uniform(0.5, 2.0)),
            serving="disaggregated",
            priority=rng.choice((0, 100)) if priorities else 0,
        )
        for i in range(n_services)
    )
    cands = tuple(
        cand(
            s.id,
            p.id,
            [1.0 + (j % 4) + rng.random(), 0.5 + (j % 3) + rng.random()],
            p.price_per_device_hour,
            role=role,
        )
        for s in services
        for j, p in enumerate(pools)
        for role in ("prefill", "decode")
    )
    return inputs.FleetProblem(services, pools, cands)


@pytest.mark.parametrize("seed", range(3))
def test_dantzig_wolfe_matches_the_exact_milp_when_everything_fits(seed: int) -> None:
    problem = _fleet(seed, 6, nodes=4, priorities=False)
    exact = solve.solve(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
    assert exact.status == "optimal"
    plan = solve.solve(problem, inputs.SolveOptions(method="dantzig-wolfe", mip_rel_gap=1e-9))
    assert plan.bound_source == "dantzig-wolfe"
    # The bound is valid, and the plan is the optimum (the columns of six small services cover it).
    assert plan.bound <= exact.objective + 1e-6
    assert plan.objective == pytest.approx(exact.objective, rel=1e-6)
    assert all(s.status == "served" for s in plan.services)


@pytest.mark.parametrize("seed", range(3))
def test_dantzig_wolfe_keeps_priorities_when_capacity_is_short(seed: int) -> None:
    problem = _fleet(seed, 6, nodes=1, priorities=True)
    exact = solve.solve(problem, inputs.SolveOptions(method="milp", mip_rel_gap=1e-9))
    plan = solve.solve(problem, inputs.SolveOptions(method="dantzig-wolfe", mip_rel_gap=1e-9))
    priority = {s.id: s.priority for s in problem.services}

    def served_at(p: allocation.Plan, level: int) -> float:
        return sum(s.served_rps for s in p.services if priority[s.service] == level)

    # The higher level is served as well as the exact lexicographic MILP serves it (pins: 1e-6 slack).
    assert served_at(plan, 100) >= served_at(exact, 100) - 1e-4 * max(1.0, served_at(exact, 100))
    devices = {u.pool: u.devices_used for u in plan.pools}
    assert all(devices[p.id] <= p.devices_total for p in problem.pools)
    assert plan.bound <= plan.objective + 1e-9


def test_auto_plans_many_coupled_services_service_by_service() -> None:
    # 30 disaggregated services x 2 roles x 50 near-equal pools, with budgets: one MILP over all of them
    # sat 56% above its bound after 10 s; by service columns the gap is small and independent of load.
    pools = tuple(inputs.Pool(f"p{j}", f"chip{j % 5}", 8, 4, 1.0 + 0.1 * (j % 7)) for j in range(50))
    services = tuple(
        inputs.ServiceDemand(f"s{i}", (1.0 + i % 3, 2.0), serving="disaggregated", max_dollars_per_hour=50.0)
        for i in range(30)
    )
    cands = tuple(
        cand(s.id, p.id, [1.0 + (j % 4), 0.5 + (j % 3)], p.price_per_device_hour, role=role)
        for s in services
        for j, p in enumerate(pools)
        for role in ("prefill", "decode")
    )
    problem = inputs.FleetProblem(services, pools, cands)
    assert len(services) >= solve.DANTZIG_WOLFE_MIN_SERVICES and dantzig_wolfe.applicable(problem)
    plan = solve.solve(problem)
    assert plan.bound_source == "dantzig-wolfe"
    assert all(s.status == "served" for s in plan.services)
    # Every service needs 2 prefill and 2 decode replicas-worth at >= $1/h (the count cuts): $4/h each.
    assert plan.bound >= 4.0 * len(services) * (1 - 1e-3)
    assert plan.bound <= plan.price_per_hour + 1e-6
    assert plan.gap <= 0.05
