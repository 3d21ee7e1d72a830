"""Benchmark (c): solver speed and optimality gap on generated fleets (1,000 and 10,000 services x 40 pools).

The solver never sees physics, so these instances carry synthetic capacities (below): heterogeneous on
purpose (bandwidth-rich chips win long outputs, compute-rich chips long prompts, MIG slices small
models) so that mixing and bucket splitting matter. Pools: every catalog accelerator type including
all 18 MIG slices, plus spot twins of full chips, 40 in all.

Run: .venv/bin/python benchmarks/solver_scale.py [--services 1000] [--seeds 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from placement import catalog
from placement.solver import colgen, inputs, solve

POOLS_TOTAL = 40
# Spot discount on the twins of full chips (AWS quotes spot at roughly 30-70% off; a middle value).
SPOT_DISCOUNT = 0.5
# Weights in GB of the generated services' models: 8B and 7B at bf16, 70B at fp8 and bf16, 8x7B at bf16.
MODEL_WEIGHT_GB = (16.1, 14.5, 70.6, 141.1, 93.4)
# Share of device memory weights may take (the rest is KV cache and activations).
WEIGHT_MEMORY_SHARE = 0.8
# Request-size buckets of every service: (prompt tokens, output tokens).
BUCKETS = ((512, 128), (512, 1024), (4096, 128), (4096, 1024))
# Synthetic capacity: req/s of one replica = SCALE x bandwidth_TBps x tp^TP_EXPONENT / weights_GB /
# (output/OUT_UNIT) / (1 + prompt / prefill_tokens), prefill_tokens = PREFILL_PER_TFLOP x dense TFLOPS.
CAPACITY_SCALE = 40.0
TP_EXPONENT = 0.9
OUT_UNIT_TOKENS = 128.0
PREFILL_TOKENS_PER_TFLOP = 4.0
# Per (service, chip family) engine-efficiency noise, lognormal sigma.
NOISE_SIGMA = 0.15
# Mean request rate of a service (lognormal, req/s) and its spread.
RATE_MEDIAN_RPS = 3.0
RATE_SIGMA = 1.0
# Pools hold this multiple of the devices the cheapest-alone plans put on them.
CAPACITY_HEADROOM = 1.5
PRIORITIES = (0, 100, 500)
TP_DEGREES = (1, 2, 4, 8)
# Heuristic pruning for scale: the K cheapest candidates per (service, bucket) by $/(req/s).
CANDIDATES_PER_BUCKET = 3
GAP_TARGET = 0.005
TIME_LIMIT_S = 60.0
# The monolithic MILP comparison runs this long (it does not converge at this size).
MILP_TIME_LIMIT_S = 30.0


# The seven chip families the catalog had when this benchmark's reference numbers were taken (the catalog
# has grown since; a fixed set keeps runs comparable).
SCALE_FAMILIES = ("l4", "l40s", "a100-80gb", "h100", "h200", "mi300x", "inf2")


def _price(acc: catalog.Accelerator) -> float:
    """The catalog price (every SCALE_FAMILIES chip has one)."""
    assert acc.default_price_per_hour is not None
    return acc.default_price_per_hour


def pools(rng: np.random.Generator) -> list[inputs.Pool]:
    """The 25 types of SCALE_FAMILIES (18 MIG slices among them) and spot twins of full chips, to 40 pools."""
    out: list[inputs.Pool] = []
    accs = [a for a in catalog.ACCELERATORS.values() if a.id.split("/")[0] in SCALE_FAMILIES]
    for a in accs:
        per_node = 8 if a.parent is None else 8 * a.mig_max_instances
        out.append(inputs.Pool(a.id.replace("/", "-"), a.id, per_node, 1, _price(a)))
    full = [a for a in accs if a.parent is None]
    i = 0
    while len(out) < POOLS_TOTAL:
        a = full[i % len(full)]
        out.append(inputs.Pool(f"{a.id}-spot{i}", a.id, 8, 1, _price(a) * SPOT_DISCOUNT, spot=True))
        i += 1
    del rng
    return out


def capacity(acc: catalog.Accelerator, tp: int, weight_gb: float, noise: float) -> tuple[float, ...]:
    """Synthetic max req/s per bucket of one replica (0.0 when the model does not fit)."""
    if weight_gb > WEIGHT_MEMORY_SHARE * acc.memory_bytes / 1e9 * tp:
        return tuple(0.0 for _ in BUCKETS)
    bw_tbps = acc.mem_bandwidth_bytes_per_s / 1e12
    tflops = acc.peak_flops_per_s("bf16") / 1e12
    prefill_tokens = PREFILL_TOKENS_PER_TFLOP * tflops
    base = CAPACITY_SCALE * bw_tbps * tp**TP_EXPONENT / weight_gb * noise
    return tuple(base / (out / OUT_UNIT_TOKENS) / (1.0 + prompt / prefill_tokens) for prompt, out in BUCKETS)


def instance(n_services: int, seed: int) -> inputs.FleetProblem:
    """A generated fleet and its services."""
    rng = np.random.default_rng(seed)
    fleet = pools(rng)
    services: list[inputs.ServiceDemand] = []
    cands: list[inputs.Candidate] = []
    need_devices: dict[str, float] = defaultdict(float)
    for s in range(n_services):
        sid = f"svc-{s:05d}"
        weight = float(rng.choice(MODEL_WEIGHT_GB))
        rate = float(rng.lognormal(math.log(RATE_MEDIAN_RPS), RATE_SIGMA))
        shares = rng.dirichlet(np.ones(len(BUCKETS)))
        rates = tuple(float(rate * f) for f in shares)
        services.append(
            inputs.ServiceDemand(
                sid, rates, priority=int(rng.choice(PRIORITIES)), min_replicas=0, serving="aggregated"
            )
        )
        noise = {
            a: float(rng.lognormal(0.0, NOISE_SIGMA))
            for a in catalog.ACCELERATORS
            if a.split("/")[0] in SCALE_FAMILIES
        }
        best_devices = 0
        best_price = math.inf
        best_pool = ""
        for p in fleet:
            acc = catalog.ACCELERATORS[p.accelerator]
            family = acc.parent or acc.id
            for tp in TP_DEGREES:
                if tp > min(acc.max_tp, p.devices_per_node):
                    continue
                caps = capacity(acc, tp, weight, noise[family])
                if not any(caps):
                    continue
                price = p.price_per_device_hour * tp
                cands.append(
                    inputs.Candidate(sid, "aggregated", p.id, p.accelerator, "bf16", tp, caps, price)
                )
                load = sum(r / c for r, c in zip(rates, caps, strict=True))
                alone = math.ceil(load) * price
                if alone < best_price:
                    best_price, best_devices, best_pool = alone, math.ceil(load) * tp, p.id
        need_devices[best_pool] += best_devices
    # Each pool holds CAPACITY_HEADROOM x what the services' cheapest single configurations would put
    # on it (at least one node): every service fits, yet the cheap pools are contested.
    sized = [
        inputs.Pool(
            p.id,
            p.accelerator,
            p.devices_per_node,
            max(1, math.ceil(need_devices[p.id] * CAPACITY_HEADROOM / p.devices_per_node)),
            p.price_per_device_hour,
            p.spot,
        )
        for p in fleet
    ]
    return inputs.FleetProblem(tuple(services), tuple(sized), tuple(cands))


def exact_bound(problem: inputs.FleetProblem) -> float:
    """Sum over services of each one's exact MILP bound with every pool unlimited (slow; offline).

    Capacity only adds cost, so this is a valid lower bound; when the plan leaves every pool with room
    it is also what an all-knowing solver would pay, so it shows the true gap of the decomposition.
    """
    big = tuple(replace(p, nodes=10**6) for p in problem.pools)
    by_service: dict[str, list[inputs.Candidate]] = defaultdict(list)
    for c in problem.candidates:
        by_service[c.service].append(c)
    total = 0.0
    for s in problem.services:
        sub = inputs.FleetProblem((s,), big, tuple(by_service[s.id]))
        total += solve.solve(sub, inputs.SolveOptions(method="milp", mip_rel_gap=1e-6)).bound
    return total


def run(n_services: int, seed: int, milp_too: bool, exact: bool = False) -> dict[str, object]:
    """Generate, solve (auto: the decomposition at this size), and bound; optionally the monolithic MILP."""
    started = time.perf_counter()
    problem = instance(n_services, seed)
    generate_s = time.perf_counter() - started
    options = inputs.SolveOptions(time_limit_s=TIME_LIMIT_S, mip_rel_gap=GAP_TARGET)
    plan = solve.solve(problem, options)
    # A second valid bound: the LP relaxation over every candidate, by column generation (not timed in
    # the solve; the decomposition's own bound is per service and ignores capacity).
    started = time.perf_counter()
    pruned = colgen.prune(problem, inputs.SolveOptions(max_candidates_per_bucket=CANDIDATES_PER_BUCKET))
    lp_s = time.perf_counter() - started
    bounds = [plan.bound] + ([pruned.full_lp_bound] if pruned.full_lp_bound is not None else [])
    best_bound = max(bounds)
    served = sum(s.served_rps for s in plan.services) / sum(s.demand_rps for s in plan.services)
    row: dict[str, object] = {
        "services": n_services,
        "pools": len(problem.pools),
        "mig_pools": sum(1 for p in problem.pools if "/" in p.accelerator),
        "candidates": len(problem.candidates),
        "seed": seed,
        "generate_s": round(generate_s, 2),
        "solve_s": round(plan.solve_seconds, 2),
        "method": plan.bound_source,
        "price_per_hour": round(plan.price_per_hour, 2),
        "per_service_bound": round(plan.bound, 2),
        "full_lp_bound": None if pruned.full_lp_bound is None else round(pruned.full_lp_bound, 2),
        "full_lp_s": round(lp_s, 2),
        "gap_to_best_bound": round((plan.price_per_hour - best_bound) / plan.price_per_hour, 5),
        "served_share": round(served, 5),
        "headroom": CAPACITY_HEADROOM,
        "pools_full": sum(1 for u in plan.pools if u.devices_used >= u.devices_total),
    }
    if exact:
        started = time.perf_counter()
        bound = exact_bound(problem)
        row["exact_per_service_bound"] = round(bound, 2)
        row["exact_bound_s"] = round(time.perf_counter() - started, 1)
        row["gap_to_exact_bound"] = round((plan.price_per_hour - bound) / plan.price_per_hour, 5)
    if milp_too:
        milp_options = inputs.SolveOptions(
            time_limit_s=MILP_TIME_LIMIT_S,
            mip_rel_gap=GAP_TARGET,
            max_candidates_per_bucket=CANDIDATES_PER_BUCKET,
            method="milp",
        )
        milp_plan = solve.solve(problem, milp_options)
        row["milp"] = {
            "solve_s": round(milp_plan.solve_seconds, 2),
            "status": milp_plan.status,
            "price_per_hour": round(milp_plan.price_per_hour, 2),
            "gap_to_full_lp": round(milp_plan.gap, 5),
        }
    return row


def main() -> int:
    """Run seeds and print the median solve time."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--milp", action="store_true", help="also run the monolithic MILP (slow)")
    parser.add_argument("--exact-bound", action="store_true", help="per-service exact bound, seed 0 (slow)")
    parser.add_argument("--headroom", type=float, default=None, help="pool capacity multiple")
    args = parser.parse_args()
    global CAPACITY_HEADROOM  # the generator reads it; a flag lets the report show contested pools
    if args.headroom is not None:
        CAPACITY_HEADROOM = args.headroom
    rows = []
    for seed in range(args.seeds):
        row = run(args.services, seed, args.milp and seed == 0, args.exact_bound and seed == 0)
        rows.append(row)
        print(json.dumps(row))
    times = [float(str(r["solve_s"])) for r in rows]
    print(
        f"median solve {statistics.median(times):.2f} s over {len(rows)} seed(s); "
        f"max gap to best bound {max(float(str(r['gap_to_best_bound'])) for r in rows):.4%}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
