"""Benchmark (a): Mélange's published optima reproduced through chipfit's profile-table input path.

Run: .venv/bin/python benchmarks/solver_melange.py   (reads ../shared/data/melange/melange_profiles.json)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from placement import baselines, candidates
from placement.solver import solve

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "melange" / "melange_profiles.json"


def main() -> int:
    """Print chipfit's answer next to the published one for both cases; exit 1 on any mismatch."""
    data = json.loads(DATA.read_text())
    info = data["gpu_info_llama7b"]
    published = data["published_notebook_output_commit_4acefed"]
    ok = True

    gpu_info = {g: (info[g]["cost"], info[g]["tputs"]) for g in ("A10G", "A100")}
    started = time.perf_counter()
    cset = candidates.from_melange_inputs(gpu_info, data["arena_distribution_1000convos_commit_4acefed"], 4.0)
    plan = solve.solve(cset.problem)
    seconds = time.perf_counter() - started
    mix = {a.accelerator: a.replicas for a in plan.service("melange").assignments}
    singles = baselines.best_single_type(cset.problem).price_per_hour_by_type
    theirs = baselines.melange(
        {g: info[g]["tputs"] for g in ("A10G", "A100")},
        {g: info[g]["cost"] for g in ("A10G", "A100")},
        data["arena_distribution_1000convos_commit_4acefed"],
        4.0,
    )
    want = published["ILP"]
    print("case: Llama-2-7B, arena distribution, 4 req/s, A10G + A100")
    print(
        f"  chipfit MILP       : {mix}  ${plan.price_per_hour:.2f}/h"
        f"  ({plan.status}, {seconds * 1000:.0f} ms)"
    )
    print(f"  Mélange ILP (ours) : {dict(theirs.gpus)}  ${theirs.price_per_hour:.2f}/h")
    print(f"  published          : {{'a10g': {want['A10G']}, 'a100': {want['A100']}}}  ${want['cost']:.2f}/h")
    print(
        f"  A100 only          : ${singles['a100']:.2f}/h (published ${published['A100-only']['cost']:.2f})"
    )
    print(
        f"  A10G only          : ${singles['a10g']:.2f}/h (published ${published['A10G-only']['cost']:.2f})"
    )
    ok &= (
        mix == {"a10g": want["A10G"], "a100": want["A100"]} and abs(plan.price_per_hour - want["cost"]) < 1e-9
    )
    ok &= abs((singles["a100"] or 0) - published["A100-only"]["cost"]) < 1e-9
    ok &= abs((singles["a10g"] or 0) - published["A10G-only"]["cost"]) < 1e-9

    toy = data["toy_example_output"]
    toy_set = candidates.from_melange_inputs(
        {g: (v["cost"], v["tputs"]) for g, v in toy["gpu_info"].items()},
        toy["workload_distribution"],
        toy["overall_rate"],
    )
    toy_plan = solve.solve(toy_set.problem)
    toy_mix = {a.accelerator: a.replicas for a in toy_plan.service("melange").assignments}
    print("case: Mélange toy example, 16 req/s x distribution summing to 1.25")
    print(f"  chipfit MILP       : {toy_mix}  ${toy_plan.price_per_hour:.2f}/h")
    print(f"  published          : {{'a10g': {toy['result']['A10G']}}}  ${toy['result']['cost']:.2f}/h")
    ok &= (
        toy_mix == {"a10g": toy["result"]["A10G"]}
        and abs(toy_plan.price_per_hour - toy["result"]["cost"]) < 1e-9
    )
    print("MATCH" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
