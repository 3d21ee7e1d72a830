"""Calibration from a measured profile: fit a few efficiency factors of one chip and engine to its points.

A profile of (model, chip, precision, tp, engine, engine version) measures TTFT and ITL at several loads.
Replacing predictions by those numbers only helps at the measured points; instead, the factors the
performance model is built on are refitted for that chip and engine, so every prediction there (other
request sizes, rates, SLOs, tp degrees and models) uses them:

- `bandwidth` and the compute fraction of the profile's precision (`compute_16bit` or `compute_8bit`):
  what fraction of the chip's datasheet peaks its kernels reach;
- `step_overhead_s`: the fixed cost of one engine iteration (scheduling, sampling, launches);
- `request_overhead_s`: a fixed cost every request pays before its first token (HTTP and API front end,
  tokenization, detokenization of the first token), added to TTFT; the roofline model has no such term.

The fit is bounded least squares (scipy) on log(predicted / measured) of mean (or median) TTFT and ITL at
each point's measured request rate, with a weak pull toward the prior so few points cannot drive a factor
to an unphysical value. How far the result is trusted is explicit (`Calibration.trust`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import optimize

from placement import catalog, perf, perf_efficiency

# Bounds of the fitted factors: fractions stay physical (never above the datasheet peak); the step and
# request overheads span a GPU engine (~1 ms) to a CPU build of an engine (~100 ms).
FIT_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "bandwidth": (0.005, 1.0),
    "compute": (0.001, 1.0),
    "step_overhead_s": (1e-5, 1.0),
    "request_overhead_s": (0.0, 10.0),
}
# Weight of the pull toward the prior (per factor, in log space) against one point's log error.
PRIOR_WEIGHT: Final = 0.05
# Residual of a point the model cannot serve at its measured rate (the queue diverges): a large log error.
DIVERGED_LOG_ERROR: Final = 3.0
# A calibration is trusted as "inside the measured range" within the measured sizes and loads, and as
# "extrapolated" up to this factor beyond them; farther out it only carries the efficiency over.
TRUST_EXTRAPOLATION_FACTOR: Final = 2.0
# Residual weights: medians/means carry the level; p99s the tail shape, noisier on a busy machine.
CENTRAL_WEIGHT: Final = 1.0
TAIL_WEIGHT: Final = 0.3

TrustLevel = Literal["measured", "calibrated", "calibrated-extrapolated", "calibrated-transfer", "specs"]


class CalibrationError(ValueError):
    """A profile cannot calibrate the model; the message names the reason."""


@dataclasses.dataclass(frozen=True)
class LoadMeasurement:
    """One measured load point: the rate served, request sizes, and latencies (ms) seen there."""

    concurrency: float
    requests_per_s: float
    prompt_tokens: float
    output_tokens: float
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p99_ms: float | None = None
    ttft_mean_ms: float | None = None
    itl_mean_ms: float | None = None
    # True for a point of a concurrency sweep (`concurrency` requests kept in flight: a closed loop, modelled
    # by perf.latency_at_concurrency); False for Poisson arrivals at `requests_per_s` (perf.latency_at_rate).
    closed_loop: bool = False


@dataclasses.dataclass(frozen=True)
class MeasuredRun:
    """A profile's points and the replica they were measured on."""

    config: perf.ReplicaConfig
    points: tuple[LoadMeasurement, ...]
    engine_version: str | None = None
    source: str = ""


