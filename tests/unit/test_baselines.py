"""Baselines, and the Mélange known answers through chipfit's own profile-table path."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from pathlib import Path

import pytest

from placement import baselines, candidates
from placement.solver import inputs, solve
from tests.unit.solver_helpers import brute_force, cand, pool

MELANGE = Path(__file__).resolve().parents[3] / "shared" / "data" / "melange" / "melange_profiles.json"


def two_chip_problem() -> inputs.FleetProblem:
    """Chip a is best at bucket 0, chip b at bucket 1."""
    return inputs.FleetProblem(
        services=(inputs.ServiceDemand("s", (5.0, 5.0)),),
        pools=(pool("a", nodes=2), pool("b", nodes=2)),
        candidates=(cand("s", "a", [10.0, 1.0], 1.0), cand("s", "b", [1.0, 10.0], 1.0)),
    )


def test_best_single_type_prices_every_type() -> None:
    result = baselines.best_single_type(two_chip_problem())
    # a alone: 5/10 + 5/1 = 5.5 -> 6 replicas; same for b. Mixed (the MILP) needs 2.
    assert result.price_per_hour_by_type == {"a": pytest.approx(6.0), "b": pytest.approx(6.0)}
    assert result.plan is not None and result.plan.price_per_hour == pytest.approx(6.0)
    assert solve.solve(two_chip_problem()).price_per_hour == pytest.approx(2.0)


def test_single_type_that_cannot_serve_everything_is_none() -> None:
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("s", (1.0, 1.0)),),
        pools=(pool("a"), pool("b")),
        candidates=(cand("s", "a", [1.0, 0.0], 1.0), cand("s", "b", [1.0, 1.0], 5.0)),
    )
    result = baselines.best_single_type(problem)
    assert result.price_per_hour_by_type["a"] is None
    assert result.accelerator == "b"


def test_greedy_takes_cheapest_fitting_configuration_in_priority_order() -> None:
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("low", (4.0,)), inputs.ServiceDemand("high", (4.0,), priority=5)),
        pools=(pool("cheap", devices_per_node=4), pool("dear", devices_per_node=8)),
        candidates=(
            cand("low", "cheap", [1.0], 1.0),
            cand("low", "dear", [1.0], 3.0),
            cand("high", "cheap", [1.0], 1.0),
            cand("high", "dear", [1.0], 3.0),
        ),
    )
    plan = baselines.greedy(problem)
    # high goes first and takes the cheap pool; low gets what is left.
    assert {a.pool for a in plan.service("high").assignments} == {"cheap"}
    assert {a.pool for a in plan.service("low").assignments} == {"dear"}
    assert plan.price_per_hour == pytest.approx(16.0)
    assert all(p.devices_used <= p.devices_total for p in plan.pools)


def test_greedy_never_splits_so_it_costs_more_than_the_milp() -> None:
    plan = baselines.greedy(two_chip_problem())
    assert plan.price_per_hour == pytest.approx(6.0)


def test_greedy_reports_what_does_not_fit() -> None:
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("s", (9.0,)),),
        pools=(pool("a"),),
        candidates=(cand("s", "a", [1.0], 1.0),),
    )
    plan = baselines.greedy(problem)
    assert plan.service("s").status == "unserved"
    assert plan.service("s").reason is not None


def test_melange_formulation_on_the_toy_case() -> None:
    result = baselines.melange(
        {"A10G": [[5, 1], [10, 5]], "A100": [[20, 2], [50, 20]]},
        {"A10G": 1.01, "A100": 3.67},
        [[0.25, 0.5], [0.25, 0.25]],
        16.0,
    )
    assert dict(result.gpus) == {"A10G": 10, "A100": 0}
    assert result.price_per_hour == pytest.approx(10.10)


@pytest.mark.skipif(not MELANGE.exists(), reason="needs ../shared/data")
def test_melange_known_answers_through_chipfit_profile_path() -> None:
    data = json.loads(MELANGE.read_text())
    info = data["gpu_info_llama7b"]
    published = data["published_notebook_output_commit_4acefed"]
    gpu_info = {g: (info[g]["cost"], info[g]["tputs"]) for g in ("A10G", "A100")}
    cset = candidates.from_melange_inputs(gpu_info, data["arena_distribution_1000convos_commit_4acefed"], 4.0)
    plan = solve.solve(cset.problem)
    replicas = {a.accelerator: a.replicas for a in plan.service("melange").assignments}
    assert replicas == {"a10g": published["ILP"]["A10G"], "a100": published["ILP"]["A100"]}
    assert plan.price_per_hour == pytest.approx(published["ILP"]["cost"])
    singles = baselines.best_single_type(cset.problem).price_per_hour_by_type
    assert singles["a100"] == pytest.approx(published["A100-only"]["cost"])
    assert singles["a10g"] == pytest.approx(published["A10G-only"]["cost"])

    toy = data["toy_example_output"]
    toy_info = {g: (v["cost"], v["tputs"]) for g, v in toy["gpu_info"].items()}
    # The toy grid is 2 x 2: its edges are the first three Mélange edges.
    toy_set = candidates.from_melange_inputs(toy_info, toy["workload_distribution"], toy["overall_rate"])
    toy_plan = solve.solve(toy_set.problem)
    assert {a.accelerator: a.replicas for a in toy_plan.service("melange").assignments} == {"a10g": 10}
    assert toy_plan.price_per_hour == pytest.approx(toy["result"]["cost"])


def _two_services_one_small_cheap_pool() -> inputs.FleetProblem:
    """Two services of 4 replicas' load each; the cheap chip a holds only 4 replicas, b is dear and roomy."""
    return inputs.FleetProblem(
        services=(inputs.ServiceDemand("s1", (4.0,)), inputs.ServiceDemand("s2", (4.0,))),
        pools=(pool("a", devices_per_node=4, nodes=1), pool("b", devices_per_node=8, nodes=2)),
        candidates=(
            cand("s1", "a", [1.0], 1.0),
            cand("s2", "a", [1.0], 1.0),
            cand("s1", "b", [1.0], 2.0),
            cand("s2", "b", [1.0], 2.0),
        ),
    )


