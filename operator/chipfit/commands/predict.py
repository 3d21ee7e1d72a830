"""`chipfit predict`: what one replica of a model does on a chip (throughput, memory, latency, $/token)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import TYPE_CHECKING, Any

# placement.perf (numpy) is imported when predicting, not for `chipfit --help`.
from placement import catalog

if TYPE_CHECKING:
    from placement import profile_fit

# Exit code for unusable input (unknown ids, impossible combinations), as argparse uses for bad flags.
EXIT_USAGE = 2
TP_CANDIDATES = (1, 2, 4, 8)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict one replica's throughput, memory, latency and cost for a model on a chip",
        description="Maximum offline output-token throughput of one replica (as TensorRT-LLM's and MLPerf's "
        "offline benchmarks report it), the batch and memory there, TTFT and ITL; with --rps, "
        "--ttft-p99-ms and --itl-p99-ms also whether that rate meets the SLO, the highest rate that does, "
        "and $/1M output tokens. Unknown ids or impossible combinations exit 2 with a one-line error.",
    )
    parser.add_argument("--model", required=True, help=f"model id ({', '.join(catalog.MODELS)})")
    chip = parser.add_mutually_exclusive_group(required=True)
    chip.add_argument("--chip", help="accelerator or MIG slice id (e.g. h100, h100/3g.40gb)")
    chip.add_argument(
        "--pool",
        metavar="FILE",
        help="an AcceleratorPool manifest: predict for the chip it runs (its acceleratorSpec, or its "
        "catalog id) at its price",
    )
    parser.add_argument(
        "--precision", help="weight precision (default: bf16, or fp8 where bf16 is unsupported)"
    )
    parser.add_argument("--tp", type=int, help="tensor-parallel degree (default: the smallest that fits)")
    parser.add_argument("--engine", default="vllm", help=f"serving engine ({', '.join(catalog.ENGINES)})")
    parser.add_argument("--role", default="aggregated", help=f"replica role ({', '.join(catalog.ROLES)})")
    parser.add_argument("--isl", type=float, required=True, help="input (prompt) tokens per request")
    parser.add_argument("--osl", type=float, required=True, help="output tokens per request")
    parser.add_argument("--rps", type=float, help="offered request rate to check against the SLO")
    parser.add_argument("--ttft-p99-ms", type=float, help="TTFT p99 objective, ms")
    parser.add_argument("--itl-p99-ms", type=float, help="inter-token latency p99 objective, ms")
    parser.add_argument("--price", type=float, help="$ per device-hour (default: the catalog's)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="FILE",
        help="PerformanceProfile YAML (repeatable): its points calibrate this chip and engine's efficiency",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


class PredictError(ValueError):
    """Unusable input; the message is the one line printed."""


def run(args: argparse.Namespace) -> int:
    try:
        report = predict(args)
    except (PredictError, ValueError) as exc:
        for line in str(exc).splitlines():
            print(f"chipfit predict: {line}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(report, indent=2, sort_keys=True) if args.json else render_text(report)
    try:
        print(text)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: nothing left to say, not an error of ours.
        sys.stderr.close()
    return 0


def _default_precision(acc: catalog.Accelerator) -> str:
    """bf16 where the chip serves it, else its first supported precision."""
    return "bf16" if "bf16" in acc.precisions else acc.precisions[0]


def _choose_tp(
    model: catalog.ModelArch, acc: catalog.Accelerator, precision: str, engine: str, role: str
) -> int:
    """The smallest tensor-parallel degree at which the model runs on this chip."""
    from placement import perf

    reasons = []
    for tp in TP_CANDIDATES:
        if tp > acc.max_tp:
            break
        config = perf.ReplicaConfig(model, acc, precision, tp, role=role, engine=engine)
        reason = perf.infeasibility(config)
        if reason is None:
            return tp
        reasons.append(reason)
    raise PredictError(reasons[-1] if reasons else f"{acc.id} allows no tensor-parallel degree")


def _valid(flag: str, noun: str, value: str | None, valid: Any) -> str | None:
    if value is None or value in valid:
        return None
    return f"{flag}: unknown {noun} {value!r}; valid: {', '.join(valid)}"


def flag_problems(args: argparse.Namespace) -> list[str]:
    """Every problem with the flags, each naming its flag, before any prediction runs."""
    problems = [
        p
        for p in (
            _valid("--model", "model", args.model, catalog.MODELS),
            _valid("--chip", "accelerator", args.chip, catalog.ACCELERATORS),
            _valid("--precision", "precision", args.precision, catalog.PRECISIONS),
            _valid("--engine", "engine", args.engine, catalog.ENGINES),
            _valid("--role", "role", args.role, catalog.ROLES),
        )
        if p is not None
    ]
    # `not value >= bound` also catches NaN.
    for flag, value in (("--isl", args.isl), ("--osl", args.osl)):
        if not value >= 1:
            problems.append(f"{flag}: must be >= 1 token, got {value:g}")
    slo_flags = {"--rps": args.rps, "--ttft-p99-ms": args.ttft_p99_ms, "--itl-p99-ms": args.itl_p99_ms}
    given = [flag for flag, value in slo_flags.items() if value is not None]
    if given and len(given) < len(slo_flags):
        missing = ", ".join(flag for flag in slo_flags if flag not in given)
        problems.append(
            f"{missing}: --rps, --ttft-p99-ms and --itl-p99-ms go together: give all three or none"
        )
    if args.rps is not None and not args.rps >= 0:
        problems.append(f"--rps: must be >= 0, got {args.rps:g}")
    for flag, value in (("--ttft-p99-ms", args.ttft_p99_ms), ("--itl-p99-ms", args.itl_p99_ms)):
        if value is not None and not value > 0:
            problems.append(f"{flag}: must be > 0, got {value:g}")
    if args.tp is not None and args.tp < 1:
        problems.append(f"--tp: must be >= 1, got {args.tp}")
    if args.price is not None and not args.price >= 0:
        problems.append(f"--price: must be >= 0, got {args.price:g}")
    return problems


def predict(args: argparse.Namespace) -> dict[str, Any]:
    """The report as a JSON-ready dict (raises PredictError/ValueError with a one-line message)."""
    problems = flag_problems(args)
    if problems:
        raise PredictError("\n".join(problems))
    from placement import perf, profile_fit, trust

    model = catalog.get_model(args.model)
    acc, pool_price = _chip(args)
    precision = args.precision or _default_precision(acc)
    tp = args.tp if args.tp is not None else _choose_tp(model, acc, precision, args.engine, args.role)
    config = perf.ReplicaConfig(model, acc, precision, tp, role=args.role, engine=args.engine)
    reason = perf.infeasibility(config)
    if reason is not None:
        raise PredictError(reason)
    cal = _calibration(args.profile, acc.id, args.engine)
    efficiency = cal.efficiency if cal is not None else None
    overhead_ms = cal.request_overhead_s * 1e3 if cal is not None else 0.0
    offline = perf.offline_throughput(config, args.isl, args.osl, efficiency=efficiency)
    confidence = trust.assess(config, args.isl, args.osl)
    price_per_device_hour = args.price if args.price is not None else pool_price
    if price_per_device_hour is not None and price_per_device_hour < 0:
        raise PredictError(f"--price: must be >= 0, got {price_per_device_hour}")
    gb = 1e9
    report: dict[str, Any] = {
        "model": model.id,
        "chip": acc.id,
        "precision": precision,
        "tp": tp,
        "engine": args.engine,
        "role": args.role,
        "isl": args.isl,
        "osl": args.osl,
        "output_tokens_per_s": round(offline.output_tokens_per_s, 2),
        "requests_per_s": round(offline.requests_per_s, 4),
        "batch": offline.batch,
        "bound": offline.bound,
        "weights_gb_per_device": round(offline.weights_bytes_per_device / gb, 3),
        "kv_cache_gb_per_device": round(offline.kv_bytes_per_device / gb, 3),
        "memory_gb_per_device": round(offline.memory_bytes_per_device / gb, 3),
        "device_memory_gb": round(acc.memory_bytes / gb, 3),
        "ttft_ms": round(offline.ttft_ms + overhead_ms, 3),
        "itl_ms": round(offline.itl_ms, 3),
        "efficiency_source": (
            cal.efficiency if cal is not None else perf.efficiency_for(acc, args.engine)
        ).source,
        # Offline figures sit at the largest batch; with --rps the load's own batch says how far out it is.
        "basis": _basis(cal, model.id, tp, args.isl, args.osl, offline.batch),
        "trust": confidence.label,
        "trust_level": confidence.level,
        "typical_error": confidence.typical_error,
        "in_calibrated_range": confidence.in_range,
        "price_per_device_hour": price_per_device_hour,
        "price_per_hour": None if price_per_device_hour is None else round(price_per_device_hour * tp, 4),
        "dollars_per_million_output_tokens": _dollars(price_per_device_hour, tp, offline.output_tokens_per_s),
    }
    batch: float = offline.batch
    if args.rps is not None:
        slo = perf.LatencySlo(args.ttft_p99_ms, args.itl_p99_ms)
        best = (
            profile_fit.max_rate_under_slo(cal, config, args.isl, args.osl, slo)
            if cal is not None
            else perf.max_rate_under_slo(config, args.isl, args.osl, slo)
        )
        load = (
            perf.latency_at_rate(
                config,
                perf.RequestSizes(args.isl, args.osl),
                args.rps,
                efficiency=efficiency,
                prefill_chunk_tokens=best.prefill_chunk_tokens,
            )
            if args.rps > 0
            else None
        )
        report["slo"] = {"ttft_p99_ms": slo.ttft_p99_ms, "itl_p99_ms": slo.itl_p99_ms}
        report["rps"] = args.rps
        report["meets_rps"] = args.rps <= best.max_rps and (args.rps == 0 or best.max_rps > 0)
        report["max_rps_under_slo"] = round(best.max_rps, 4)
        report["binding"] = best.reason
        report["prefill_chunk_tokens"] = best.prefill_chunk_tokens
        report["ttft_p99_ms_at_rps"] = None if load is None else round(load.ttft_p99_ms + overhead_ms, 3)
        if load is not None:
            report["basis"] = _basis(cal, model.id, tp, args.isl, args.osl, load.batch)
            batch = load.batch
        report["itl_p99_ms_at_rps"] = None if load is None else round(load.itl_p99_ms, 3)
        for stat in ("ttft_mean_ms", "ttft_p50_ms", "itl_mean_ms", "itl_p50_ms"):
            report[f"{stat}_at_rps"] = None if load is None else round(getattr(load, stat), 3)
        report["ttft_p99_ms_at_max"] = round(best.ttft_p99_ms, 3)
        report["itl_p99_ms_at_max"] = round(best.itl_p99_ms, 3)
        report["dollars_per_million_output_tokens_at_max_rps"] = _dollars(
            price_per_device_hour, tp, best.max_rps * args.osl
        )
    if cal is not None:  # The trust line follows the profile where one answers, at the batch the basis names.
        fitted = cal.trust(model.id, tp, args.isl, args.osl, batch)
        confidence = trust.from_profile(fitted.level, fitted.note, cal.rms_log_error_after, confidence)
        report["trust"], report["trust_level"] = confidence.label, confidence.level
        report["typical_error"], report["in_calibrated_range"] = confidence.typical_error, confidence.in_range
    return report


def _calibration(paths: list[str], chip: str, engine: str) -> profile_fit.Calibration | None:
    """The calibration the given profiles make for this chip and engine (None without one)."""
    if not paths:
        return None
    import yaml

    from chipfit.api import v1alpha1
    from chipfit.profiling import calibrate
    from placement import profile_fit

    profiles = []
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(pathlib.Path(path).read_text()))
        except (OSError, yaml.YAMLError) as error:
            raise PredictError(f"--profile {path}: {error}") from None
        for doc in documents:
            if isinstance(doc, dict) and doc.get("kind") == "PerformanceProfile":
                try:
                    profiles.append(v1alpha1.PerformanceProfile.model_validate(doc))
                except ValueError as error:
                    raise PredictError(f"--profile {path}: {str(error).splitlines()[0]}") from None
    if not profiles:
        raise PredictError(f"--profile {', '.join(paths)}: no PerformanceProfile found")
    usable = [p for p in profiles if p.spec.points and (p.spec.accelerator, p.spec.engine) == (chip, engine)]
    if not usable:
        raise PredictError(f"--profile: no point profile of {chip} with engine {engine} among the files")
    try:
        found = calibrate.calibrations(usable)
    except (profile_fit.CalibrationError, catalog.UnknownIdError) as error:
        raise PredictError(f"--profile: {error}") from None
    return max(found.values(), key=lambda c: c.points)


def _basis(
    cal: profile_fit.Calibration | None, model: str, tp: int, isl: float, osl: float, batch: float
) -> str:
    """Where the figures come from, and how far from the measurements."""
    if cal is None:
        return "predicted from specs (no profile given for this chip and engine)"
    return f"{cal.trust(model, tp, isl, osl, batch).note} ({cal.source})"


def _dollars(price_per_device_hour: float | None, tp: int, output_tokens_per_s: float) -> float | None:
    """$/1M output tokens, None when nothing is produced or the chip has no price."""
    from placement import perf

    if price_per_device_hour is None:
        return None
    return _round_cost(perf.dollars_per_million_output_tokens(price_per_device_hour, tp, output_tokens_per_s))


def _chip(args: argparse.Namespace) -> tuple[catalog.Accelerator, float | None]:
    """The chip to predict for and its default price: a catalog id, or the pool manifest's chip."""
    from chipfit import manifests, planning
    from chipfit.api import v1alpha1

    if args.pool is None:
        acc = catalog.get_accelerator(args.chip)
        return acc, acc.default_price_per_hour
    documents, problems = manifests.load_documents([args.pool])
    if problems:
        raise PredictError(f"--pool: {problems[0].file}: {problems[0].field}: {problems[0].reason}")
    pools = [d for d in documents if d.body.get("kind") == "AcceleratorPool"]
    if len(pools) != 1:
        raise PredictError(f"--pool: {args.pool} must hold exactly one AcceleratorPool, found {len(pools)}")
    try:
        pool = v1alpha1.AcceleratorPool.model_validate(pools[0].body)
        return planning.pool_accelerator(pool), planning.to_pool(pool).price_per_device_hour
    except planning.PlanningError as error:
        raise PredictError(f"--pool: {error}") from None
    except ValueError as error:  # pydantic's ValidationError: the first problem, one line
        first = str(error).splitlines()
        raise PredictError(
            f"--pool: {args.pool}: {' '.join(first[1:3]) if len(first) > 2 else error}"
        ) from None


