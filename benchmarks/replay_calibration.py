"""Check the replay's fleet model against the performance model's own promise.

The capacity model promises p99 TTFT and ITL within the SLO for a steady Poisson stream at up to a
candidate's max req/s. A fleet model consistent with it must keep ~99% of such a stream within the SLO
at 100% of capacity, and must show misses when the stream is well above it. This replays steady Poisson
streams (the conversation trace's request sizes) at 0.9-1.3x the capacity of 1 and 4 replicas of the
cheapest-per-req/s configurations of two chips, through placement/replay.py.

Run: .venv/bin/python benchmarks/replay_calibration.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import autoscaling as bench

from placement import replay


def main() -> int:
    """Print attainment per chip, replicas and load."""
    pools = bench.fleet_pools()
    case = bench.build_case("conv", 5, pools)
    rng = np.random.default_rng(1)
    print(f"{'pool':10} {'config':10} {'cap req/s':>9} {'replicas':>8} {'load':>5} {'in SLO':>8}")
    for pool in ("h100-p5", "h200-p5e"):
        usable = [c for c in case.problem.candidates if c.pool == pool and bench._mix_capacity(case, c) > 0.0]
        cand = max(usable, key=lambda c: bench._mix_capacity(case, c) / c.price_per_hour)
        cap = bench._mix_capacity(case, cand)
        room = next(p for p in case.problem.pools if p.id == pool).devices_total // cand.tp
        for replicas in sorted({1, min(4, room)}):
            for load in (0.9, 1.0, 1.1, 1.3):
                duration = 1800.0
                n = rng.poisson(load * cap * replicas * duration)
                ts = np.sort(rng.uniform(0.0, duration, n))
                pick = rng.choice(case.trace.ts.size, n)
                trace = replay.Trace.of(ts, case.trace.prompt[pick], case.trace.output[pick])
                fleet = {cand.key: replicas}
                res = replay.replay(
                    case.problem, case.wl, bench.SLO, trace, replay.static_targets(fleet), fleet
                )
                print(
                    f"{pool:10} {cand.precision}/tp{cand.tp:<5} {cap:9.2f} {replicas:8d} {load:5.1f} "
                    f"{res.attainment:8.2%}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
