"""How far a performance prediction can be trusted, and the capacity headroom the solver keeps for it.

A prediction is as good as the data behind it. The efficiency factors are fitted per (vendor, engine) on
placement/data (benchmarks/calibrate.py); a chip with rows in that fit set is *calibrated* for that
engine; a chip of the same vendor without rows (a catalog chip never measured, or any chip a pool declares
by its specs) is *predicted from specs* with its vendor's efficiency family; an engine whose factors are
a published ratio of a fitted engine's is *engine-derived*; a vendor and engine with no fit at all runs on
a prior. Request sizes and tensor-parallel degrees outside the fitted rows' range are said as well.

The typical errors below are measured (benchmarks/REPORT_accuracy.md); where a prediction is not
calibrated, the solver keeps headroom: capacity x 1 / (1 + typical error), so a chip that is as far off
as chips predicted from specs typically are still meets its load.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Final, Literal

from placement import calibration, engine_version, perf

Level = Literal["measured", "calibrated", "engine-derived", "uncalibrated", "prior"]

# Typical |error| of throughput predictions per level (fractions), from benchmarks/REPORT_accuracy.md:
# calibrated: median |err| on the fit set 6.9%, on the held-out H200/L40S columns 7.4% (p90 ~16-21%).
CALIBRATED_TYPICAL_ERROR: Final = 0.10
# engine-derived: the engine's factors are a published ratio of TensorRT-LLM's (vLLM blog, TGI notes),
# not fitted; no measurement checks the ratio here, so twice the calibrated band.
ENGINE_DERIVED_TYPICAL_ERROR: Final = 0.20
# predicted from specs: leave-one-chip-out refits (REPORT_accuracy.md, "predicted from specs only")
# put a never-seen chip at 8-27% median |err|; the upper end is what the headroom covers.
FROM_SPECS_TYPICAL_ERROR: Final = 0.25
# prior: no measurement of this vendor and engine at all (AWS Neuron): a guess within a factor ~1.5.
PRIOR_TYPICAL_ERROR: Final = 0.40
# Outside the fitted request sizes or tp: extrapolation adds this much to the band (the fit's p90 minus
# its median, REPORT_accuracy.md: 21.1% - 6.9%).
OUT_OF_RANGE_EXTRA_ERROR: Final = 0.14

UNCALIBRATED_NOTE: Final = "uncalibrated: predicted from specs"


@dataclasses.dataclass(frozen=True)
class FittedRange:
    """What the rows of one (chip, engine) in the fit set span."""

    prompt_tokens: tuple[float, float]
    output_tokens: tuple[float, float]
    tp: tuple[int, int]
    engine_versions: frozenset[str]
    rows: int


@dataclasses.dataclass(frozen=True)
class Trust:
    """How much a prediction can be trusted: its level, why, its typical error and the headroom it gets."""

    level: Level
    in_range: bool
    notes: tuple[str, ...]
    typical_error: float

    @property
    def derate(self) -> float:
        """Capacity factor the solver applies with headroom on: 1 where calibrated or measured."""
        if self.level in ("measured", "calibrated", "engine-derived"):
            return 1.0
        return 1.0 / (1.0 + self.typical_error)

    @property
    def label(self) -> str:
        """One line for tables, explanations and status."""
        return "; ".join(self.notes)


def _release_of(dataset: str) -> str:
    """`trtllm_v0.17_perf_overview` -> `trtllm v0.17`; MLPerf rows -> their round."""
    head = dataset.split()[0]
    parts = head.split("_")
    return " ".join(parts[:2]) if len(parts) >= 2 else head


@functools.cache
def fitted_ranges() -> Mapping[tuple[str, str], FittedRange]:
    """(chip id, engine) -> the span of its rows in the fit set (reads placement/data once)."""
    rows: dict[tuple[str, str], list[calibration.CalibrationPoint]] = {}
    for points in calibration.fit_sets().values():
        for p in points:
            rows.setdefault((p.accelerator, p.engine), []).append(p)
    out = {}
    for key, points in rows.items():
        tps = [t for p in points for t in p.tp_choices]
        out[key] = FittedRange(
            prompt_tokens=(min(p.prompt_tokens for p in points), max(p.prompt_tokens for p in points)),
            output_tokens=(min(p.output_tokens for p in points), max(p.output_tokens for p in points)),
            tp=(min(tps), max(tps)),
            engine_versions=frozenset(_release_of(p.dataset) for p in points),
            rows=len(points),
        )
    return out


def _fitted_engines(vendor: str) -> frozenset[str]:
    """Engines whose factors were fitted for this vendor."""
    return frozenset(e for v, e in calibration.FITTED_FAMILIES.values() if v == vendor)


# An engine release with no measurements of its own, predicted with the reference release's efficiency.
UNMEASURED_RELEASE_EXTRA_ERROR: Final = 0.05


def assess(
    config: perf.ReplicaConfig,
    prompt_tokens: float,
    output_tokens: float,
    versioned: engine_version.VersionedEfficiency | None = None,
) -> Trust:
    """How far the model's prediction for this replica and request size (and engine release) can be
    trusted."""
    level, error, notes, span = _assess_config(config, versioned)
    in_range = True
    if span is not None:
        outside = []
        if not span.prompt_tokens[0] <= prompt_tokens <= span.prompt_tokens[1]:
            outside.append(
                f"prompt {prompt_tokens:.0f} outside {span.prompt_tokens[0]:.0f}-{span.prompt_tokens[1]:.0f}"
            )
        if not span.output_tokens[0] <= output_tokens <= span.output_tokens[1]:
            outside.append(
                f"output {output_tokens:.0f} outside {span.output_tokens[0]:.0f}-{span.output_tokens[1]:.0f}"
            )
        if not span.tp[0] <= config.tp <= span.tp[1]:
            outside.append(f"tp {config.tp} outside {span.tp[0]}-{span.tp[1]}")
        if outside:
            in_range = False
            error += OUT_OF_RANGE_EXTRA_ERROR
            notes = (*notes, "outside the calibrated range: " + ", ".join(outside))
    return Trust(level, in_range, notes, round(error, 4))


def assess_sizes(
    config: perf.ReplicaConfig,
    prompt_tokens: Sequence[float],
    output_tokens: Sequence[float],
    versioned: engine_version.VersionedEfficiency | None = None,
) -> list[tuple[float, float]]:
    """(typical error, derate) of `assess` for each size, without building a Trust per size (candidates
    read these for every bucket and build the Trust of the least trusted one)."""
    level, error, _, span = _assess_config(config, versioned)
    trusted = level in ("measured", "calibrated", "engine-derived")
    out = []
    for prompt, output in zip(prompt_tokens, output_tokens, strict=True):
        outside = span is not None and not (
            span.prompt_tokens[0] <= prompt <= span.prompt_tokens[1]
            and span.output_tokens[0] <= output <= span.output_tokens[1]
            and span.tp[0] <= config.tp <= span.tp[1]
        )
        typical = round(error + OUT_OF_RANGE_EXTRA_ERROR if outside else error, 4)
        out.append((typical, 1.0 if trusted else 1.0 / (1.0 + typical)))
    return out


@functools.lru_cache(maxsize=16384)
def _assess_config(
    config: perf.ReplicaConfig, versioned: engine_version.VersionedEfficiency | None
) -> tuple[Level, float, tuple[str, ...], FittedRange | None]:
    """The size-independent part of assess: level, typical error, notes, and the fitted span to check sizes
    against (memoized: candidates ask it for every request-size bucket of every configuration)."""
    acc = config.accelerator_spec
    chip = acc.parent or acc.id
    fitted = _fitted_engines(acc.vendor)
    ranges = fitted_ranges()
    chip_rows = {e: r for (c, e), r in ranges.items() if c == chip} if acc.origin == "catalog" else {}
    notes: list[str] = []
    if not fitted:
        level: Level = "prior"
        error = PRIOR_TYPICAL_ERROR
        notes.append(f"{UNCALIBRATED_NOTE} (no {acc.vendor} measurements: prior efficiencies)")
    elif not chip_rows:
        level = "uncalibrated"
        error = FROM_SPECS_TYPICAL_ERROR
        source = "declared by its pool" if acc.origin == "inline" else "catalog specs, never measured"
        notes.append(f"{UNCALIBRATED_NOTE} ({source}; {acc.vendor} efficiency family)")
    elif config.engine in chip_rows:
        level = "calibrated"
        error = CALIBRATED_TYPICAL_ERROR
        versions = ", ".join(sorted(chip_rows[config.engine].engine_versions))
        notes.append(f"calibrated: {chip} + {config.engine} ({versions})")
    else:
        level = "engine-derived"
        error = ENGINE_DERIVED_TYPICAL_ERROR
        base = ", ".join(sorted(chip_rows))
        notes.append(
            f"engine-derived: {chip} calibrated with {base}; {config.engine} scaled by a published ratio"
        )
    if versioned is not None and level != "prior":
        notes.append(versioned.note)
        if not versioned.measured:
            error += UNMEASURED_RELEASE_EXTRA_ERROR
    if acc.is_mig and level in ("calibrated", "engine-derived"):
        notes.append(f"MIG slice {acc.mig_profile}: scaled from the whole chip, never measured")
    span = chip_rows.get(config.engine) or next(iter(chip_rows.values()), None)
    return level, error, tuple(notes), span


def from_profile(level: str, note: str, rms_log_error: float, specs: Trust) -> Trust:
    """The trust of a figure fitted to a measured profile (profile_fit's level and note).

    Inside the measured range the fit's own residual is the typical error; a little beyond it the
    out-of-range band is added; further out only the efficiency carries over, so the figure is as
    trustworthy as the specs-based prediction, and says both.
    """
    fit_error = math.expm1(abs(rms_log_error))
    if level == "calibrated":
        return Trust("calibrated", True, (note,), round(fit_error, 4))
    if level == "calibrated-extrapolated":
        return Trust("calibrated", False, (note,), round(fit_error + OUT_OF_RANGE_EXTRA_ERROR, 4))
    return Trust(specs.level, False, (note, *specs.notes), specs.typical_error)


def measured(source: str) -> Trust:
    """A measured profile answered: trusted as measured."""
    return Trust("measured", True, (f"measured: {source}",), 0.0)
