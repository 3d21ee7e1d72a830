"""Benchmark (e, wave 3): the solver alone on the generated DIVERSE fleets of plan_speed.py, this tree
against a previous commit in the same run.

Candidates are built once with this tree (planning.Planner, the operator's path) and pickled; each solver
then runs in a fresh interpreter on the same FleetProblem (the previous one from a temporary git worktree,
its own code on PYTHONPATH), so both see the same input and the same machine load. As the operator does,
replica floors the fleet cannot meet (InfeasibleError) are relaxed and the fleet solved again. Reported:
status, $/h, bound and gap (and what bounds it), unmet req/s, CPU and wall seconds (CPU is what to compare
on a shared machine: HiGHS's time limit is wall-clock, so a loaded machine gives it less CPU).

Run:
  .venv/bin/python benchmarks/solver_diverse.py --services 100 1000 --previous 2aec971 \
      --json benchmarks/results/solver_diverse.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plan_speed

REPO = Path(__file__).resolve().parent.parent


def build_problem(n: int, seed: int, out: Path) -> dict[str, Any]:
    """Generate the fleet, build candidates with this tree, pickle the FleetProblem."""
    from chipfit import handlers, planning
    from chipfit.api import v1alpha1
    from placement import catalog

    saved = catalog.ACCELERATORS
    try:
        # Chips without a list price get no pool (as wave3-speed's fix to plan_speed.generate_pools does).
        catalog.ACCELERATORS = {k: a for k, a in saved.items() if a.default_price_per_hour is not None}  # type: ignore[misc]
        raw_pools = plan_speed.generate_pools(n)
    finally:
        catalog.ACCELERATORS = saved  # type: ignore[misc]
    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in raw_pools]
    names = [p.metadata.name for p in pools]
    services = [
        s
        for s in (handlers.parse_service(b) for b in plan_speed.generate_services(n, seed))
        if handlers.first_problem(s, names) is None
    ]
    started = time.process_time()
    cset = planning.Planner().build_inputs(services, pools)
    out.write_bytes(pickle.dumps(cset.problem))
    return {
        "pools": len(pools),
        "services": len(services),
        "candidates": len(cset.problem.candidates),
        "candidates_cpu_s": round(time.process_time() - started, 1),
    }


def solve_main(argv: list[str]) -> None:
    """`solver_diverse.py _solve PICKLE TIME_LIMIT`: one solve with the tree on PYTHONPATH, JSON out."""
    if os.environ.get("CHIPFIT_TREE"):
        sys.meta_path[:] = [
            f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))
        ]
    from placement.solver import inputs, solve

    loaded = pickle.loads(Path(argv[0]).read_bytes())
    # Rebuilt through the constructor: a problem pickled before a field was added (--problems keeps
    # pickles) then gets that field's default instead of an AttributeError.
    problem = inputs.FleetProblem(
        **{f.name: getattr(loaded, f.name) for f in fields(inputs.FleetProblem) if hasattr(loaded, f.name)}
    )
    options = inputs.SolveOptions(time_limit_s=float(argv[1]))
    wall, cpu = time.perf_counter(), time.process_time()
    relaxed = False
    out: dict[str, Any]
    try:
        try:
            plan = solve.solve(problem, options)
        except inputs.InfeasibleError:
            relaxed = True
            problem = replace(problem, services=tuple(replace(s, min_replicas=0) for s in problem.services))
            plan = solve.solve(problem, options)
        out = {
            "status": plan.status,
            "price_per_hour": round(plan.price_per_hour, 2),
            "bound": None if math.isnan(plan.bound) else round(plan.bound, 2),
            "gap": None if math.isnan(plan.gap) else round(plan.gap, 4),
            "bound_source": plan.bound_source,
            "unmet_rps": round(sum(s.unmet_rps for s in plan.services), 3),
        }
    except inputs.PlacementError as error:
        out = {"status": "error", "error": str(error)[:200]}
    out["demand_rps"] = round(sum(s.requests_per_second for s in problem.services), 1)
    out["relaxed_floors"] = relaxed
    out["wall_s"] = round(time.perf_counter() - wall, 1)
    out["cpu_s"] = round(time.process_time() - cpu, 1)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out))


def _run(tree: Path, problem: Path, time_limit: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree}{os.pathsep}{tree / 'operator'}"
    env["CHIPFIT_TREE"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_solve", str(problem), str(time_limit)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"status": "crashed", "stderr": done.stderr[-1000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_solve":
        solve_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seed", type=int, default=plan_speed.SEED)
    parser.add_argument("--previous", default=None, help="commit of the previous solver")
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--problems",
        type=Path,
        default=None,
        help="directory keeping the pickled FleetProblems (problem-N.pickle): built once, reused after",
    )
    parser.add_argument("--runs", type=int, default=1, help="solves of the current tree per fleet")
    args = parser.parse_args()
    rows = []
    with contextlib.ExitStack() as stack:
        prev = stack.enter_context(plan_speed.previous_tree(args.previous)) if args.previous else None
        if args.problems is not None:
            args.problems.mkdir(parents=True, exist_ok=True)
            work = args.problems
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chipfit-solver-")))
        for n in args.services:
            problem = work / f"problem-{n}-{args.seed}.pickle"
            fleet_file = problem.with_suffix(".json")
            if problem.exists() and fleet_file.exists():
                fleet = json.loads(fleet_file.read_text())
            else:
                fleet = build_problem(n, args.seed, problem)
                fleet_file.write_text(json.dumps(fleet))
            row: dict[str, Any] = {"n": n, "fleet": fleet}
            print(f"[{n}] fleet: {json.dumps(row['fleet'])}", flush=True)
            if prev is not None:
                row["previous"] = _run(prev, problem, args.time_limit)
                print(f"[{n}] previous ({args.previous}): {json.dumps(row['previous'])}", flush=True)
            runs = [_run(REPO, problem, args.time_limit) for _ in range(args.runs)]
            row["current"] = runs[0]
            if len(runs) > 1:
                row["current_runs"] = runs
            for run in runs:
                print(f"[{n}] current: {json.dumps(run)}", flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
