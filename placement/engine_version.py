"""Engine releases: the efficiency an engine reaches depends on its version, and a measurement says which.

The fitted families in perf_efficiency are each engine's *reference release* (the one most calibration
rows were measured on: TensorRT-LLM v0.17). A release with published measurements on the same cells as the
reference (TensorRT-LLM v1.0) gets the measured ratios applied: decode-dominated cells scale memory-bound
work, prefill-dominated cells scale compute (calibration.engine_version_ratios, data only). Any other
version, or none, gets the reference release's efficiency (the documented default), and says so.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Final

from placement import calibration, catalog, perf, perf_efficiency

# "v1.0", "1.0.0rc3", "0.17.0" -> the release a calibration source names ("1.0", "0.17").
_VERSION_RE: Final = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)")

DEFAULT_NOTE: Final = (
    "{engine} {version}: no measurements of this release, the {reference} family's efficiency"
)
UNSPECIFIED_NOTE: Final = "{engine} version not given: the fitted family's efficiency"


@dataclasses.dataclass(frozen=True)
class VersionedEfficiency:
    """The efficiency one engine release reaches on a chip, and what it rests on."""

    efficiency: perf_efficiency.Efficiency
    note: str
    # True when this release (or the reference) has measurements behind it.
    measured: bool


def release(version: str | None) -> str | None:
    """The major.minor release of a version string (None when absent or unparsable)."""
    if version is None:
        return None
    match = _VERSION_RE.match(version.strip())
    return f"{int(match['major'])}.{int(match['minor'])}" if match else None


@functools.cache
def _ratios() -> Mapping[tuple[str, str], calibration.VersionRatio]:
    return calibration.engine_version_ratios()


def _scaled(base: perf_efficiency.Efficiency, ratio: calibration.VersionRatio) -> perf_efficiency.Efficiency:
    """`base` with the release's measured ratios: memory-bound work faster or slower, compute likewise.

    Bandwidth cannot exceed the datasheet peak: what the ratio asks beyond it is taken from the fixed
    per-step cost instead (the release's scheduler overhead), which is where decode speedups of a release
    on the same hardware come from.
    """
    wanted = base.bandwidth * ratio.bandwidth_ratio
    bandwidth = min(1.0, wanted)
    leftover = wanted / bandwidth if bandwidth > 0 else 1.0
    return dataclasses.replace(
        base,
        bandwidth=bandwidth,
        compute_16bit=min(1.0, base.compute_16bit * ratio.compute_ratio),
        compute_8bit=min(1.0, base.compute_8bit * ratio.compute_ratio),
        step_overhead_s=base.step_overhead_s / leftover,
        source=f"{base.source}; {ratio.engine} {ratio.version} ratios vs {ratio.reference}",
    )


def efficiency(acc: catalog.Accelerator, engine: str, version: str | None) -> VersionedEfficiency:
    """The efficiency of `engine` at `version` on `acc` (the documented default for unknown releases)."""
    base = perf.efficiency_for(acc, engine)
    reference = calibration.REFERENCE_ENGINE_VERSIONS.get(engine)
    wanted = release(version)
    if version is None:
        return VersionedEfficiency(base, UNSPECIFIED_NOTE.format(engine=engine), True)
    if wanted is not None and wanted == reference:
        return VersionedEfficiency(base, f"{engine} {wanted}: the reference release of the fit", True)
    ratio = _ratios().get((engine, wanted or ""))
    if ratio is not None:
        note = (
            f"{engine} {wanted}: measured vs {ratio.reference} on {ratio.cells} shared cells "
            f"(decode x{ratio.bandwidth_ratio:.3f}, prefill x{ratio.compute_ratio:.3f})"
        )
        return VersionedEfficiency(_scaled(base, ratio), note, True)
    shown = reference or "fitted"
    return VersionedEfficiency(
        base, DEFAULT_NOTE.format(engine=engine, version=version, reference=f"{engine} {shown}"), False
    )


def same_release(a: str | None, b: str | None) -> bool:
    """True when two versions name the same release, or either is unknown (then nothing contradicts)."""
    ra, rb = release(a), release(b)
    return ra is None or rb is None or ra == rb


def undeployable_release(
    engine: str, vendor: str, version: str | None, own_image: bool = False
) -> str | None:
    """Why `engine` at `version` cannot be deployed on `vendor`'s chips (None when it can).

    Only image lines that hold one release (catalog.LOCKED_RELEASES) refuse, and only a release other than
    theirs; a service that brings its own image (spec.overrides.image) runs what it names.
    """
    locked = catalog.LOCKED_RELEASES.get((engine, vendor))
    if own_image or version is None or locked is None or release(version) == release(locked):
        return None
    return (
        f"{engine} {version} cannot be deployed on {vendor} chips: chipfit's {engine} image there holds "
        f"release {locked} only (its registry tags images by date, not release); set spec.overrides.image "
        f"to an image of {engine} {version}"
    )
