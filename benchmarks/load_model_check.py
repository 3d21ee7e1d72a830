"""Compare the performance model's TTFT/ITL under load with the real vLLM CPU engine (load_latency.py's data).

    .venv/bin/python benchmarks/load_model_check.py            # markdown tables for REPORT_accuracy.md

The CPU "chip" is the host as `chipfit profile` declares it (operator/chipfit/profiling/host.py: nominal
core peak, measured copy bandwidth) and the engine's efficiency and per-request front-end overhead are
fitted with placement/profile_fit.py on ONE concurrency sweep (the default engine's first repeat). Held
out: the other repeats, every Poisson-rate point (up to 1.3x the measured capacity) and the whole
`--max-num-seqs 4` engine (an admission limit the fit never saw).

"before" is the model as it was at 2aec971 (wave 2): its own fit, and every point predicted by
latency_at_rate at the rate the point achieved (what profile_fit does; past capacity it has no answer).
"after" is this branch: a concurrency point by latency_at_concurrency (closed loop, admission queue past
the slots), a Poisson point by latency_over_run (finite run from an idle engine at the offered rate).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import pathlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests" / "engine"), str(REPO)]

import harness  # noqa: E402

from chipfit.profiling import command, host  # noqa: E402
from placement import perf, profile_fit  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "load_latency_vllm_cpu.json"
BEFORE_COMMIT = "2aec971"
KV_BYTES = 2**30
# The host's copy bandwidth, fixed so the check is reproducible: host.measure_copy_bytes_per_s() read
# 10-35 GB/s across runs on the shared machine; the fitted bandwidth fraction absorbs the choice.
HOST_COPY_BYTES_PER_S = 20e9
CAPS = {"default": None, "max-num-seqs-4": 4}


def before_module() -> Any:
    """placement/perf.py as it was at BEFORE_COMMIT, importable beside the current one."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:placement/perf.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "perf_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("placement.perf_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["placement.perf_before"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def fit_with(module: Any) -> Iterator[None]:
    """profile_fit running on `module` instead of placement.perf."""
    saved = profile_fit.perf
    profile_fit.perf = module
    try:
        yield
    finally:
        profile_fit.perf = saved


def measurement(point: dict[str, Any], closed: bool = False) -> profile_fit.LoadMeasurement:
    ttft, itl = point["ttft_ms"], point["itl_ms"]
    return profile_fit.LoadMeasurement(
        concurrency=float(point["concurrency"] or point["mean_in_flight"]),
        requests_per_s=point["achieved_rps"],
        prompt_tokens=point["prompt_tokens"],
        output_tokens=point["output_tokens"],
        ttft_p50_ms=ttft["p50_ms"],
        ttft_p99_ms=ttft["p99_ms"],
        itl_p50_ms=itl["p50_ms"],
        itl_p99_ms=itl["p99_ms"],
        ttft_mean_ms=ttft["mean_ms"],
        itl_mean_ms=itl["mean_ms"],
        closed_loop=closed and bool(point["concurrency"]),
    )


def engine_measurement(point: dict[str, Any], closed: bool = False) -> profile_fit.LoadMeasurement:
    """The point as the engine's own clocks saw it: mean TTFT (from the tokenized hand-off) and ITL."""
    ttft, itl = engine_ttft_ms(point), engine_itl_ms(point)
    return profile_fit.LoadMeasurement(
        concurrency=float(point["concurrency"] or point["mean_in_flight"]),
        requests_per_s=point["achieved_rps"],
        prompt_tokens=point["prompt_tokens"],
        output_tokens=point["output_tokens"],
        ttft_p50_ms=ttft,
        ttft_mean_ms=ttft,
        itl_mean_ms=itl,
        closed_loop=closed and bool(point["concurrency"]),
    )


def engine_mean_ms(point: dict[str, Any], histogram: str) -> float | None:
    """Mean of one of the engine's own histograms over the point, ms."""
    total, count = point["engine"][histogram]
    return 1e3 * total / count if count > 0 else None


def engine_itl_ms(point: dict[str, Any]) -> float | None:
    """Mean inter-token latency by the engine's own histogram over the point."""
    return engine_mean_ms(point, "inter_token_latency_seconds")


def engine_ttft_ms(point: dict[str, Any]) -> float | None:
    """Mean TTFT by the engine's clock (from the API process handing the tokenized request over)."""
    return engine_mean_ms(point, "time_to_first_token_seconds")


@dataclasses.dataclass
class Predicted:
    ttft_mean: float | None
    ttft_p50: float | None
    ttft_p99: float | None
    itl_mean: float | None
    # TTFT without the fitted front-end overhead: what the engine's own TTFT clock covers.
    engine_ttft_mean: float | None = None
    # Wait for a sequence slot (closed loop past max_num_seqs), ms.
    slot_wait: float | None = None


def predict_before(old: Any, config: Any, cal: profile_fit.Calibration, point: dict[str, Any]) -> Predicted:
    sizes = old.RequestSizes(point["prompt_tokens"], point["output_tokens"])
    load = old.latency_at_rate(config, sizes, point["achieved_rps"], efficiency=cal.efficiency)
    if load is None:
        return Predicted(None, None, None, None)
    extra = cal.request_overhead_s * 1e3
    return Predicted(
        load.ttft_mean_ms + extra,
        load.ttft_p50_ms + extra,
        load.ttft_p99_ms + extra,
        load.itl_mean_ms,
        load.ttft_mean_ms,
        None,
    )


def predict_after(
    config: Any, cal: profile_fit.Calibration, point: dict[str, Any], cap: int | None
) -> Predicted:
    sizes = perf.RequestSizes(point["prompt_tokens"], point["output_tokens"])
    common = {"efficiency": cal.efficiency, "max_num_seqs": cap, "request_overhead_s": cal.request_overhead_s}
    if point["concurrency"]:
        load = perf.latency_at_concurrency(config, sizes, point["concurrency"], **common)
    else:
        load = perf.latency_over_run(
            config, sizes, point["rate_rps"], point["duration_s"], warmup_s=point["warmup_s"], **common
        )
    assert load is not None
    slot_wait = None
    if point["concurrency"]:
        # The closed loop's admission wait (perf._closed_loads): requests in the engine beyond its slots,
        # drained at the loop's throughput.
        slots = perf.max_batch(config, sizes.prompt_tokens, sizes.output_tokens)
        slots = min(slots, cap) if cap else slots
        inside = point["concurrency"] - load.rate_rps * (perf.SERVING_PATH_FIXED_S + cal.request_overhead_s)
        slot_wait = 1e3 * max(inside - slots, 0.0) / load.rate_rps
    return Predicted(
        load.ttft_mean_ms,
        load.ttft_p50_ms,
        load.ttft_p99_ms,
        load.itl_mean_ms,
        load.ttft_mean_ms - 1e3 * cal.request_overhead_s,
        slot_wait,
    )


def log_error(predicted: float | None, measured: float | None) -> float | None:
    if measured is None or measured <= 0:
        return None
    if predicted is None or not math.isfinite(predicted) or predicted <= 0:
        return math.inf
    return math.log(predicted / measured)


def pct(e: float | None) -> str:
    if e is None:
        return "-"
    if math.isinf(e):
        return "no answer"
    return f"{100 * (math.exp(e) - 1):+.0f}%"


def median_abs(errors: list[float | None]) -> str:
    values = [abs(e) for e in errors if e is not None]
    if not values:
        return "-"
    m = statistics.median(values)
    answered = sum(1 for v in values if math.isfinite(v))
    shown = "no answer" if math.isinf(m) else f"{100 * (math.exp(m) - 1):.0f}%"
    return f"{shown} ({answered}/{len(values)} answered)"


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=pathlib.Path, default=RESULT)
    args = parser.parse_args()
    data = json.loads(args.result.read_text())
    install = harness.find_install()
    architecture = command.architecture(str(install.model / "config.json"))
    assert architecture is not None
    model = architecture.to_catalog("chipfit-tiny-llama")
    chip = host.host_accelerator(KV_BYTES, bytes_per_s=HOST_COPY_BYTES_PER_S)
    old = before_module()
    config_new = perf.ReplicaConfig(model, chip, "bf16", 1, "aggregated", "vllm")
    config_old = old.ReplicaConfig(model, chip, "bf16", 1, "aggregated", "vllm")
    engines = data["engines"]
    sweep0 = engines["default"][0]["sweep"]
    fits: dict[str, profile_fit.Calibration] = {}
    for clock, convert in (("client", measurement), ("engine", engine_measurement)):
        source = f"default sweep, repeat 0, {clock} clock"
        # This branch's profile_fit reads a sweep point as the closed loop it was; the model at 2aec971 had
        # no closed loop, so its fit reads every point at its achieved rate, as profile_fit did then.
        closed = tuple(convert(p, True) for p in sweep0)
        fits[f"after_{clock}"] = profile_fit.fit([profile_fit.MeasuredRun(config_new, closed, source=source)])
        points = tuple(convert(p) for p in sweep0)
        with fit_with(old):
            fits[f"before_{clock}"] = profile_fit.fit(
                [profile_fit.MeasuredRun(config_old, points, source=source)]
            )
    cal_new, cal_old = fits["after_client"], fits["before_client"]
    print(
        f"- chip: {chip.display_name}, bandwidth {chip.mem_bandwidth_bytes_per_s / 1e9:.1f} GB/s, "
        f"16-bit peak {chip.dense_flops_per_s['bf16'] / 1e12:.2f} TFLOP/s"
    )
    for label, cal in fits.items():
        e = cal.efficiency
        print(
            f"- fit {label}: bandwidth {e.bandwidth:.3f}, compute {e.compute_16bit:.4f}, step overhead "
            f"{e.step_overhead_s * 1e3:.2f} ms, request overhead {cal.request_overhead_s * 1e3:.1f} ms, "
            f"rms log error {cal.rms_log_error_before:.2f} -> {cal.rms_log_error_after:.2f}"
        )
    rows: list[dict[str, Any]] = []
    for name, runs in engines.items():
        cap = CAPS[name]
        for repeat, run in enumerate(runs):
            for kind in ("sweep", "rates"):
                for point in run[kind]:
                    if "failed" in point or point.get("ttft_ms") is None:
                        continue
                    held_in = name == "default" and repeat == 0 and kind == "sweep"
                    before = predict_before(old, config_old, cal_old, point)
                    after = predict_after(config_new, cal_new, point, cap)
                    before_e = predict_before(old, config_old, fits["before_engine"], point)
                    after_e = predict_after(config_new, fits["after_engine"], point, cap)
                    level = (
                        f"c={point['concurrency']}"
                        if point["concurrency"]
                        else f"{point['capacity_fraction']:.1f}x cap"
                    )
                    rows.append(
                        {
                            "engine": name,
                            "repeat": repeat,
                            "kind": kind,
                            "level": level,
                            "held_in": held_in,
                            "point": point,
                            "before": before,
                            "after": after,
                            "before_e": before_e,
                            "after_e": after_e,
                        }
                    )
    OWN.update(config=config_new, cal=fits["after_engine"])
    print_tables(rows)
    print_shapes(rows, engines)
    return 0


