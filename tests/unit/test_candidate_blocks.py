"""The block path of candidate building (perf.block_rates via candidates._price_blocks) gives the same
candidates as the query-by-query path (Query -> RateQuestion -> perf.max_rates -> Capacity) on generated
diverse fleets.

Tolerance: capacities, latencies and zero-load latencies within 1e-9 relative (both paths run the same
search, perf._search_arrays, on the same rows; only numpy's vectorized kernels may round differently
between array sizes); everything else (candidate and rejection keys and order, reasons, chunks, engine
configurations, trust) exactly equal.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from chipfit import handlers, planning
from chipfit.api import v1alpha1
from placement import candidates, catalog, perf, profiles
from placement.solver import inputs

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RELATIVE = 1e-9


class QueryByQuery(candidates.PerfOracle):
    """The performance model asked one Query per bucket (the path measured profiles and test oracles take)."""


def _plan_speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_plan_speed_blocks", BENCHMARKS / "plan_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fleet(
    n: int, seed: int
) -> tuple[list[candidates.ServiceSpec], list[inputs.Pool], dict[str, catalog.Accelerator]]:
    """n diverse services (benchmarks/plan_speed's generator) on its ~40 pools, as the Planner sees them, plus
    a chip declared by its specs, a pool of it, and engine releases on some services."""
    bench = _plan_speed()
    raw_pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in bench.generate_pools(n)]
    specs = [planning.to_spec(handlers.parse_service(b)) for b in bench.generate_services(n, seed)]
    pools = [planning.to_pool(p) for p in raw_pools]
    declared = dict(planning.fleet_accelerators(raw_pools))
    chip = dataclasses.replace(catalog.ACCELERATORS["l40s"], id="acme-l40s", origin="inline")
    declared[chip.id] = chip
    pools.append(inputs.Pool("acme", chip.id, devices_per_node=8, nodes=4, price_per_device_hour=1.1))
    releases = (None, "0.6.3", "v0.17.0", "1.0.0")
    specs = [
        dataclasses.replace(s, engine_version=releases[k % len(releases)]) if k % 3 == 0 else s
        for k, s in enumerate(specs)
    ]
    return specs, pools, declared


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=RELATIVE, abs_tol=1e-12)


def _same(blocks: candidates.CandidateSet, queries: candidates.CandidateSet) -> None:
    assert len(blocks.problem.candidates) == len(queries.problem.candidates) > 0
    for a, b in zip(blocks.problem.candidates, queries.problem.candidates, strict=True):
        assert a.key == b.key
        assert (a.accelerator, a.price_per_hour, a.engine, a.source, a.engine_config) == (
            b.accelerator,
            b.price_per_hour,
            b.engine,
            b.source,
            b.engine_config,
        ), a.key
        for field in ("max_rps_per_bucket", "ttft_p99_ms_per_bucket", "itl_p99_ms_per_bucket"):
            pairs = zip(getattr(a, field), getattr(b, field), strict=True)
            assert all(_close(x, y) for x, y in pairs), (a.key, field, getattr(a, field), getattr(b, field))
    assert blocks.trust == queries.trust
    assert len(blocks.rejections) == len(queries.rejections) > 0
    for a, b in zip(blocks.rejections, queries.rejections, strict=True):
        exact = ("service", "role", "pool", "accelerator", "precision", "tp", "reason", "prompt_tokens")
        assert [getattr(a, f) for f in exact] == [getattr(b, f) for f in exact]
        assert _close(a.zero_load_ttft_p99_ms, b.zero_load_ttft_p99_ms), (a, b)
        assert _close(a.zero_load_itl_p99_ms, b.zero_load_itl_p99_ms), (a, b)
    assert blocks.excluded == queries.excluded


@pytest.mark.parametrize(("n", "seed", "headroom"), [(24, 20261129, True), (12, 7, False)])
def test_blocks_equal_queries_on_a_diverse_fleet(n: int, seed: int, headroom: bool) -> None:
    specs, pools, declared = _fleet(n, seed)
    perf.clear_rate_cache()
    by_blocks = candidates.build(
        specs, pools, oracle=candidates.perf_oracle, workers=1, accelerators=declared, headroom=headroom
    )
    perf.clear_rate_cache()
    by_queries = candidates.build(
        specs, pools, oracle=QueryByQuery(), workers=1, accelerators=declared, headroom=headroom
    )
    _same(by_blocks, by_queries)
    # The fleet exercises what the block path must reproduce: chunks other than the default chosen across
    # buckets, rejections with and without zero-load latencies, several trust levels.
    assert len({c.engine_config.prefill_chunk_tokens for c in by_blocks.problem.candidates}) > 3
    assert any(r.zero_load_ttft_p99_ms is not None for r in by_blocks.rejections)
    assert any(r.zero_load_ttft_p99_ms is None for r in by_blocks.rejections)
    assert len({t.level for t in by_blocks.trust.values()}) >= 2


def test_profile_rows_go_query_by_query_the_rest_by_blocks() -> None:
    """With a profile table (the Planner's oracle), configurations the table has go query by query and the
    rest through blocks: the whole result equals the query-by-query one."""
    specs, pools, declared = _fleet(8, 11)
    spec = specs[0]
    table = [
        profiles.BucketProfile(
            model=spec.model,
            accelerator="h100",
            precision=spec.precisions[0],
            tp=tp,
            prompt_edges_tokens=(0, 100_000),
            output_edges_tokens=(0, 100_000),
            max_rps=((3.0,),),
            engine=spec.engine,
            source="test table",
        )
        for tp in (1, 2)
    ]
    with_table = candidates.profile_oracle(table)
    queries = candidates.ProfileOracle(table, QueryByQuery())
    perf.clear_rate_cache()
    by_blocks = candidates.build(specs, pools, oracle=with_table, workers=1, accelerators=declared)
    perf.clear_rate_cache()
    by_queries = candidates.build(specs, pools, oracle=queries, workers=1, accelerators=declared)
    _same(by_blocks, by_queries)
    assert any(c.source.startswith("profile") for c in by_blocks.problem.candidates)


def test_block_rates_match_max_rates_and_are_cached() -> None:
    """perf.block_rates answers each row as max_rates answers its question, fixed and chosen budgets alike,
    and a second call is served from its cache (the same answers)."""
    config = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, "aggregated", "vllm")
    slo = perf.LatencySlo(500.0, 40.0)
    sizes = [(1200.0, 200.0, 4000.0, 600.0), (300.0, 150.0, 900.0, 400.0), (6000.0, 300.0, 16000.0, 800.0)]
    perf.clear_rate_cache()
    for chunk in (None, 1024):
        block = perf.RateBlock(config, slo, sizes, prefill_chunk_tokens=chunk)
        first = perf.block_rates([block])[0]
        again = perf.block_rates([block])[0]
        assert first == again and first.infeasible is None
        asked = perf.max_rates(
            [perf.RateQuestion(config, perf.RequestSizes(*s), slo, prefill_chunk_tokens=chunk) for s in sizes]
        )
        for row, answer in zip(first.rows, asked, strict=True):
            assert _close(row.max_rps, answer.max_rps)
            assert row.max_rps > 0.0 or row.reason == answer.reason
            assert (row.prefill_chunk_tokens, row.reason, row.max_batch) == (
                answer.prefill_chunk_tokens,
                answer.reason,
                answer.max_batch,
            )
    cannot = perf.ReplicaConfig("llama-3.1-405b", "l4", "bf16", 1, "aggregated", "vllm")
    out = perf.block_rates([perf.RateBlock(cannot, slo, sizes)])[0]
    assert out.infeasible is not None and all(
        r.max_rps == 0.0 and r.reason == out.infeasible for r in out.rows
    )
