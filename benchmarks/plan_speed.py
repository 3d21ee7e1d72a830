"""Benchmark (d): planning at cluster speed on generated DIVERSE fleets, the path the operator takes.

API objects in (InferenceService / AcceleratorPool dicts as the API server returns them) -> typed objects ->
semantic validation -> chipfit.planning (candidates from the performance model, MILP solve) -> per-service
status out (handlers.outcome_of + reconcile.compute_status). The same generated fleet runs through this
tree and through a PREVIOUS commit (checked out into a temporary git worktree, run in a subprocess with its
own code on PYTHONPATH) in the same run, so the ratios compare like with like on a noisy shared machine.

Fleets are deterministic (seeded): services draw a model from the catalog, a traffic class (request-size
shape taken from public traces where the repository has one, see TRAFFIC_CLASSES), an SLO tier, a rate,
precisions, an engine, a serving mode and placement constraints; ~40 pools: every catalog accelerator
(whole chips and MIG slices), spot twins of the whole chips and second-cloud copies, with a node count that
grows with the fleet.

Run:
  .venv/bin/python benchmarks/plan_speed.py --services 100 1000 10000 --previous 2ce3912 --json OUT
  .venv/bin/python benchmarks/plan_speed.py --services 100 --profile      # cProfile of this tree's run
  .venv/bin/python benchmarks/plan_speed.py candidates 150 0d08719 2   # candidates alone, one process
The previous code is capped at --previous-cap-s seconds per size: when it would take longer, it runs on the
first --previous-subset services and its candidate-building time is extrapolated linearly in services (each
service's candidates are independent), which is a LOWER bound on its real time (its solve is not included).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import os
import pstats
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEED = 20261129

# (name, prompt mean, prompt p99, output mean, output p99, weight, SLO tiers it draws from). Sizes of
# "chat" and "code" are the Azure LLM inference traces' (conversation: prompt 1,155 / 4,142, output 211 /
# 601; code: prompt 2,048 / 7,400, output 28 / 200) as examples/20-services.yaml quotes them; the others are
# illustrative shapes (RAG: long retrieved context, summarization: long input, agent: tool transcripts,
# short chat, batch generation), not measurements.
TRAFFIC_CLASSES: tuple[tuple[str, float, float, float, float, float, tuple[str, ...]], ...] = (
    ("chat", 1155, 4142, 211, 601, 0.30, ("interactive", "standard")),
    ("code", 2048, 7400, 28, 200, 0.15, ("code",)),
    ("rag", 6000, 16000, 300, 800, 0.15, ("standard", "relaxed")),
    ("summarize", 3000, 9000, 250, 700, 0.10, ("standard", "relaxed", "batch")),
    ("agent", 2500, 8000, 150, 500, 0.10, ("interactive", "standard")),
    ("short-chat", 300, 1200, 150, 500, 0.10, ("interactive", "standard")),
    ("batch-gen", 800, 2500, 500, 1500, 0.10, ("batch", "relaxed")),
)
# SLO tiers: (TTFT p99 ms choices, ITL p99 ms choices) as platform teams write them (round numbers).
SLO_TIERS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "interactive": ((300, 400, 500, 800), (30, 40, 50, 60)),
    "code": ((200, 250, 300), (20, 25, 30)),
    "standard": ((1000, 1500, 2000, 3000), (50, 80, 100)),
    "relaxed": ((3000, 5000), (100, 150)),
    "batch": ((10000, 20000), (150, 200, 300)),
}
# Catalog models and how often a fleet runs them (small models dominate real fleets).
MODELS: tuple[tuple[str, float, str], ...] = (
    ("llama-3.1-8b", 0.30, "meta-llama/Llama-3.1-8B-Instruct"),
    ("mistral-7b", 0.15, "mistralai/Mistral-7B-Instruct-v0.3"),
    ("llama-2-7b", 0.05, "meta-llama/Llama-2-7b-chat-hf"),
    ("llama-3.1-70b", 0.20, "meta-llama/Llama-3.1-70B-Instruct"),
    ("llama-2-70b", 0.05, "meta-llama/Llama-2-70b-chat-hf"),
    ("mixtral-8x7b", 0.12, "mistralai/Mixtral-8x7B-Instruct-v0.1"),
    ("mixtral-8x22b", 0.08, "mistralai/Mixtral-8x22B-Instruct-v0.1"),
    ("llama-3.1-405b", 0.05, "meta-llama/Llama-3.1-405B-Instruct"),
)
ENGINES: tuple[tuple[str, float], ...] = (("vllm", 0.6), ("sglang", 0.2), ("trtllm", 0.15), ("tgi", 0.05))
PRECISION_SETS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("bf16",), 0.25),
    (("bf16", "fp8"), 0.35),
    (("fp8",), 0.15),
    (("bf16", "int8"), 0.1),
    (("bf16", "fp8", "int4"), 0.15),
)
FULL_CHIPS = ("l4", "l40s", "a100-80gb", "h100", "h200", "mi300x", "inf2")
# Second-cloud copies of the most common chips (other prices), to reach ~40 pools.
SECOND_CLOUD = ("l4", "l40s", "a100-80gb", "h100", "h200", "mi300x", "h100/3g.40gb", "a100-80gb/3g.40gb")
SPOT_DISCOUNT = 0.5
SECOND_CLOUD_PRICE = 1.1
# Nodes per pool: 30 per 100 services (the 100-service fleet had 30 nodes per pool).
NODES_PER_SERVICE = 0.3


def _choice(
    rng: np.random.Generator, items: tuple[Any, ...], weights: tuple[float, ...] | None = None
) -> Any:
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _round2(x: float) -> float:
    """Two significant figures (how people write sizes in a spec: 1200, not 1187.3)."""
    if x <= 0:
        return x
    digits = 1 - math.floor(math.log10(x))
    return float(round(x, digits))


def generate_pools(n_services: int) -> list[dict[str, Any]]:
    """~40 AcceleratorPools: every catalog accelerator, spot twins of whole chips, second-cloud copies."""
    from placement import catalog

    nodes = max(2, math.ceil(NODES_PER_SERVICE * n_services))
    pools: list[dict[str, Any]] = []

    def pool(name: str, acc_id: str, price: float, spot: bool = False) -> dict[str, Any]:
        acc = catalog.ACCELERATORS[acc_id]
        per_node = 8 if acc.parent is None else 8 * acc.mig_max_instances
        if acc_id == "inf2":
            per_node = 12
        return {
            "apiVersion": "chipfit.io/v1alpha1",
            "kind": "AcceleratorPool",
            "metadata": {"name": name},
            "spec": {
                "accelerator": acc_id,
                "devicesPerNode": per_node,
                "nodes": nodes,
                "pricePerDeviceHour": round(price, 4),
                "spot": spot,
            },
        }

    for acc in catalog.ACCELERATORS.values():
        if acc.default_price_per_hour is None:
            # Chips the catalog lists without a public on-demand price (B200, MI325X, ...): no pool.
            continue
        pools.append(pool(acc.id.replace("/", "-").replace(".", "-"), acc.id, acc.default_price_per_hour))
    for acc_id in FULL_CHIPS:
        price = catalog.ACCELERATORS[acc_id].default_price_per_hour * SPOT_DISCOUNT
        pools.append(pool(f"{acc_id}-spot", acc_id, price, spot=True))
    for acc_id in SECOND_CLOUD:
        price = catalog.ACCELERATORS[acc_id].default_price_per_hour * SECOND_CLOUD_PRICE
        pools.append(pool(acc_id.replace("/", "-").replace(".", "-") + "-b", acc_id, price))
    return pools


def generate_services(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """`n` diverse InferenceServices (deterministic for a seed)."""
    from placement import catalog

    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    class_weights = tuple(c[5] for c in TRAFFIC_CLASSES)
    while len(out) < n:
        i = len(out)
        model_id, _, source = _choice(rng, MODELS, tuple(m[1] for m in MODELS))
        model = catalog.MODELS[model_id]
        name, p_mean, p_p99, o_mean, o_p99, _, tiers = _choice(rng, TRAFFIC_CLASSES, class_weights)
        # Each service's sizes vary around its class (+-30%, two significant figures).
        jitter = rng.lognormal(0.0, 0.3, size=2)
        p_mean, p_p99 = _round2(p_mean * jitter[0]), _round2(p_p99 * jitter[0])
        o_mean, o_p99 = _round2(o_mean * jitter[1]), _round2(o_p99 * jitter[1])
        context = min(model.max_context_tokens, 32768)
        if p_p99 + o_p99 > context:
            continue
        ttfts, itls = SLO_TIERS[_choice(rng, tiers)]
        engine = _choice(rng, tuple(e[0] for e in ENGINES), tuple(e[1] for e in ENGINES))
        precisions = list(
            _choice(rng, tuple(p[0] for p in PRECISION_SETS), tuple(p[1] for p in PRECISION_SETS))
        )
        serving = _choice(rng, ("aggregated", "auto", "disaggregated"), (0.75, 0.15, 0.10))
        if engine == "tgi":
            serving = "aggregated"
        placement: dict[str, Any] = {"priority": int(_choice(rng, (0, 0, 100, 500)))}
        if rng.random() < 0.25:
            placement["spotAllowed"] = False
        r = rng.random()
        if r < 0.10:
            placement["allowedAccelerators"] = sorted(
                set(rng.choice(["h100", "h200", "l40s", "a100-80gb", "mi300x", "l4"], size=3, replace=False))
            )
        elif r < 0.20:
            placement["excludedAccelerators"] = ["l4"]
        rps = float(np.clip(rng.lognormal(math.log(2.0), 1.2), 0.05, 200.0))
        spec: dict[str, Any] = {
            "model": {"id": model_id, "source": source},
            "precisions": precisions,
            "engine": engine,
            "slo": {"ttftP99Ms": float(_choice(rng, ttfts)), "itlP99Ms": float(_choice(rng, itls))},
            "workload": {
                "requestsPerSecond": round(rps, 3),
                "promptTokens": {"mean": p_mean, "p99": p_p99},
                "outputTokens": {"mean": o_mean, "p99": o_p99},
                "maxContextTokens": context,
            },
            "serving": serving,
            "replicas": {"min": int(rng.random() < 0.3), "max": 64},
            "placement": placement,
        }
        if rng.random() < 0.05:
            spec["budget"] = {"maxDollarsPerHour": float(_choice(rng, (50.0, 200.0, 1000.0)))}
        out.append(
            {
                "apiVersion": "chipfit.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": f"{name}-{i:05d}", "namespace": f"team-{i % 17:02d}", "generation": 1},
                "spec": spec,
            }
        )
    return out


# --- one run (this tree or a previous one, in a subprocess) ----------------------------------------------


def run_plan(fleet_path: Path, limit: int | None, time_limit_s: float) -> dict[str, Any]:
    """Operator path on one fleet: parse, validate, plan (no baselines), status out. Returns timings."""
    from chipfit import handlers, planning, reconcile
    from chipfit.api import v1alpha1

    try:  # the solver package (from wave 2 on)
        from placement.solver import inputs as solver_inputs
        from placement.solver import solve as solver
    except ImportError:  # the previous single module
        from placement import solve as solver  # type: ignore[no-redef]

        solver_inputs = solver  # type: ignore[assignment]

    fleet = json.loads(fleet_path.read_text())
    raw_services = fleet["services"][:limit] if limit else fleet["services"]
    t0 = time.perf_counter()
    c0 = _cpu_s()
    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in fleet["pools"]]
    pool_names = [p.metadata.name for p in pools]
    services = []
    invalid = 0
    for body in raw_services:
        service = handlers.parse_service(body)
        if handlers.first_problem(service, pool_names) is not None:
            invalid += 1
        else:
            services.append(service)
    t1 = time.perf_counter()
    c1 = _cpu_s()
    # The operator's fleet worker plans through a Planner where the tree has one.
    planner = planning.Planner() if hasattr(planning, "Planner") else None

    def build(items: list[Any]) -> Any:
        return (
            planner.build_inputs(items, pools) if planner is not None else planning.build_inputs(items, pools)
        )

    cset = build(services)
    t2 = time.perf_counter()
    c2 = _cpu_s()
    options = solver_inputs.SolveOptions(time_limit_s=time_limit_s)
    relaxed_floors = False
    try:
        try:
            plan = solver.solve(cset.problem, options)
        except solver_inputs.InfeasibleError:
            # As the operator does: replica floors the fleet cannot meet are relaxed and the fleet re-solved.
            relaxed_floors = True
            cset = build([handlers._without_minimum(s) for s in services])
            plan = solver.solve(cset.problem, options)
    except solver_inputs.PlacementError as error:  # the solver's failure is a result here, not a crash
        t3 = time.perf_counter()
        return {
            "services": len(raw_services),
            "invalid": invalid,
            "candidates": len(cset.problem.candidates),
            "parse_s": t1 - t0,
            "candidates_s": t2 - t1,
            "candidates_cpu_s": c2 - c1,
            "solve_s": t3 - t2,
            "solve_cpu_s": _cpu_s() - c2,
            "status_s": 0.0,
            "total_s": t3 - t0,
            "total_cpu_s": _cpu_s() - c0,
            "max_rss_mb": _max_rss_mb(),
            "solver_status": f"error: {error}",
        }
    t3 = time.perf_counter()
    c3 = _cpu_s()
    outcomes = {sp.service: handlers.outcome_of(sp) for sp in plan.services}
    statuses = [
        reconcile.compute_status(s, outcomes.get(planning.service_id(s)), [], None, "2026-01-01T00:00:00Z")
        for s in services
    ]
    t4 = time.perf_counter()
    c4 = _cpu_s()
    served = sum(1 for sp in plan.services if sp.status == "served")
    return {
        "services": len(raw_services),
        "invalid": invalid,
        "candidates": len(cset.problem.candidates),
        "parse_s": t1 - t0,
        "parse_cpu_s": c1 - c0,
        "candidates_s": t2 - t1,
        "candidates_cpu_s": c2 - c1,
        "solve_s": t3 - t2,
        "solve_cpu_s": c3 - c2,
        "status_s": t4 - t3,
        "total_s": t4 - t0,
        "total_cpu_s": c4 - c0,
        "max_rss_mb": _max_rss_mb(),
        "price_per_hour": plan.price_per_hour,
        "bound": plan.bound,
        "bound_source": plan.bound_source,
        "gap": plan.gap,
        "solver_status": plan.status,
        "relaxed_floors": relaxed_floors,
        "served": served,
        "statuses": len(statuses),
    }


def run_replan(fleet_path: Path, time_limit_s: float) -> dict[str, Any]:
    """The operator's re-plan after node loss, through chipfit.planning.Planner (this tree only).

    A cold plan of the whole fleet, then every node of the pool holding the most planned devices is lost
    and the fleet is planned again with the same Planner: only the solve should run again.
    """
    from chipfit import handlers, planning
    from chipfit.api import v1alpha1
    from placement.solver import inputs as solver_inputs

    fleet = json.loads(fleet_path.read_text())
    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in fleet["pools"]]
    services = [handlers.parse_service(b) for b in fleet["services"]]
    planner = planning.Planner(solver_inputs.SolveOptions(time_limit_s=time_limit_s))
    t0 = time.perf_counter()
    cold = planner.build_inputs(services, pools)
    t1 = time.perf_counter()
    first = planner.plan(services, pools)
    t2 = time.perf_counter()
    used: dict[str, int] = {}
    for sp in first.plan.services:
        for a in sp.assignments:
            used[a.pool] = used.get(a.pool, 0) + a.devices
    lost = max(used, key=lambda k: used[k]) if used else pools[0].metadata.name
    after = [
        p.model_copy(update={"spec": p.spec.model_copy(update={"nodes": 0})})
        if p.metadata.name == lost
        else p
        for p in pools
    ]
    t3 = time.perf_counter()
    warm = planner.build_inputs(services, after)
    t4 = time.perf_counter()
    replanned = planner.plan(services, after)
    t5 = time.perf_counter()
    moved = sum(1 for sp in replanned.plan.services for a in sp.assignments if a.pool == lost and a.replicas)
    return {
        "services": len(services),
        "candidates": len(cold.problem.candidates),
        "cold_candidates_s": t1 - t0,
        "first_plan_s": t2 - t1,
        "lost_pool": lost,
        "warm_candidates_s": t4 - t3,
        "warm_priced_pairs": planner.last_priced_pairs,
        "same_candidates": [c for c in warm.problem.candidates] == [c for c in cold.problem.candidates],
        "replan_s": t5 - t4,
        "replicas_left_on_lost_pool": moved,
        "solver_status": replanned.plan.status,
    }


def run_candidates(fleet_path: Path, limit: int) -> dict[str, Any]:
    """candidates.build alone, in one process, as the Planner calls it (profile table empty, the model's
    fallback): CPU seconds and how many candidates (`plan_speed.py candidates`)."""
    from chipfit import handlers, planning
    from chipfit.api import v1alpha1
    from placement import candidates

    fleet = json.loads(fleet_path.read_text())
    pools = [v1alpha1.AcceleratorPool.model_validate(p) for p in fleet["pools"]]
    specs = [planning.to_spec(handlers.parse_service(b)) for b in fleet["services"][:limit]]
    c0 = _cpu_s()
    cset = candidates.build(
        specs,
        [planning.to_pool(p) for p in pools],
        oracle=candidates.profile_oracle([], fallback=candidates.perf_oracle),
        workers=1,
        accelerators=planning.fleet_accelerators(pools),
    )
    return {
        "services": len(specs),
        "candidates": len(cset.problem.candidates),
        "rejections": len(cset.rejections),
        "candidates_cpu_s": _cpu_s() - c0,
    }


def _max_rss_mb() -> float:
    """Peak resident memory of this process and its largest finished child (worker processes), MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the machine is shared: wall time is noisy)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _worker_main(argv: list[str]) -> None:
    """`plan_speed.py _run FLEET LIMIT TIME_LIMIT`: one run, JSON on stdout (used for both trees)."""
    if os.environ.get("CHIPFIT_TREE"):
        # Only the tree on PYTHONPATH: drop the editable install's finder, which would otherwise serve
        # modules the previous tree lacks (placement.solver) from this one.
        sys.meta_path[:] = [
            f for f in sys.meta_path if "__editable__" not in str(getattr(f, "__module__", ""))
        ]
    fleet, limit, time_limit = Path(argv[0]), int(argv[1]), float(argv[2])
    if time_limit < 0:  # `candidates` mode: candidate building alone
        print(json.dumps(run_candidates(fleet, limit)))
        return
    print(json.dumps(run_plan(fleet, limit or None, time_limit)))


