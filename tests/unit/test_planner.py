"""Incremental re-planning: the Planner prices only the (service, pool) pairs a change touches."""

from __future__ import annotations

import dataclasses

from chipfit import planning
from chipfit.api import v1alpha1
from placement import candidates
from tests.unit.chipfit_builders import POOLS, SERVICES


def _pools(**nodes: int) -> list[v1alpha1.AcceleratorPool]:
    """The example pools, with some node counts changed."""
    out = []
    for name, pool in POOLS.items():
        if name in nodes:
            pool = pool.model_copy(update={"spec": pool.spec.model_copy(update={"nodes": nodes[name]})})
        out.append(pool)
    return out


def _fresh(
    services: list[v1alpha1.InferenceService], pools: list[v1alpha1.AcceleratorPool]
) -> candidates.CandidateSet:
    return planning.build_inputs(services, pools)


def test_node_loss_reprices_nothing_and_plans_what_a_fresh_plan_plans() -> None:
    services = list(SERVICES.values())
    planner = planning.Planner()
    first = planner.plan(services, _pools())
    assert planner.last_priced_pairs > 0
    lost = _pools(**{"h100-p5": 0})
    again = planner.plan(services, lost)
    assert planner.last_priced_pairs == 0
    assert again.candidates.problem == _fresh(services, lost).problem
    fresh = planning.plan_fleet(services, lost, with_baseline=False).plan
    assert dataclasses.replace(again.plan, solve_seconds=0.0) == dataclasses.replace(fresh, solve_seconds=0.0)
    assert not any(a.pool == "h100-p5" and a.replicas > 0 for s in again.plan.services for a in s.assignments)
    assert first.plan != again.plan


def test_one_changed_service_reprices_only_its_pairs() -> None:
    services = list(SERVICES.values())
    planner = planning.Planner()
    planner.build_inputs(services, _pools())
    changed = services[0].model_copy(deep=True)
    changed.spec.slo.ttft_p99_ms = changed.spec.slo.ttft_p99_ms * 2
    edited = [changed, *services[1:]]
    cset = planner.build_inputs(edited, _pools())
    spec = planning.to_spec(changed)
    allowed = [p for p in cset.problem.pools if candidates.pool_allowed(spec, p) is None]
    assert planner.last_priced_pairs == len(allowed)
    assert cset.problem == _fresh(edited, _pools()).problem


def test_a_rate_change_or_a_relaxed_floor_reprices_nothing() -> None:
    services = list(SERVICES.values())
    planner = planning.Planner()
    planner.build_inputs(services, _pools())
    changed = services[0].model_copy(deep=True)
    changed.spec.workload.requests_per_second *= 3
    changed.spec.replicas = None
    edited = [changed, *services[1:]]
    cset = planner.build_inputs(edited, _pools())
    assert planner.last_priced_pairs == 0
    assert cset.problem == _fresh(edited, _pools()).problem


def test_a_new_pool_reprices_only_that_pool() -> None:
    services = list(SERVICES.values())
    pools = _pools()
    planner = planning.Planner()
    planner.build_inputs(services, pools[1:])
    cset = planner.build_inputs(services, pools)
    new = planning.to_pool(pools[0])
    assert planner.last_priced_pairs == sum(
        candidates.pool_allowed(planning.to_spec(s), new) is None for s in services
    )
    assert cset.problem == _fresh(services, pools).problem


def test_unchanged_inputs_return_the_previous_plan_without_solving() -> None:
    services = list(SERVICES.values())
    planner = planning.Planner()
    first = planner.plan(services, _pools())
    assert planner.plan(services, _pools()).plan is first.plan


def test_parallel_pricing_builds_the_same_candidates() -> None:
    specs = [planning.to_spec(s) for s in SERVICES.values()]
    pools = [planning.to_pool(p) for p in POOLS.values()]
    one = candidates.build(specs, pools, workers=1)
    two = candidates.build(specs, pools, workers=2)
    assert one.problem == two.problem
    assert one.rejections == two.rejections


def _profile(model: str, accelerator: str, max_rps: float) -> v1alpha1.PerformanceProfile:
    """A one-bucket measured table for (model, accelerator) at fp8 on vLLM, tp 1."""
    return v1alpha1.PerformanceProfile.model_validate(
        {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "PerformanceProfile",
            "metadata": {"name": f"{model}-{accelerator}"},
            "spec": {
                "model": model,
                "accelerator": accelerator,
                "precision": "fp8",
                "engine": "vllm",
                "tensorParallel": 1,
                "source": {"description": "test table"},
                "bucketTable": {
                    "slo": {"ttftP99Ms": 100.0, "itlP99Ms": 10.0},
                    "promptTokenBuckets": [65536],
                    "outputTokenBuckets": [16384],
                    "maxRequestsPerSecond": [[max_rps]],
                },
            },
        }
    )


def test_a_changed_profile_reprices_only_its_model_on_its_accelerator() -> None:
    services = list(SERVICES.values())
    pools = _pools()
    planner = planning.Planner()
    planner.build_inputs(services, pools)
    touched = sum(
        candidates.pool_allowed(planning.to_spec(s), planning.to_pool(p)) is None
        for s in services
        for p in pools
        if s.spec.model.id == "llama-3.1-70b" and p.spec.accelerator == "h100"
    )
    assert touched > 0
    for max_rps in (3.0, 5.0):
        profile = _profile("llama-3.1-70b", "h100", max_rps)
        cset = planner.build_inputs(services, pools, [profile])
        assert planner.last_priced_pairs == touched
        assert cset.problem == planning.build_inputs(services, pools, [profile]).problem
    # Unchanged: nothing is priced again.
    planner.build_inputs(services, pools, [profile])
    assert planner.last_priced_pairs == 0