@dataclasses.dataclass(frozen=True)
class Trust:
    """How much a figure can be trusted: where it comes from and how far from the measurements it is."""

    level: TrustLevel
    note: str


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Efficiency factors of one (accelerator, engine, engine version) fitted to measured profiles."""

    accelerator: str
    engine: str
    engine_version: str | None
    efficiency: perf_efficiency.Efficiency
    request_overhead_s: float
    prior: perf_efficiency.Efficiency
    # Measured ranges: models and tp degrees, prompt and output tokens, concurrency.
    models: frozenset[str]
    tps: frozenset[int]
    prompt_range: tuple[float, float]
    output_range: tuple[float, float]
    concurrency_range: tuple[float, float]
    points: int
    rms_log_error_before: float
    rms_log_error_after: float
    source: str

    def trust(
        self, model: str, tp: int, prompt_tokens: float, output_tokens: float, concurrency: float
    ) -> Trust:
        """How far a prediction at these inputs is from what was measured."""
        if model not in self.models or tp not in self.tps:
            return Trust(
                "calibrated-transfer",
                f"efficiency calibrated on {', '.join(sorted(self.models))} tp {sorted(self.tps)} carried "
                f"over "
                f"to {model} tp {tp}",
            )
        worst = max(
            _outside(prompt_tokens, self.prompt_range),
            _outside(output_tokens, self.output_range),
            _outside(concurrency, self.concurrency_range),
        )
        if worst <= 1.0:
            return Trust("calibrated", "calibrated from a profile, inside its measured range")
        if worst <= TRUST_EXTRAPOLATION_FACTOR:
            return Trust(
                "calibrated-extrapolated",
                f"calibrated from a profile, {worst:.1f}x beyond its measured range",
            )
        return Trust(
            "calibrated-transfer",
            f"{worst:.1f}x beyond the measured range (more than {TRUST_EXTRAPOLATION_FACTOR:g}x): "
            "only the efficiency is carried over",
        )

    def applies_to(self, accelerator: str, engine: str, engine_version: str | None) -> bool:
        """True for the chip and engine it was fitted on, and the same version when both name one."""
        if (accelerator, engine) != (self.accelerator, self.engine):
            return False
        return engine_version is None or self.engine_version is None or engine_version == self.engine_version

    def slo_for_model(self, slo: perf.LatencySlo) -> perf.LatencySlo | None:
        """The TTFT objective the roofline model must meet once the fixed per-request cost is paid."""
        ttft = slo.ttft_p99_ms - self.request_overhead_s * 1e3
        if ttft <= 0:
            return None
        return perf.LatencySlo(ttft, slo.itl_p99_ms)


def _outside(value: float, bounds: tuple[float, float]) -> float:
    """1 inside [lo, hi], else the factor by which value lies beyond the nearer end."""
    lo, hi = bounds
    if value < lo:
        return lo / max(value, 1e-12)
    if value > hi:
        return value / max(hi, 1e-12)
    return 1.0


def _compute_field(config: perf.ReplicaConfig) -> str:
    precision = catalog.compute_precision(config.accelerator_spec, config.precision)
    return "compute_8bit" if precision in ("fp8", "int8") else "compute_16bit"


def predict(
    run: MeasuredRun,
    point: LoadMeasurement,
    efficiency: perf_efficiency.Efficiency | None,
    request_overhead_s: float = 0.0,
) -> perf.LoadPrediction | None:
    """The model's latencies at the point's load and sizes (TTFT including the request overhead).

    A concurrency point is the closed loop it was (its users spend the request overhead outside the engine,
    and past the engine's slots they queue); an open-loop point is evaluated at its measured rate.
    """
    sizes = perf.RequestSizes(max(1.0, point.prompt_tokens), max(1.0, point.output_tokens))
    if point.closed_loop and run.config.role == "aggregated":
        return perf.latency_at_concurrency(
            run.config,
            sizes,
            max(1.0, point.concurrency),
            efficiency=efficiency,
            request_overhead_s=request_overhead_s,
        )
    load = perf.latency_at_rate(run.config, sizes, max(point.requests_per_s, 1e-6), efficiency=efficiency)
    if load is None:
        return None
    extra_ms = request_overhead_s * 1e3
    return dataclasses.replace(
        load, ttft_p50_ms=load.ttft_p50_ms + extra_ms, ttft_p99_ms=load.ttft_p99_ms + extra_ms
    )


def point_log_errors(
    run: MeasuredRun,
    point: LoadMeasurement,
    efficiency: perf_efficiency.Efficiency | None,
    request_overhead_s: float = 0.0,
) -> list[tuple[float, float]]:
    """(weight, log(predicted / measured)) per latency the point measured.

    TTFT: the model's p50 against the measured median (robust to the stalls a shared machine adds to a
    mean). ITL: the model's p50 (the iteration time) against the measured mean, else the median (engines
    flush several tokens in one network write when their API server is busy, which makes most client-side
    gaps near zero and the median meaningless, while the mean is exact). When the model cannot serve the
    point's measured rate at all, every latency gets DIVERGED_LOG_ERROR plus log(rate / model capacity),
    so the fit is pushed toward a capacity that serves what was served.
    """
    load = predict(run, point, efficiency, request_overhead_s)
    pairs: list[tuple[float, float | None, float | None]] = [
        (CENTRAL_WEIGHT, None if load is None else load.ttft_p50_ms, point.ttft_p50_ms or point.ttft_mean_ms),
        (CENTRAL_WEIGHT, None if load is None else load.itl_p50_ms, point.itl_mean_ms or point.itl_p50_ms),
        (TAIL_WEIGHT, None if load is None else load.ttft_p99_ms, point.ttft_p99_ms),
        (TAIL_WEIGHT, None if load is None else load.itl_p99_ms, point.itl_p99_ms),
    ]
    diverged = DIVERGED_LOG_ERROR + _overload(run, point, efficiency) if load is None else 0.0
    out = []
    for weight, predicted, measured in pairs:
        if measured is None or measured <= 0:
            continue
        if predicted is None or predicted <= 0 or not math.isfinite(predicted):
            out.append((weight, diverged or DIVERGED_LOG_ERROR))
        else:
            out.append((weight, math.log(predicted / measured)))
    return out


def _overload(
    run: MeasuredRun, point: LoadMeasurement, efficiency: perf_efficiency.Efficiency | None
) -> float:
    """log(measured rate / the model's offline capacity at the point's sizes), at least 0."""
    try:
        capacity = perf.offline_throughput(
            run.config, max(1.0, point.prompt_tokens), max(1.0, point.output_tokens), efficiency=efficiency
        ).requests_per_s
    except perf.InvalidConfigError:
        return 0.0
    return max(0.0, math.log(max(point.requests_per_s, 1e-9) / max(capacity, 1e-9)))


def rms_log_error(
    runs: Sequence[MeasuredRun],
    efficiency: perf_efficiency.Efficiency | None,
    request_overhead_s: float = 0.0,
) -> float:
    """Weighted root-mean-square log error over every run's points."""
    errors = [
        (w, e)
        for run in runs
        for p in run.points
        for w, e in point_log_errors(run, p, efficiency, request_overhead_s)
    ]
    if not errors:
        return 0.0
    weights = np.array([w for w, _ in errors])
    values = np.array([e for _, e in errors])
    return float(np.sqrt(np.sum(weights * values**2) / np.sum(weights)))