def _run_subprocess(
    tree: Path, fleet: Path, limit: int, time_limit_s: float, cap_s: float
) -> dict[str, Any] | None:
    """Run one plan with `tree`'s code in a fresh interpreter; None when it exceeds `cap_s`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree}{os.pathsep}{tree / 'operator'}"
    env["CHIPFIT_TREE"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_run", str(fleet), str(limit), str(time_limit_s)]
    # Its own process group: on timeout the run's worker processes are stopped with it (killing only the
    # run left them pricing, orphaned, stealing the CPU of the runs measured after it).
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
    if proc.returncode != 0:
        raise RuntimeError(f"run in {tree} failed:\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def previous_tree(commit: str) -> Any:
    """A temporary git worktree of `commit` (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="chipfit-prev-"))
    path = tmp / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        _worker_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "replan":
        # `plan_speed.py replan N [SEED]`: Planner re-plan after node loss on a generated N-service fleet.
        n = int(sys.argv[2])
        with tempfile.TemporaryDirectory(prefix="chipfit-fleet-") as tmp:
            fleet = Path(tmp) / "fleet.json"
            seed = int(sys.argv[3]) if len(sys.argv) > 3 else SEED
            fleet.write_text(json.dumps({"pools": generate_pools(n), "services": generate_services(n, seed)}))
            print(json.dumps(run_replan(fleet, 60.0)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "candidates":
        # `plan_speed.py candidates N COMMIT [REPEAT] [FLEET_SIZE]`: candidate building alone, first N
        # services of the FLEET_SIZE-service fleet, one process, this tree and COMMIT in turn, REPEAT times.
        n, commit = int(sys.argv[2]), sys.argv[3]
        repeat = int(sys.argv[4]) if len(sys.argv) > 4 else 2
        size = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
        with previous_tree(commit) as prev, tempfile.TemporaryDirectory(prefix="chipfit-fleet-") as tmp:
            fleet = Path(tmp) / "fleet.json"
            fleet.write_text(json.dumps({"pools": generate_pools(size), "services": generate_services(size)}))
            for _ in range(repeat):
                for label, tree in (("current", REPO), (commit, prev)):
                    row = _run_subprocess(tree, fleet, n, -1.0, 3600.0)
                    print(f"{label}: {json.dumps(row)}", flush=True)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--previous", default=None, help="commit of the previous code to compare against")
    parser.add_argument("--previous-cap-s", type=float, default=300.0)
    parser.add_argument("--previous-subset", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=60.0, help="solver time limit, seconds")
    parser.add_argument("--profile", action="store_true", help="cProfile this tree's run (top 25)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        prev = stack.enter_context(previous_tree(args.previous)) if args.previous else None
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chipfit-fleet-")))
        for n in args.services:
            fleet = workdir / f"fleet-{n}.json"
            fleet.write_text(
                json.dumps({"pools": generate_pools(n), "services": generate_services(n, args.seed)})
            )
            row: dict[str, Any] = {"n": n}
            if args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                row["current"] = run_plan(fleet, None, args.time_limit)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            else:
                row["current"] = _run_subprocess(REPO, fleet, 0, args.time_limit, 3600.0)
            print(f"[{n}] current: {json.dumps(row['current'])}", flush=True)
            if prev is not None:
                full = _run_subprocess(prev, fleet, 0, args.time_limit, args.previous_cap_s)
                if full is not None:
                    row["previous"] = full
                    row["previous_kind"] = "measured"
                else:
                    subset = min(args.previous_subset, n)
                    part = _run_subprocess(prev, fleet, subset, args.time_limit, 3600.0)
                    assert part is not None
                    per_service = part["candidates_s"] / subset
                    per_service_cpu = part.get("candidates_cpu_s", part["candidates_s"]) / subset
                    row["previous_subset"] = part
                    row["previous_kind"] = f"extrapolated from {subset} services (lower bound)"
                    row["previous"] = {
                        "total_s": per_service * n,
                        "candidates_s": per_service * n,
                        "candidates_cpu_s": per_service_cpu * n,
                    }
                print(f"[{n}] previous ({row['previous_kind']}): {json.dumps(row['previous'])}", flush=True)
                row["speedup_total"] = row["previous"]["total_s"] / row["current"]["total_s"]
                row["speedup_candidates"] = row["previous"]["candidates_s"] / row["current"]["candidates_s"]
                if "candidates_cpu_s" in row["previous"] and "candidates_cpu_s" in row["current"]:
                    row["speedup_candidates_cpu"] = (
                        row["previous"]["candidates_cpu_s"] / row["current"]["candidates_cpu_s"]
                    )
                print(
                    f"[{n}] speed-up: total x{row['speedup_total']:.1f}, "
                    f"candidates x{row['speedup_candidates']:.1f}",
                    flush=True,
                )
            results.append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(summary(results))


def summary(results: list[dict[str, Any]]) -> str:
    """The results as the markdown table of benchmarks/REPORT_solver.md (d)."""
    lines = [
        "| services x pools | candidates | candidates CPU / wall (this tree) | solve wall (status, gap to "
        "bound) | end to end CPU / wall | previous: candidates CPU | ratio (candidates CPU) |",
        "|---|---:|---|---|---|---|---:|",
    ]
    for row in results:
        cur = row["current"]
        gap = cur.get("gap")
        gap_text = "-" if gap is None or (isinstance(gap, float) and math.isnan(gap)) else f"{gap:.2%}"
        prev = row.get("previous")
        prev_text = (
            f"{prev['candidates_cpu_s']:.1f} s ({row['previous_kind']})" if prev is not None else "not run"
        )
        ratio = row.get("speedup_candidates_cpu")
        lines.append(
            f"| {row['n']:,} | {cur['candidates']:,} | {cur['candidates_cpu_s']:.1f} s / "
            f"{cur['candidates_s']:.1f} s | {cur['solve_s']:.1f} s ({cur['solver_status']}, {gap_text}, "
            f"{cur.get('bound_source', '-')}) | {cur.get('total_cpu_s', math.nan):.1f} s / "
            f"{cur['total_s']:.1f} s | {prev_text} | {'-' if ratio is None else f'{ratio:.1f}x'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
