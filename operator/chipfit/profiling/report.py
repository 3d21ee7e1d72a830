"""A profiling run as a PerformanceProfile, a table and a latency-vs-load plot (self-contained SVG/HTML)."""

from __future__ import annotations

import dataclasses
import html
import math
import re
from collections.abc import Sequence

from rich.table import Table

from chipfit import __version__
from chipfit.api import v1alpha1
from chipfit.profiling import runner

TOOL = f"chipfit profile {__version__} (httpx streaming client)"


@dataclasses.dataclass(frozen=True)
class Target:
    """What was measured, as the profile records it (the endpoint cannot tell chip, precision or tp)."""

    accelerator: str
    precision: v1alpha1.Precision = "bf16"
    tensor_parallel: int = 1
    engine: v1alpha1.Engine = "vllm"
    engine_image: str | None = None
    engine_version: str | None = None
    model: str | None = None
    architecture: v1alpha1.ModelArchitecture | None = None
    name: str | None = None


def profile_name(model: str, accelerator: str, precision: str, tp: int, engine: str) -> str:
    """A DNS-1123 name for the profile of this configuration."""
    raw = f"{model}-{accelerator}-{precision}-tp{tp}-{engine}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    return re.sub(r"-+", "-", name)[:253].strip("-") or "profile"


def _point(stats: runner.PointStats) -> v1alpha1.ProfilePoint:
    ttft, itl = stats.ttft, stats.itl
    assert ttft is not None and itl is not None, "points without TTFT or ITL are not recorded"
    concurrency = stats.load.concurrency or max(1, round(stats.mean_in_flight))
    return v1alpha1.ProfilePoint(
        concurrency=concurrency,
        prompt_tokens=max(1, round(stats.prompt_tokens)),
        output_tokens=max(1, round(stats.output_tokens)),
        requests_per_second=_positive(stats.requests_per_s),
        output_tokens_per_second=_round(max(stats.output_tokens_per_s, 1e-9)),
        ttft_p50_ms=_positive(ttft.p50_ms),
        ttft_p99_ms=_round(max(ttft.p99_ms, 1e-6)),
        itl_p50_ms=_positive(itl.p50_ms),
        itl_p99_ms=_round(max(itl.p99_ms, 1e-6)),
        offered_requests_per_second=stats.load.rate_rps,
        ttft_mean_ms=_positive(ttft.mean_ms),
        ttft_p90_ms=_positive(ttft.p90_ms),
        itl_mean_ms=_positive(itl.mean_ms),
        itl_p90_ms=_positive(itl.p90_ms),
        requests=stats.requests,
        errors=stats.errors,
        duration_seconds=_round(stats.duration_s),
    )


def _positive(value: float) -> float | None:
    return _round(value) if math.isfinite(value) and value > 0 else None


def _round(value: float) -> float:
    """Four significant digits: well below the run-to-run noise of any serving measurement."""
    return float(f"{value:.4g}")


def _sorted_points(points: Sequence[v1alpha1.ProfilePoint]) -> list[v1alpha1.ProfilePoint]:
    return sorted(points, key=lambda p: (p.concurrency, p.offered_requests_per_second or 0.0))


def to_profile(result: runner.RunResult, target: Target) -> v1alpha1.PerformanceProfile:
    """The run as a PerformanceProfile; raises ValueError when no point measured anything."""
    # A point needs both latencies; one whose requests all produced a single chunk has no ITL.
    points = [_point(s) for s in result.points if s.ttft is not None and s.itl is not None]
    if not points:
        raise ValueError(f"nothing measured at {result.base_url}: {result.partial_reason or 'no points'}")
    model = target.model or result.model
    name = target.name or profile_name(
        model, target.accelerator, target.precision, target.tensor_parallel, target.engine
    )
    shape = "Poisson arrivals" if result.points[0].load.rate_rps is not None else "concurrency sweep"
    description = (
        f"{shape} of {result.api} requests against {result.base_url} (served model {result.model}); "
        f"sizes: {result.sizes.description}"
    )
    if result.stopped_reason:
        description += f"; stopped: {result.stopped_reason}"
    spec = v1alpha1.PerformanceProfileSpec(
        model=model,
        architecture=target.architecture,
        accelerator=target.accelerator,
        precision=target.precision,
        engine=target.engine,
        engine_version=target.engine_version or result.engine_version,
        engine_image=target.engine_image,
        tensor_parallel=target.tensor_parallel,
        source=v1alpha1.ProfileSource(
            description=description[: v1alpha1.MAX_TEXT_LENGTH],
            measured_at=result.started_at,
            tool=TOOL,
            endpoint=result.base_url,
        ),
        points=_sorted_points(points),
        partial=True if result.partial_reason else None,
        partial_reason=result.partial_reason[: v1alpha1.MAX_TEXT_LENGTH] if result.partial_reason else None,
    )
    return v1alpha1.PerformanceProfile(metadata=v1alpha1.ObjectMeta(name=name), spec=spec)


def wire(profile: v1alpha1.PerformanceProfile) -> dict[str, object]:
    """The profile as a manifest: camelCase, without empty metadata maps."""
    body = profile.to_wire()
    body["metadata"] = {k: v for k, v in body["metadata"].items() if v not in ({}, None)}
    return body