def _round_cost(value: float) -> float | None:
    """Round a $/1M figure; None (JSON null) when nothing is produced."""
    return None if value == float("inf") else round(value, 4)


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned lines for a person."""
    lines = [
        f"{report['model']} on {report['chip']} x{report['tp']} ({report['precision']}, {report['engine']}, "
        f"{report['role']}), {report['isl']:.0f} in / {report['osl']:.0f} out",
        f"  offline max      {report['output_tokens_per_s']:.0f} output tokens/s "
        f"({report['requests_per_s']:.2f} req/s, batch {report['batch']}, {report['bound']}-bound)",
        f"  memory / device  {report['memory_gb_per_device']:.1f} of {report['device_memory_gb']:.1f} GB "
        f"(weights {report['weights_gb_per_device']:.1f}, KV {report['kv_cache_gb_per_device']:.1f})",
        f"  latency there    TTFT {report['ttft_ms']:.1f} ms (alone), ITL {report['itl_ms']:.1f} ms",
        f"  calibration      {report['efficiency_source']}",
        f"  figures          {report['basis']}",
        f"  trust            {report['trust']} (typically within {report['typical_error']:.0%})",
        (
            f"  cost             ${report['price_per_hour']:.2f}/h, "
            + _cost_text(report["dollars_per_million_output_tokens"])
            + " at offline max"
            if report["price_per_hour"] is not None
            else f"  cost             no catalog price for {report['chip']} (pass --price)"
        ),
    ]
    if "slo" in report:
        verdict = "meets" if report["meets_rps"] else "misses"
        lines += [
            f"  at {report['rps']:g} req/s   {verdict} TTFT p99 <= {report['slo']['ttft_p99_ms']:g} ms, "
            f"ITL p99 <= {report['slo']['itl_p99_ms']:g} ms" + _latency_text(report),
            f"  max under SLO    {report['max_rps_under_slo']:.3f} req/s ({report['binding']}), "
            + (
                _cost_text(report["dollars_per_million_output_tokens_at_max_rps"])
                if report["price_per_hour"] is not None
                else "no price"
            ),
        ]
        if report["prefill_chunk_tokens"] is not None:
            lines.append(f"  prefill chunk    {report['prefill_chunk_tokens']} tokens per iteration")
    return "\n".join(lines)


def _cost_text(value: float | None) -> str:
    """$/1M output tokens for a person."""
    return "no output" if value is None else f"${value:.3f} per 1M output tokens"


def _latency_text(report: dict[str, Any]) -> str:
    """Latencies at the offered rate, or nothing when the replica cannot keep up with it."""
    if report["ttft_p99_ms_at_rps"] is None:
        return " (cannot keep up at that rate)"
    return (
        f" (TTFT mean {report['ttft_mean_ms_at_rps']:.0f} / p50 {report['ttft_p50_ms_at_rps']:.0f} / "
        f"p99 {report['ttft_p99_ms_at_rps']:.0f} ms, ITL mean {report['itl_mean_ms_at_rps']:.1f} / "
        f"p50 {report['itl_p50_ms_at_rps']:.1f} / p99 {report['itl_p99_ms_at_rps']:.1f} ms)"
    )
