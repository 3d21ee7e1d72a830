"""Latency at the submitted load of MLPerf Server/Interactive runs: a held-out check of latency under load.

    .venv/bin/python benchmarks/server_latency.py        # print the section (also part of accuracy.py)

Data: benchmarks/data/mlperf_server_latency.csv, the "Additional Stats" of MLPerf Inference v4.1 and v5.0
`mlperf_log_summary.txt` files (one cited repository, commit and path per row): the offered Poisson rate
and the measured mean / p50 / p99 time to first token and time per output token. Never fitted on (the
efficiency factors come from offline throughput only). MLPerf v5.1 is the project's judged set and is not
used here.

Per row the replica is the tp the model would pick for the scenario (the highest rate per accelerator
within its TTFT/TPOT limits, as benchmarks/accuracy.py scores capacity), loaded with its share of the
system's offered rate; a row whose rate is beyond the model's steady-state capacity has no steady-state
prediction and is counted as a miss ("beyond capacity"). "before" is placement/perf.py at BEFORE_COMMIT
(the branch point), "after" the current one, in the same run.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from placement import calibration, perf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "mlperf_server_latency.csv"
BEFORE_COMMIT = "0d08719"
TP_CHOICES = (1, 2, 4, 8)


def before_module() -> Any:
    """placement/perf.py as it was at BEFORE_COMMIT, importable beside the current one."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE_COMMIT}:placement/perf.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "perf_server_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("placement.perf_server_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["placement.perf_server_before"] = module
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Row:
    """One MLPerf run: what was offered and what was measured."""

    version: str
    system: str
    benchmark: str
    limits: str
    accelerator: str
    engine: str
    precision: str
    n_accel: int
    per_node: int
    scheduled_qps: float
    completed_qps: float
    measured: dict[str, float]
    ttft_limit_ms: float
    tpot_limit_ms: float


def rows() -> list[Row]:
    """The CSV rows (comment lines skipped)."""
    text = "".join(line for line in DATA.read_text().splitlines(True) if not line.startswith("#"))
    out = []
    for r in csv.DictReader(io.StringIO(text)):
        out.append(
            Row(
                version=r["mlperf_version"],
                system=r["system"],
                benchmark=r["benchmark"],
                limits=r["scenario_limits"],
                accelerator=r["accelerator"],
                engine=r["engine"],
                precision=r["precision"],
                n_accel=int(r["n_accel"]),
                per_node=int(r["accel_per_node"]),
                scheduled_qps=float(r["scheduled_qps"]),
                completed_qps=float(r["completed_qps"]),
                measured={
                    k: float(r[k])
                    for k in ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "tpot_mean_ms", "tpot_p99_ms")
                },
                ttft_limit_ms=float(r["ttft_limit_ms"]),
                tpot_limit_ms=float(r["tpot_limit_ms"]),
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class Predicted:
    """The model's capacity per accelerator and latencies at the row's rate (None: beyond capacity)."""

    tp: int
    capacity_per_accel: float
    latency: dict[str, float] | None


def predict(module: Any, row: Row) -> Predicted:
    """Best tp by rate per accelerator within the row's limits, then latencies at the offered rate."""
    workload = calibration.MLPERF_WORKLOADS[row.benchmark]
    slo = module.LatencySlo(row.ttft_limit_ms, row.tpot_limit_ms)
    best: tuple[float, int, Any] | None = None
    for tp in TP_CHOICES:
        if tp > row.per_node:
            continue
        config = module.ReplicaConfig(workload.model, row.accelerator, row.precision, tp, engine=row.engine)
        if module.infeasibility(config) is not None:
            continue
        try:
            rate = module.max_rate_under_slo(
                config, workload.prompt_tokens, workload.output_tokens, slo, itl_is_tpot=True
            )
        except module.InvalidConfigError:
            continue
        if best is None or rate.max_rps / tp > best[0]:
            best = (rate.max_rps / tp, tp, config)
    assert best is not None, row
    per_accel, tp, config = best
    sizes = module.RequestSizes(workload.prompt_tokens, workload.output_tokens)
    at = module.latency_at_rate(config, sizes, row.scheduled_qps * tp / row.n_accel)
    if at is None:
        return Predicted(tp, per_accel, None)
    latency = {
        "ttft_mean_ms": at.ttft_mean_ms,
        "ttft_p50_ms": at.ttft_p50_ms,
        "ttft_p99_ms": at.ttft_p99_ms,
        "tpot_mean_ms": at.itl_mean_ms,
        # Before this branch the model's TPOT was its mean iteration (what the TPOT limit read).
        "tpot_p99_ms": getattr(at, "tpot_p99_ms", 0.0) or at.step_ms,
    }
    return Predicted(tp, per_accel, latency)


def _median_abs(errors: list[float | None]) -> str:
    """Median |error| in %, a miss (None) counted as infinite; and how many were answered."""
    answered = [e for e in errors if e is not None]
    if not errors:
        return "-"
    values = sorted([abs(e) for e in answered] + [float("inf")] * (len(errors) - len(answered)))
    median = statistics.median(values)
    shown = "inf" if median == float("inf") else f"{median:.0f}%"
    return f"{shown} ({len(answered)}/{len(errors)})"


def section() -> list[str]:
    """The report section (markdown lines)."""
    old = before_module()
    data = rows()
    results = [(row, predict(old, row), predict(perf, row)) for row in data]
    fields = ("ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "tpot_mean_ms", "tpot_p99_ms")
    out = [
        "## Held out: latency at the submitted load of MLPerf Server / Interactive runs (v4.1, v5.0)",
        "",
        "`benchmarks/data/mlperf_server_latency.csv`: what LoadGen measured (mean / p50 / p99 TTFT and",
        "TPOT) at the offered Poisson rate, one cited `mlperf_log_summary.txt` per row; never fitted on.",
        "Each row's replica is the tp the model picks for the scenario's limits, loaded with its share of",
        "the offered rate (`latency_at_rate`); TPOT mean is the model's mean iteration, TPOT p99 its",
        "MLPerf TPOT p99 (`LoadPrediction.tpot_p99_ms`; before this branch the mean iteration stood for",
        "it). Capacity is the highest rate per accelerator within the limits (`max_rate_under_slo`,",
        "`itl_is_tpot=True`) against the completed rate. `-` / `beyond`: the offered rate is past the",
        "model's steady-state capacity (no prediction; counted as a miss in the medians).",
        "",
        "```sh",
        ".venv/bin/python benchmarks/server_latency.py   # also a section of benchmarks/accuracy.py",
        "```",
        "",
        "| run | tp | capacity/accel meas. / before / after | TTFT mean meas. / before / after (ms) "
        "| TTFT p99 meas. / before / after | TPOT mean meas. / before / after "
        "| TPOT p99 meas. / before / after |",
        "|---|---:|---|---|---|---|---|",
    ]

    def show(p: Predicted, key: str) -> str:
        return "beyond" if p.latency is None else f"{p.latency[key]:.0f}"

    for row, before, after in results:
        capacity = row.completed_qps / row.n_accel
        cells = [
            f"{row.version} {row.system} {row.benchmark} {row.limits} ({row.accelerator}, {row.engine})",
            str(after.tp),
            f"{capacity:.2f} / {before.capacity_per_accel:.2f} / {after.capacity_per_accel:.2f}",
        ]
        for key in ("ttft_mean_ms", "ttft_p99_ms", "tpot_mean_ms", "tpot_p99_ms"):
            cells.append(f"{row.measured[key]:.0f} / {show(before, key)} / {show(after, key)}")
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Median |error| (answered / rows):",
        "",
        "| quantity | before | after |",
        "|---|---|---|",
    ]

    def err(p: Predicted, row: Row, key: str) -> float | None:
        return None if p.latency is None else (p.latency[key] / row.measured[key] - 1.0) * 100.0

    for key in fields:
        before_e = [err(b, row, key) for row, b, _ in results]
        after_e = [err(a, row, key) for row, _, a in results]
        out.append(
            f"| {key.removesuffix('_ms').replace('_', ' ')} "
            f"| {_median_abs(before_e)} | {_median_abs(after_e)} |"
        )
    cap_before = [
        (b.capacity_per_accel / (row.completed_qps / row.n_accel) - 1.0) * 100.0 for row, b, _ in results
    ]
    cap_after = [
        (a.capacity_per_accel / (row.completed_qps / row.n_accel) - 1.0) * 100.0 for row, _, a in results
    ]
    out.append(f"| capacity within the limits | {_median_abs(cap_before)} | {_median_abs(cap_after)} |")
    ratio_rows = [(row, a) for row, _, a in results if a.latency is not None]
    measured_ratio = statistics.median(
        r.measured["tpot_p99_ms"] / r.measured["tpot_mean_ms"] for r, _ in ratio_rows
    )
    model_ratio = statistics.median(
        a.latency["tpot_p99_ms"] / a.latency["tpot_mean_ms"] for _, a in ratio_rows if a.latency is not None
    )
    out += [
        "",
        f"TPOT p99 / TPOT mean, median over the answered rows: measured {measured_ratio:.2f}, "
        f"model after {model_ratio:.2f} (before: 1.00 by construction).",
        "",
        "What dominates the error: an MLPerf Server run sits near its own system's capacity, so latency",
        "at the submitted rate turns any capacity error into a load error. Where the model's capacity",
        "is within ~6% (H200 v4.1, Supermicro H100, MI300X), TTFT mean is within -18%..+27% and TPOT",
        "mean within -14%..+8% (vLLM 0.4.3 on MI300X aside: its measured TTFT is 7x its TPOT, a",
        "harness-level queue); where it puts capacity 10-57% higher (Mixtral everywhere, the 4-GPU H100",
        "systems) it sees the run at 65-90% load and under-predicts both by 40-70%. Three runs are beyond",
        "the model's steady-state capacity: v5.0 software on the same chips serves far more than v4.1",
        "(Llama-2-70B Server per H100 31106 / 8 = 3888 tokens/s in v5.0 against 2700 in v4.1, +44%; H200",
        "+13%) and the efficiency families are fitted on TensorRT-LLM v0.17 / MLPerf v4.1-era rows; the",
        "RedHat L40S vLLM row is the known vLLM-on-L40S efficiency gap (its Offline row is -55% too).",
        "",
    ]
    return out


def main() -> int:
    """Print the section."""
    print("\n".join(section()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