def table(result: runner.RunResult) -> Table:
    """One row per measured point."""
    out = Table(title=f"{result.model} at {result.base_url}", title_justify="left")
    for header in (
        "load",
        "req/s",
        "out tok/s",
        "in flight",
        "TTFT mean/p50/p90/p99 ms",
        "ITL mean/p50/p90/p99 ms",
        "errors",
    ):
        out.add_column(header, justify="right")
    for s in result.points:
        out.add_row(
            s.load.label,
            f"{s.requests_per_s:.2f}",
            f"{s.output_tokens_per_s:.1f}",
            f"{s.mean_in_flight:.1f}",
            _quad(s.ttft),
            _quad(s.itl),
            f"{s.errors}/{s.requests}",
        )
    return out


def _quad(p: runner.Percentiles | None) -> str:
    if p is None:
        return "-"
    return f"{p.mean_ms:.1f}/{p.p50_ms:.1f}/{p.p90_ms:.1f}/{p.p99_ms:.1f}"


# --- plot: two panels (TTFT, ITL) of p50 and p99 against achieved request rate, plain SVG -------------------

_W, _H, _PAD = 460, 300, 56


def _panel(title: str, xs: list[float], series: dict[str, list[float]], x_label: str) -> str:
    """One SVG panel with linear axes, a polyline and dots per series."""
    colors = {"p50": "#1f77b4", "p90": "#2ca02c", "p99": "#d62728", "mean": "#7f7f7f"}
    x_max = max(xs) * 1.1 if xs and max(xs) > 0 else 1.0
    y_all = [v for vs in series.values() for v in vs if math.isfinite(v)]
    y_max = max(y_all) * 1.1 if y_all and max(y_all) > 0 else 1.0

    def sx(x: float) -> float:
        return _PAD + (_W - 1.5 * _PAD) * x / x_max

    def sy(y: float) -> float:
        return _H - _PAD + -(_H - 1.6 * _PAD) * y / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">',
        f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD / 2}" y2="{_H - _PAD}" stroke="black"/>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_PAD}" y2="{_PAD * 0.6}" stroke="black"/>',
        f'<text x="{_W / 2}" y="{_H - 12}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>',
        f'<text x="14" y="{_H / 2}" transform="rotate(-90 14 {_H / 2})" text-anchor="middle" '
        'font-size="12">ms</text>',
    ]
    for i in range(5):
        xv, yv = x_max * i / 4, y_max * i / 4
        parts.append(
            f'<text x="{sx(xv):.1f}" y="{_H - _PAD + 16}" text-anchor="middle" font-size="10">{xv:.3g}</text>'
        )
        parts.append(
            f'<text x="{_PAD - 6}" y="{sy(yv) + 3:.1f}" text-anchor="end" font-size="10">{yv:.3g}</text>'
        )
        parts.append(
            f'<line x1="{_PAD}" y1="{sy(yv):.1f}" x2="{_W - _PAD / 2}" y2="{sy(yv):.1f}" stroke="#ddd"/>'
        )
    for k, (name, ys) in enumerate(series.items()):
        color = colors.get(name, "#000")
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        if pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts)
        parts.append(
            f'<text x="{_PAD + 8 + 48 * k}" y="{_PAD * 0.6 + 2}" font-size="11" fill="{color}">{name}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def plot_html(result: runner.RunResult) -> str:
    """A self-contained HTML page: TTFT and ITL (p50, p90, p99) against achieved requests/s, and the table."""
    points = [s for s in result.points if s.ttft is not None]
    xs = [s.requests_per_s for s in points]

    def series(attr: str) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for q in ("p50", "p90", "p99"):
            out[q] = [
                getattr(getattr(s, attr), f"{q}_ms") if getattr(s, attr) is not None else math.nan
                for s in points
            ]
        return out

    rows = "".join(
        f"<tr><td>{html.escape(s.load.label)}</td><td>{s.requests_per_s:.2f}</td>"
        f"<td>{s.output_tokens_per_s:.1f}</td><td>{_quad(s.ttft)}</td><td>{_quad(s.itl)}</td>"
        f"<td>{s.errors}/{s.requests}</td></tr>"
        for s in points
    )
    status = ""
    if result.partial_reason:
        status = f"<p><b>Partial profile:</b> {html.escape(result.partial_reason)}</p>"
    elif result.stopped_reason:
        status = f"<p>Sweep stopped: {html.escape(result.stopped_reason)}</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>chipfit profile: {html.escape(result.model)}</title>"
        "<style>body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right}</style></head><body>"
        f"<h2>{html.escape(result.model)} at {html.escape(result.base_url)}</h2>"
        f"<p>{html.escape(result.api)} API, sizes: {html.escape(result.sizes.description)}, measured "
        f"{html.escape(result.started_at)}</p>{status}"
        + _panel("TTFT vs load", xs, series("ttft"), "achieved requests/s")
        + _panel("ITL vs load", xs, series("itl"), "achieved requests/s")
        + "<table><tr><th>load</th><th>req/s</th><th>out tok/s</th><th>TTFT mean/p50/p90/p99 ms</th>"
        f"<th>ITL mean/p50/p90/p99 ms</th><th>errors</th></tr>{rows}</table></body></html>"
    )
