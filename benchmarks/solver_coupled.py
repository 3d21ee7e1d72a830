"""Benchmark (d): solver quality when priorities, budgets and the stability penalty act together.

These constraints keep a fleet off the decomposition path (`decompose.decomposable` is False), so one MILP
with lexicographic priority stages answers, within the time limit. Instances reuse the synthetic pools and
capacities of benchmarks/solver_scale.py (40 pools, every catalog type, MIG slices and spot twins) and add:
- disaggregated services (prefill capacity compute-bound, decode capacity bandwidth-bound) or aggregated;
- priorities 0/100/500, a $/h budget on a share of the services, set around their cheapest-alone price so
  some budgets bind;
- a current placement (one random configuration per role, sized for the traffic) and a move penalty,
  so the stability term is live;
- pools sized to CAPACITY_HEADROOM x what the cheapest-alone plans need (below 1: not everything fits,
  so the priority stages run).

The previous solver (any git revision with placement/solve.py; default 2ce3912, the last one before the
split) is loaded from git and run on the same instances in the same process, so before/after are measured
together.

Run: .venv/bin/python benchmarks/solver_coupled.py [--services 60] [--serving disaggregated] [--seeds 1]
     [--time-limit 60] [--before 2ce3912] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import solver_scale

from placement import catalog
from placement.solver import colgen, inputs, solve

ROOT = Path(__file__).resolve().parents[1]
PRIORITIES = (0, 100, 500)
# Share of services with a budget, and its spread around the service's cheapest-alone price.
BUDGET_SHARE = 0.5
BUDGET_FACTOR_RANGE = (0.8, 2.0)
# $/h per device of a running replica the plan removes (the operator's --move-penalty).
MOVE_PENALTY_PER_DEVICE_HOUR = 0.5
# Disaggregated capacities: prefill req/s = PREFILL_SCALE x TFLOPS x tp^TP_EXPONENT / weights_GB / prompt
# (compute-bound), decode req/s = the aggregated formula without the prefill term (bandwidth-bound).
PREFILL_SCALE = 2000.0


def _caps(acc: catalog.Accelerator, tp: int, weight: float, noise: float, role: str) -> tuple[float, ...]:
    """Synthetic max req/s per bucket of one replica in a role (0.0 when the model does not fit)."""
    agg = solver_scale.capacity(acc, tp, weight, noise)
    if role == "aggregated" or not any(agg):
        return agg
    if role == "prefill":
        tflops = acc.peak_flops_per_s("bf16") / 1e12
        base = PREFILL_SCALE * tflops * tp**solver_scale.TP_EXPONENT / weight * noise
        return tuple(base / prompt for prompt, _ in solver_scale.BUCKETS)
    bw_tbps = acc.mem_bandwidth_bytes_per_s / 1e12
    base = solver_scale.CAPACITY_SCALE * bw_tbps * tp**solver_scale.TP_EXPONENT / weight * noise
    return tuple(base / (out / solver_scale.OUT_UNIT_TOKENS) for _, out in solver_scale.BUCKETS)


def instance(n_services: int, seed: int, serving: str, headroom: float) -> inputs.FleetProblem:
    """A generated fleet whose services carry priorities, budgets and a current placement."""
    rng = np.random.default_rng(seed)
    fleet = solver_scale.pools(rng)
    roles = ("aggregated",) if serving == "aggregated" else ("prefill", "decode")
    services: list[inputs.ServiceDemand] = []
    cands: list[inputs.Candidate] = []
    current: dict[inputs.CandidateKey, int] = {}
    need_devices: dict[str, float] = defaultdict(float)
    for s in range(n_services):
        sid = f"svc-{s:04d}"
        weight = float(rng.choice(solver_scale.MODEL_WEIGHT_GB))
        rate = float(rng.lognormal(math.log(solver_scale.RATE_MEDIAN_RPS), solver_scale.RATE_SIGMA))
        rates = tuple(float(rate * f) for f in rng.dirichlet(np.ones(len(solver_scale.BUCKETS))))
        noise = {a: float(rng.lognormal(0.0, solver_scale.NOISE_SIGMA)) for a in catalog.ACCELERATORS}
        cheapest_total = 0.0
        for role in roles:
            mine: list[tuple[inputs.Candidate, int]] = []
            best = (math.inf, 0, "")
            for p in fleet:
                acc = catalog.ACCELERATORS[p.accelerator]
                for tp in solver_scale.TP_DEGREES:
                    if tp > min(acc.max_tp, p.devices_per_node):
                        continue
                    caps = _caps(acc, tp, weight, noise[acc.parent or acc.id], role)
                    if not any(caps):
                        continue
                    price = p.price_per_device_hour * tp
                    c = inputs.Candidate(sid, role, p.id, p.accelerator, "bf16", tp, caps, price)  # type: ignore[arg-type]
                    n = math.ceil(sum(r / cap for r, cap in zip(rates, caps, strict=True)))
                    mine.append((c, n))
                    if n * price < best[0]:
                        best = (n * price, n * tp, p.id)
            cands.extend(c for c, _ in mine)
            cheapest_total += best[0]
            need_devices[best[2]] += best[1]
            # Running now: a random configuration of this role, sized for the traffic.
            c, n = mine[int(rng.integers(len(mine)))]
            current[c.key] = n
        budget = None
        if rng.random() < BUDGET_SHARE:
            budget = round(cheapest_total * float(rng.uniform(*BUDGET_FACTOR_RANGE)), 2)
        services.append(
            inputs.ServiceDemand(
                sid,
                rates,
                serving=serving,  # type: ignore[arg-type]
                priority=int(rng.choice(PRIORITIES)),
                max_dollars_per_hour=budget,
            )
        )
    sized = tuple(
        dataclasses.replace(p, nodes=max(1, math.ceil(need_devices[p.id] * headroom / p.devices_per_node)))
        for p in fleet
    )
    return inputs.FleetProblem(tuple(services), sized, tuple(cands), current)


def grid_instance(n_services: int) -> inputs.FleetProblem:
    """Disaggregated services on 50 near-equal pools, no coupling constraints (tests/unit's case)."""
    pools = tuple(inputs.Pool(f"p{j}", f"chip{j % 5}", 8, 4, 1.0 + 0.1 * (j % 7)) for j in range(50))
    services = tuple(
        inputs.ServiceDemand(f"s{i}", (1.0 + i % 3, 2.0), serving="disaggregated") for i in range(n_services)
    )
    cands = tuple(
        inputs.Candidate(
            s.id, role, p.id, p.id, "bf16", 1, (1.0 + (j % 4), 0.5 + (j % 3)), p.price_per_device_hour
        )
        for s in services
        for j, p in enumerate(pools)
        for role in ("prefill", "decode")
    )
    return inputs.FleetProblem(services, pools, cands)


def load_previous(ref: str) -> ModuleType:
    """placement/solve.py as of git `ref` (the solver before the split), as a module."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:placement/solve.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "previous_solve.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("previous_solve", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_solve"] = module
    spec.loader.exec_module(module)
    return module


def to_previous(old: ModuleType, problem: inputs.FleetProblem) -> Any:
    """The same problem in the previous module's types (same field names)."""

    def convert(cls: Any, value: Any) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dataclasses.asdict(value).items() if k in names})

    return old.Problem(
        services=tuple(convert(old.ServiceDemand, s) for s in problem.services),
        pools=tuple(convert(old.Pool, p) for p in problem.pools),
        candidates=tuple(convert(old.Candidate, c) for c in problem.candidates),
        current_replicas={
            old.CandidateKey(*dataclasses.astuple(k)): v for k, v in problem.current_replicas.items()
        },
    )


