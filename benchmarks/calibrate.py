"""Refit the performance model's efficiency factors; print or --write placement/perf_efficiency.py's block.

    .venv/bin/python benchmarks/calibrate.py            # fit and print the constants
    .venv/bin/python benchmarks/calibrate.py --write    # also rewrite the fitted block in place

Fits one `Efficiency` per (vendor, engine) that has measurements: NVIDIA + TensorRT-LLM on the
TensorRT-LLM offline grid (H100, A100) and the MLPerf v4.1 closed Offline rows run with TensorRT (H100,
H200, L40S); AMD + vLLM on the MLPerf MI300X Offline rows. Server rows, the held-out TensorRT-LLM H200
and L40S columns and every other engine are never used for fitting (see benchmarks/accuracy.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import re
import sys
import textwrap

from placement import calibration, perf_efficiency

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "placement" / "perf_efficiency.py"
BEGIN = "# --- fitted by benchmarks/calibrate.py "
END = "# --- end fitted "

# AMD has four MLPerf rows of one benchmark: only the two factors they can pin down are fitted, the
# overlap, interconnect and step overhead keep their priors.
AMD_FIELDS = ("bandwidth", "compute_8bit")


def fit_sets() -> dict[str, list[calibration.CalibrationPoint]]:
    """Fitting points per fitted constant name (the one definition lives in placement.calibration)."""
    return calibration.fit_sets()


def render(name: str, result: calibration.FitResult, fields: tuple[str, ...]) -> str:
    """Python source of one fitted constant."""
    eff = result.efficiency
    lines = textwrap.wrap(
        f"{name}: fitted {', '.join(fields)}.", width=100, initial_indent="# ", subsequent_indent="# "
    )
    lines.append(f"{name}: Final = Efficiency(")
    for field in dataclasses.fields(eff):
        if field.name == "source":
            continue
        lines.append(f"    {field.name}={getattr(eff, field.name):.4g},")
    lines.append(
        f'    source="fitted {datetime.date.today().isoformat()} on {result.points} rows, '
        f'rms log error {result.rms_log_error_before:.3f} -> {result.rms_log_error_after:.3f}",'
    )
    lines.append(")")
    return "\n".join(lines)


def main() -> int:
    """Fit, print, optionally write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the fitted block of perf_efficiency.py")
    args = parser.parse_args()
    sets = fit_sets()
    blocks = []
    for name, prior, fields in (
        ("NVIDIA_TRTLLM", perf_efficiency.NVIDIA_TRTLLM_PRIOR, calibration.FITTED_FIELDS),
        ("AMD_VLLM", perf_efficiency.AMD_VLLM_PRIOR, AMD_FIELDS),
    ):
        points = sets[name]
        print(f"fitting {name} on {len(points)} rows ({', '.join(fields)}) ...", file=sys.stderr)
        result = calibration.fit_efficiency(points, prior, fields, progress=None)
        print(
            f"  rms log error {result.rms_log_error_before:.3f} -> {result.rms_log_error_after:.3f}",
            file=sys.stderr,
        )
        blocks.append(render(name, result, tuple(fields)))
    text = "\n".join(blocks)
    print(text)
    if args.write:
        source = TARGET.read_text(encoding="utf-8")
        pattern = re.compile(rf"({re.escape(BEGIN)}[^\n]*\n).*?(\n{re.escape(END)})", re.DOTALL)
        header = (
            "# Regenerate with `.venv/bin/python benchmarks/calibrate.py --write` (scipy least squares on\n"
            "# log(predicted / measured) with a weak pull toward the *_PRIOR values above).\n"
        )
        updated, count = pattern.subn(lambda m: m.group(1) + header + text + "\n" + m.group(2), source)
        if count != 1:
            print("perf_efficiency.py: fitted block markers not found", file=sys.stderr)
            return 1
        TARGET.write_text(updated, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
