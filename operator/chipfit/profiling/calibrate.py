"""PerformanceProfile objects to calibrations of the performance model (placement.profile_fit)."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from chipfit.api import v1alpha1
from placement import catalog, perf, profile_fit

CalibrationKey = tuple[str, str, str | None]


def model_of(spec: v1alpha1.PerformanceProfileSpec) -> catalog.ModelArch:
    """The profiled model: its inline architecture, else the catalog entry."""
    if spec.architecture is not None:
        return spec.architecture.to_catalog(spec.model)
    return catalog.get_model(spec.model)


def measured_run(
    profile: v1alpha1.PerformanceProfile, accelerators: Mapping[str, catalog.Accelerator] | None = None
) -> profile_fit.MeasuredRun:
    """A profile's points as a measured run of its replica configuration."""
    spec = profile.spec
    if not spec.points:
        raise profile_fit.CalibrationError(
            f"PerformanceProfile {profile.metadata.name}: spec.points: a bucket table cannot calibrate "
            "the model"
        )
    declared = accelerators or {}
    acc = declared.get(spec.accelerator) or catalog.get_accelerator(spec.accelerator)
    config = perf.ReplicaConfig(model_of(spec), acc, spec.precision, spec.tensor_parallel, engine=spec.engine)
    points = tuple(
        profile_fit.LoadMeasurement(
            concurrency=float(p.concurrency),
            requests_per_s=p.requests_per_second or p.output_tokens_per_second / p.output_tokens,
            prompt_tokens=float(p.prompt_tokens),
            output_tokens=float(p.output_tokens),
            ttft_p50_ms=p.ttft_p50_ms,
            ttft_p99_ms=p.ttft_p99_ms,
            itl_p50_ms=p.itl_p50_ms,
            itl_p99_ms=p.itl_p99_ms,
            ttft_mean_ms=p.ttft_mean_ms,
            itl_mean_ms=p.itl_mean_ms,
            closed_loop=p.offered_requests_per_second is None,
        )
        for p in spec.points
    )
    return profile_fit.MeasuredRun(
        config, points, spec.engine_version, f"PerformanceProfile {profile.metadata.name}"
    )


def calibrations(
    profiles: Sequence[v1alpha1.PerformanceProfile],
    accelerators: Mapping[str, catalog.Accelerator] | None = None,
) -> dict[CalibrationKey, profile_fit.Calibration]:
    """One calibration per (accelerator, engine, engine version) that has point profiles.

    Partial profiles count (their points were measured); bucket tables do not (they answer capacity
    directly, see chipfit.planning).
    """
    groups: dict[CalibrationKey, list[profile_fit.MeasuredRun]] = collections.defaultdict(list)
    for profile in profiles:
        if not profile.spec.points:
            continue
        spec = profile.spec
        groups[(spec.accelerator, spec.engine, spec.engine_version)].append(
            measured_run(profile, accelerators)
        )
    return {key: profile_fit.fit(runs) for key, runs in groups.items()}