def test_per_service_baseline_in_the_same_pools_respects_their_capacity() -> None:
    problem = _two_services_one_small_cheap_pool()
    plan = solve.solve(problem)
    capped = baselines.best_single_type_per_service(problem, reference=plan)
    sized = baselines.best_single_type_per_service(problem, reference=plan, sized_to_order=True)
    # In the pools as sized only one service fits on a: 4 x $1 + 4 x $2. Sized to order both go on a.
    assert capped.plan is not None and capped.plan.price_per_hour == pytest.approx(12.0)
    assert sorted(capped.per_service.values()) == ["a", "b"]
    assert all(p.devices_used <= p.devices_total for p in capped.plan.pools)
    assert sized.plan is not None and sized.plan.price_per_hour == pytest.approx(8.0)
    assert sized.per_service == {"s1": "a", "s2": "a"}
    # Like with like: the plan (which may also mix types) never costs more than the capped baseline.
    assert plan.price_per_hour <= capped.plan.price_per_hour + 1e-9


def _brute_force_one_type_per_service(problem: inputs.FleetProblem) -> float | None:
    """Cheapest all-served plan with one accelerator type per service: every type choice, enumerated."""
    types = {
        s.id: sorted({c.accelerator for c in problem.candidates if c.service == s.id})
        for s in problem.services
    }
    best: float | None = None
    for combo in itertools.product(*(types[s.id] for s in problem.services)):
        chosen = dict(zip((s.id for s in problem.services), combo, strict=True))
        restricted = dataclasses.replace(
            problem, candidates=tuple(c for c in problem.candidates if c.accelerator == chosen[c.service])
        )
        price = brute_force(restricted)
        if price is not None and (best is None or price < best):
            best = price
    return best


@pytest.mark.parametrize("seed", range(6))
def test_one_accelerator_per_service_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    pools = (pool("a", 2, 1), pool("b", 2, 1), pool("c", 4, 1))
    services = tuple(
        inputs.ServiceDemand(sid, (rng.uniform(0.5, 2.0), rng.uniform(0.0, 2.0))) for sid in ("s1", "s2")
    )
    cands = tuple(
        cand(s.id, p.id, [rng.choice([0.0, 1.0, 2.0, 3.0]), rng.uniform(0.5, 3.0)], rng.uniform(1.0, 3.0))
        for s in services
        for p in pools
    )
    problem = inputs.FleetProblem(services, pools, cands)
    expected = _brute_force_one_type_per_service(problem)
    options = inputs.SolveOptions(one_accelerator_per_service=True)
    if expected is None:
        plan = solve.solve(problem, options)
        assert any(s.status != "served" for s in plan.services)
        return
    plan = solve.solve(problem, options)
    assert plan.price_per_hour == pytest.approx(expected, rel=1e-6)
    for s in plan.services:
        assert len({a.accelerator for a in s.assignments}) == 1