def summary(plan: Any, seconds: float, lp_bound: float | None) -> dict[str, Any]:
    """What a plan says about itself, and its gap to the full LP bound of stage 1 when that exists."""
    served = sum(s.served_rps for s in plan.services) / max(1e-12, sum(s.demand_rps for s in plan.services))
    return {
        "seconds": round(seconds, 2),
        "status": plan.status,
        "stages": plan.stages,
        "price_per_hour": round(plan.price_per_hour, 2),
        "objective": round(plan.objective, 2),
        "bound": round(plan.bound, 2),
        "bound_source": plan.bound_source,
        "gap": round(plan.gap, 5),
        "served_share": round(served, 5),
        "gap_to_full_lp": None
        if lp_bound is None or plan.objective <= 0
        else round((plan.objective - lp_bound) / plan.objective, 5),
    }


def main() -> int:
    """Run before and after on the same instances and print one JSON row per (instance, solver)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=60)
    parser.add_argument("--serving", choices=("aggregated", "disaggregated"), default="disaggregated")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--headroom", type=float, default=0.9)
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument(
        "--before",
        default="2ce3912",
        help="git revision of the previous solver, before the split ('' to skip)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--generator", choices=("coupled", "grid"), default="coupled", help="grid: the uncoupled test case"
    )
    args = parser.parse_args()
    old = load_previous(args.before) if args.before else None
    rows = []
    for seed in range(args.seeds):
        problem = (
            grid_instance(args.services)
            if args.generator == "grid"
            else instance(args.services, seed, args.serving, args.headroom)
        )
        options = inputs.SolveOptions(
            time_limit_s=args.time_limit, move_penalty_per_device_hour=MOVE_PENALTY_PER_DEVICE_HOUR
        )
        lp = colgen.prune(problem, inputs.SolveOptions(max_candidates_per_bucket=3)).full_lp_bound
        row: dict[str, Any] = {
            "services": args.services,
            "serving": args.serving,
            "generator": args.generator,
            "seed": seed,
            "candidates": len(problem.candidates),
            "budgets": sum(1 for s in problem.services if s.max_dollars_per_hour is not None),
            "headroom": args.headroom,
            "full_lp_bound": None if lp is None else round(lp, 2),
        }
        if old is not None:
            started = time.perf_counter()
            old_options = old.SolveOptions(
                time_limit_s=args.time_limit, move_penalty_per_device_hour=MOVE_PENALTY_PER_DEVICE_HOUR
            )
            try:
                before = old.solve(to_previous(old, problem), old_options)
                row["before"] = summary(before, time.perf_counter() - started, lp)
            except old.PlacementError as exc:
                row["before"] = {"seconds": round(time.perf_counter() - started, 2), "error": str(exc)}
            print(json.dumps(row), flush=True)
        started = time.perf_counter()
        try:
            after = solve.solve(problem, options)
            row["after"] = summary(after, time.perf_counter() - started, lp)
        except inputs.PlacementError as exc:
            row["after"] = {"seconds": round(time.perf_counter() - started, 2), "error": str(exc)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