FIELDS: list[tuple[str, Callable[[dict[str, Any]], float | None], str, str]] = [
    ("client TTFT mean", lambda p: p["ttft_ms"]["mean_ms"], "ttft_mean", ""),
    ("client TTFT p50", lambda p: p["ttft_ms"]["p50_ms"], "ttft_p50", ""),
    ("client TTFT p99", lambda p: p["ttft_ms"]["p99_ms"], "ttft_p99", ""),
    ("client ITL mean", lambda p: p["itl_ms"]["mean_ms"], "itl_mean", ""),
    ("engine TTFT mean", engine_ttft_ms, "ttft_mean", "_e"),
    ("engine ITL mean", engine_itl_ms, "itl_mean", "_e"),
]


def print_tables(rows: list[dict[str, Any]]) -> None:
    print("\n### Per load level (median over repeats [min-max]; ms)\n")
    print(
        "| engine | load | req/s measured | TTFT mean meas. / before / after | TTFT p50 meas. / after "
        "| TTFT p99 meas. / after | ITL mean meas. (client, engine) / before / after |"
    )
    print("|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["engine"], row["kind"], row["level"]), []).append(row)
    for (engine, _, level), group in groups.items():

        def col(get: Callable[[dict[str, Any]], float | None], group: list[dict[str, Any]] = group) -> str:
            return spread([v for r in group if (v := get(r)) is not None and math.isfinite(v)])

        def pred(side: str, field: str, group: list[dict[str, Any]] = group) -> str:
            values = [getattr(r[side], field) for r in group]
            if all(v is None for v in values):
                return "none"
            return spread([v for v in values if v is not None and math.isfinite(v)])

        print(
            f"| {engine} | {level} | {col(lambda r: r['point']['achieved_rps'])} "
            f"| {col(lambda r: r['point']['ttft_ms']['mean_ms'])} / {pred('before', 'ttft_mean')} / "
            f"{pred('after', 'ttft_mean')} "
            f"| {col(lambda r: r['point']['ttft_ms']['p50_ms'])} / {pred('after', 'ttft_p50')} "
            f"| {col(lambda r: r['point']['ttft_ms']['p99_ms'])} / {pred('after', 'ttft_p99')} "
            f"| {col(lambda r: r['point']['itl_ms']['mean_ms'])}, "
            f"{col(lambda r: engine_itl_ms(r['point']))} / "
            f"{pred('before', 'itl_mean')} / {pred('after', 'itl_mean')} |"
        )
    print(
        "\n### The engine's own clocks: TTFT, admission queue and ITL (median over repeats [min-max]; ms)\n"
    )
    print(
        "| engine | load | engine TTFT meas. / before / after | engine queue time meas. / after (slot wait) "
        "| engine ITL meas. / before / after |"
    )
    print("|---|---|---|---|---|")
    for (engine, kind, level), group in groups.items():

        def col2(get: Callable[[dict[str, Any]], float | None], group: list[dict[str, Any]] = group) -> str:
            return spread([v for r in group if (v := get(r)) is not None and math.isfinite(v)])

        print(
            f"| {engine} | {level} | {col2(lambda r: engine_ttft_ms(r['point']))} / "
            f"{col2(lambda r: r['before_e'].ttft_mean)} / {col2(lambda r: r['after_e'].ttft_mean)} "
            f"| {col2(lambda r: engine_mean_ms(r['point'], 'request_queue_time_seconds'))} / "
            f"{col2(lambda r: r['after_e'].slot_wait) if kind == 'sweep' else '-'} "
            f"| {col2(lambda r: engine_itl_ms(r['point']))} / {col2(lambda r: r['before_e'].itl_mean)} / "
            f"{col2(lambda r: r['after_e'].itl_mean)} |"
        )
    print("\n### Median |error| (predicted / measured - 1), held-out points only\n")
    print("| group | n | " + " | ".join(f"{f} before | {f} after" for f, _, _, _ in FIELDS) + " |")
    print("|---|---:|" + "---|---|" * len(FIELDS))
    selections = {
        "fit sweep (in-sample)": lambda r: r["held_in"],
        "default engine, other repeats' sweeps": lambda r: (
            r["engine"] == "default" and r["kind"] == "sweep" and not r["held_in"]
        ),
        "default engine, Poisson rates": lambda r: r["engine"] == "default" and r["kind"] == "rates",
        "max-num-seqs 4 engine, sweeps": lambda r: r["engine"] != "default" and r["kind"] == "sweep",
        "max-num-seqs 4 engine, Poisson rates": lambda r: r["engine"] != "default" and r["kind"] == "rates",
        "all held-out": lambda r: not r["held_in"],
    }
    for label, select in selections.items():
        chosen = [r for r in rows if select(r)]
        cells = []
        for _, measured, field, fit in FIELDS:
            for side in ("before", "after"):
                errors = [log_error(getattr(r[side + fit], field), measured(r["point"])) for r in chosen]
                cells.append(median_abs(errors))
        print(f"| {label} | {len(chosen)} | " + " | ".join(cells) + " |")


def print_shapes(rows: list[dict[str, Any]], engines: dict[str, Any]) -> None:
    print("\n### Shapes and ratios (per repeat; median [min-max])\n")
    lines = []
    # Admission limit: past max_num_seqs each extra user waits one slot turnover, 1 / throughput.
    for name in engines:
        by_repeat: dict[int, dict[int, dict[str, Any]]] = {}
        for r in rows:
            if r["engine"] == name and r["kind"] == "sweep":
                by_repeat.setdefault(r["repeat"], {})[r["point"]["concurrency"]] = r
        slope_meas, slope_theory, slope_after = [], [], []
        knee_meas, knee_after = [], []
        itl_meas, itl_after = [], []
        for points in by_repeat.values():
            if 8 in points and 16 in points:
                a, b = points[8], points[16]
                slope_meas.append((b["point"]["ttft_ms"]["mean_ms"] - a["point"]["ttft_ms"]["mean_ms"]) / 8)
                slope_theory.append(1e3 / b["point"]["achieved_rps"])
                slope_after.append((b["after_e"].ttft_mean - a["after_e"].ttft_mean) / 8)
            top = max(p["point"]["achieved_rps"] for p in points.values())
            if 1 in points and 4 in points:
                knee_meas.append(points[4]["point"]["achieved_rps"] / top)
            if 1 in points and 16 in points:
                e1, e16 = engine_itl_ms(points[1]["point"]), engine_itl_ms(points[16]["point"])
                if e1 and e16:
                    itl_meas.append(e16 / e1)
                itl_after.append(points[16]["after_e"].itl_mean / points[1]["after_e"].itl_mean)
        if slope_meas:
            lines.append(
                f"| {name} | TTFT mean added per user from 8 to 16 users (ms) | {spread(slope_meas)} "
                f"| 1/throughput at 16: {spread(slope_theory)} | {spread(slope_after)} |"
            )
        if itl_meas:
            lines.append(
                f"| {name} | engine ITL mean at 16 users / at 1 | "
                f"{statistics.median(itl_meas):.2f} [{min(itl_meas):.2f}-{max(itl_meas):.2f}] | - | "
                f"{statistics.median(itl_after):.2f} |"
            )
        del knee_meas, knee_after
        by_fraction: dict[int, dict[float, dict[str, Any]]] = {}
        for r in rows:
            if r["engine"] == name and r["kind"] == "rates":
                by_fraction.setdefault(r["repeat"], {})[r["point"]["capacity_fraction"]] = r
        ratio_meas, ratio_before, ratio_after, ratio_engine = [], [], [], []
        for points in by_fraction.values():
            if 0.2 in points and 0.8 in points:
                lo, hi = points[0.2], points[0.8]
                ratio_meas.append(hi["point"]["ttft_ms"]["mean_ms"] / lo["point"]["ttft_ms"]["mean_ms"])
                e_lo, e_hi = engine_ttft_ms(lo["point"]), engine_ttft_ms(hi["point"])
                if e_lo and e_hi:
                    ratio_engine.append(e_hi / e_lo)
                ratio_after.append(hi["after"].ttft_mean / lo["after"].ttft_mean)
                if hi["before"].ttft_mean and lo["before"].ttft_mean:
                    ratio_before.append(hi["before"].ttft_mean / lo["before"].ttft_mean)
        if ratio_engine:
            lines.append(
                f"| {name} | engine-clock TTFT mean at 0.8 / at 0.2 of measured capacity (Poisson) | "
                f"{statistics.median(ratio_engine):.2f} "
                f"[{min(ratio_engine):.2f}-{max(ratio_engine):.2f}] | - | - |"
            )
        if ratio_meas:
            lines.append(
                f"| {name} | TTFT mean at 0.8 / at 0.2 of capacity (Poisson) | "
                f"{statistics.median(ratio_meas):.2f} [{min(ratio_meas):.2f}-{max(ratio_meas):.2f}] "
                "| before: "
                f"{statistics.median(ratio_before):.2f} | {statistics.median(ratio_after):.2f} |"
                if ratio_before
                else f"| {name} | TTFT mean 0.8/0.2 | {statistics.median(ratio_meas):.2f} | before: none | "
                f"{statistics.median(ratio_after):.2f} |"
            )
    print("| engine | shape | measured | reference | model after |")
    lines.extend(own_capacity_ratios())
    print("|---|---|---|---|---|")
    print("\n".join(lines))


OWN: dict[str, Any] = {}


def own_capacity_ratios() -> list[str]:
    """TTFT at 0.8 / 0.2 of the model's OWN capacity (a shape that does not depend on its absolute speed)."""
    out = []
    for name, cap in CAPS.items():
        config, cal = OWN["config"], OWN["cal"]
        sizes = perf.RequestSizes(256, 64)
        common = {
            "efficiency": cal.efficiency,
            "max_num_seqs": cap,
            "request_overhead_s": cal.request_overhead_s,
        }
        top = perf.latency_at_concurrency(config, sizes, 10_000, **common)
        assert top is not None
        ttft = {
            f: perf.latency_over_run(config, sizes, f * top.rate_rps, 10.0, warmup_s=2.0, **common)
            for f in (0.2, 0.8, 1.0, 1.3)
        }
        lo, hi = ttft[0.2], ttft[0.8]
        assert lo is not None and hi is not None
        out.append(
            f"| {name} | model: TTFT mean at 0.8 / at 0.2 of ITS OWN capacity ({top.rate_rps:.1f} req/s; "
            f"engine-clock fit) | - | - | {hi.ttft_mean_ms / lo.ttft_mean_ms:.2f} |"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