def fit(
    runs: Sequence[MeasuredRun],
    prior: perf_efficiency.Efficiency | None = None,
    progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Fit bandwidth, compute, step and request overheads of one chip and engine to measured runs."""
    if not runs:
        raise CalibrationError("no measured runs to calibrate from")
    first = runs[0].config
    acc, engine = first.accelerator_spec, first.engine
    keys = {(r.config.accelerator_spec.id, r.config.engine) for r in runs}
    if len(keys) != 1:
        raise CalibrationError(f"runs mix accelerators or engines: {sorted(keys)}; calibrate one at a time")
    versions = {r.engine_version for r in runs}
    if len(versions) != 1:
        raise CalibrationError(f"runs mix engine versions {sorted(str(v) for v in versions)}")
    if sum(len(r.points) for r in runs) < 2:
        raise CalibrationError("a calibration needs at least two measured points")
    for run in runs:
        reason = perf.infeasibility(run.config)
        if reason is not None:
            raise CalibrationError(f"the measured configuration cannot be modelled: {reason}")
    base = prior if prior is not None else perf.efficiency_for(acc, engine)
    compute_fields = sorted({_compute_field(r.config) for r in runs})
    names = ["bandwidth", *compute_fields, "step_overhead_s", "request_overhead_s"]
    bounds = {n: FIT_BOUNDS["compute" if n.startswith("compute") else n] for n in names}
    lower = np.array([bounds[n][0] for n in names])
    upper = np.array([bounds[n][1] for n in names])
    start_values = [getattr(base, n) if n != "request_overhead_s" else 0.0 for n in names]
    start = np.clip(np.array(start_values, dtype=float), lower, upper)
    anchor = start.copy()
    calls = 0

    def build(values: NDArray[np.float64]) -> tuple[perf_efficiency.Efficiency, float]:
        changes: dict[str, Any] = {
            n: float(v) for n, v in zip(names, values, strict=True) if n != "request_overhead_s"
        }
        return dataclasses.replace(base, **changes), float(values[-1])

    def residuals(values: NDArray[np.float64]) -> NDArray[np.float64]:
        nonlocal calls
        calls += 1
        if progress is not None:
            progress(calls)
        eff, overhead = build(values)
        data = [
            math.sqrt(w) * e
            for run in runs
            for p in run.points
            for w, e in point_log_errors(run, p, eff, overhead)
        ]
        # Weak pull toward the prior (log space; the request overhead has no prior: pulled toward 0 ms
        # in units of 10 ms).
        pulls = [
            PRIOR_WEIGHT * (v / 0.01 if n == "request_overhead_s" else math.log(max(v, 1e-9) / max(s, 1e-9)))
            for n, v, s in zip(names, values, anchor, strict=True)
        ]
        return np.array(data + pulls)

    before = rms_log_error(runs, base)
    # Start the request overhead at the smallest measured TTFT minus the model's zero-load TTFT: a good
    # first guess that keeps the solver out of the flat region where every TTFT residual saturates.
    start[-1] = float(np.clip(_overhead_guess(runs, base), lower[-1], upper[-1]))
    result = optimize.least_squares(residuals, start, bounds=(lower, upper), x_scale="jac", max_nfev=300)
    fitted, overhead = build(result.x)
    after = rms_log_error(runs, fitted, overhead)
    label = f"{acc.id}/{engine}" + (f" {first_version(runs)}" if first_version(runs) else "")
    fitted = dataclasses.replace(
        fitted,
        source=f"calibrated on {label} from {sum(len(r.points) for r in runs)} measured points "
        f"({'; '.join(r.source for r in runs if r.source)}), rms log error {before:.3f} -> {after:.3f}",
    )
    all_points = [p for r in runs for p in r.points]
    return Calibration(
        accelerator=acc.id,
        engine=engine,
        engine_version=first_version(runs),
        efficiency=fitted,
        request_overhead_s=overhead,
        prior=base,
        models=frozenset(r.config.model_arch.id for r in runs),
        tps=frozenset(r.config.tp for r in runs),
        prompt_range=(min(p.prompt_tokens for p in all_points), max(p.prompt_tokens for p in all_points)),
        output_range=(min(p.output_tokens for p in all_points), max(p.output_tokens for p in all_points)),
        concurrency_range=(min(p.concurrency for p in all_points), max(p.concurrency for p in all_points)),
        points=len(all_points),
        rms_log_error_before=before,
        rms_log_error_after=after,
        source=fitted.source,
    )


def first_version(runs: Sequence[MeasuredRun]) -> str | None:
    """The engine version the runs share (None when unknown)."""
    return runs[0].engine_version if runs else None


def _overhead_guess(runs: Sequence[MeasuredRun], efficiency: perf_efficiency.Efficiency) -> float:
    """Smallest (measured - predicted) central TTFT over the points, seconds, at least 0."""
    gaps = []
    for run in runs:
        for point in run.points:
            measured = point.ttft_mean_ms or point.ttft_p50_ms
            load = predict(run, point, efficiency)
            if measured is not None and load is not None:
                gaps.append((measured - load.ttft_p50_ms) / 1e3)
    return max(0.0, min(gaps)) if gaps else 0.0


def max_rate_under_slo(
    calibration: Calibration,
    config: perf.ReplicaConfig,
    prompt_tokens: float,
    output_tokens: float,
    slo: perf.LatencySlo,
    **kwargs: Any,
) -> perf.RatePrediction:
    """perf.max_rate_under_slo with calibrated efficiency and the request overhead off the TTFT SLO."""
    model_slo = calibration.slo_for_model(slo)
    if model_slo is None:
        return perf.RatePrediction(
            0.0,
            0.0,
            0.0,
            0,
            0.0,
            f"the measured per-request overhead ({calibration.request_overhead_s * 1e3:.0f} ms) alone "
            "exceeds the TTFT objective",
            source=f"calibrated: {calibration.source}",
        )
    rate = perf.max_rate_under_slo(
        config, prompt_tokens, output_tokens, model_slo, efficiency=calibration.efficiency, **kwargs
    )
    extra_ms = calibration.request_overhead_s * 1e3
    return dataclasses.replace(
        rate,
        ttft_p99_ms=rate.ttft_p99_ms + extra_ms if rate.max_rps > 0 else rate.ttft_p99_ms,
        ttft_p50_ms=rate.ttft_p50_ms + extra_ms if rate.max_rps > 0 else rate.ttft_p50_ms,
        source=f"calibrated: {calibration.source}",
    )


# --- where a figure comes from ------------------------------------------------------------------------------

CALIBRATED_SOURCE_PREFIX: Final = "calibrated"
MEASURED_SOURCE_PREFIX: Final = "profile"


def basis(source: str) -> str:
    """A capacity source for a person: measured, calibrated from a profile, or predicted from specs."""
    parts = [s.strip() for s in source.split(",") if s.strip()]
    kinds = []
    for part in parts or ["perf"]:
        if part.startswith(MEASURED_SOURCE_PREFIX):
            kinds.append(f"measured ({part})")
        elif part.startswith(CALIBRATED_SOURCE_PREFIX):
            kinds.append(part.split(";", 1)[0])
        else:
            kinds.append("predicted from specs (uncalibrated chip/engine efficiency)")
    return "; ".join(dict.fromkeys(kinds))


class CalibratedOracle:
    """Capacity from the performance model with the calibrated efficiency of the query's chip and engine.

    Queries on a (chip, engine) no calibration covers go to `fallback` (the uncalibrated model). The bucket
    semantics are perf_oracle's: throughput at the bucket's mean sizes, tail latency with its largest
    request as the p99.
    """

    def __init__(self, calibrations: Sequence[Calibration], fallback: Callable[[Any], Any]) -> None:
        self.calibrations = tuple(calibrations)
        self.fallback = fallback

    def calibration_for(self, accelerator: str, engine: str) -> Calibration | None:
        """The calibration of this chip and engine, if any (the most points wins)."""
        matching = [c for c in self.calibrations if c.applies_to(accelerator, engine, None)]
        return max(matching, key=lambda c: c.points) if matching else None

    def __call__(self, query: Any) -> Any:
        """One query (a placement.candidates.Query)."""
        from placement import candidates  # a late import: candidates builds on the solver package

        cal = self.calibration_for(query.accelerator, query.engine)
        if cal is None:
            return self.fallback(query)
        model: str | catalog.ModelArch = query.model_arch if query.model_arch is not None else query.model
        # A chip a pool declares by its specs (acceleratorSpec) is not in the catalog: use the declared one.
        chip: str | catalog.Accelerator = getattr(query, "accelerator_spec", None) or query.accelerator
        prompt_mean = query.prompt_mean_tokens or float(query.prompt_tokens)
        output_mean = query.output_mean_tokens or float(query.output_tokens)
        try:
            config = perf.ReplicaConfig(model, chip, query.precision, query.tp, query.role, query.engine)
            rate = max_rate_under_slo(
                cal,
                config,
                max(1.0, prompt_mean),
                max(1.0, output_mean),
                perf.LatencySlo(query.ttft_p99_ms, query.itl_p99_ms),
                prompt_tokens_p99=max(float(query.prompt_tokens), prompt_mean, 1.0),
                output_tokens_p99=max(float(query.output_tokens), output_mean, 1.0),
                prefill_chunk_tokens=getattr(query, "prefill_chunk_tokens", None),
            )
        except (catalog.UnknownIdError, perf.InvalidConfigError) as error:
            return candidates.Capacity(0.0, None, None, str(error), rate_source(cal), size_monotone=True)
        trust = cal.trust(
            config.model_arch.id, query.tp, prompt_mean, output_mean, float(rate.max_batch or 1)
        )
        source = f"{rate_source(cal)}; {trust.note}"
        confidence = _placement_trust(trust, source)
        if rate.max_rps > 0.0:
            return candidates.Capacity(
                rate.max_rps,
                rate.ttft_p99_ms if query.role != "decode" else None,
                rate.itl_p99_ms if query.role != "prefill" else None,
                rate.reason,
                source,
                prefill_chunk_tokens=rate.prefill_chunk_tokens,
                modelled=True,
                trust=confidence,
            )
        return candidates.Capacity(
            0.0, None, None, rate.reason, source, size_monotone=True, modelled=True, trust=confidence
        )

    def batch(self, queries: Sequence[Any]) -> list[Any]:
        """Many queries: the uncalibrated ones in one batch of the fallback (it may be vectorized)."""
        from placement import candidates

        answers: list[Any] = [None] * len(queries)
        rest = []
        for i, query in enumerate(queries):
            if self.calibration_for(query.accelerator, query.engine) is not None:
                answers[i] = self(query)
            else:
                rest.append(i)
        for i, answer in zip(rest, candidates.ask(self.fallback, [queries[i] for i in rest]), strict=True):
            answers[i] = answer
        return answers


def _placement_trust(fit: Trust, source: str) -> Any:
    """A calibration's trust as placement.trust states it (calibrated: no headroom derating)."""
    from placement import trust

    inside = fit.level == "calibrated"
    error = trust.CALIBRATED_TYPICAL_ERROR + (0.0 if inside else trust.OUT_OF_RANGE_EXTRA_ERROR)
    return trust.Trust("calibrated", inside, (source,), round(error, 4))


def rate_source(calibration: Calibration) -> str:
    """The source string of a calibrated capacity."""
    version = f" {calibration.engine_version}" if calibration.engine_version else ""
    return (
        f"{CALIBRATED_SOURCE_PREFIX} from a profile ({calibration.accelerator}/{calibration.engine}{version})"
    )
