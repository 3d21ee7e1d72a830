"""Judge the performance model on published measurements it was never fitted to (issue #13's done-when).

    .venv/bin/python benchmarks/judge.py            # summary tables
    .venv/bin/python benchmarks/judge.py --rows     # also every row with its prediction
    .venv/bin/python benchmarks/judge.py --json     # everything as one JSON object
    .venv/bin/python benchmarks/judge.py --estimated-prompt-scale 1.25   # sensitivity, not the measurement

The data is benchmarks/judged/published.csv (MLPerf Inference v5.1 closed results and the H200 column of
TensorRT-LLM v1.0's perf-overview table; one source per row, see benchmarks/judged/README.md). It is read
here and nowhere else: no fitting or calibration code may read it (tests/unit/test_judged_isolation.py).

Every row is predicted through the project's public functions, the way `chipfit predict` and the planner
ask them: `perf.ReplicaConfig` with the row's model, chip, precision, tensor-parallel degree and engine, the
engine release's efficiency from `engine_version.efficiency` (as `candidates` does for a service that states
its engine version), and

- throughput (Offline): `perf.offline_throughput` / tp;
- capacity under a latency limit (MLPerf Server and Interactive): `perf.max_rate_under_slo` with the
  benchmark's TTFT and TPOT p99 limits, the TPOT limit read as MLPerf defines it (`itl_is_tpot=True`),
  times the output length, / tp;
- mean TTFT and mean ITL under load (rows whose MLPerf log gives them): `perf.latency_at_rate` at the
  row's measured request rate per replica (completed samples/s x tp / accelerators), with the chunked-
  prefill budget the capacity answer chose, as `chipfit predict --rps` does. MLPerf's mean "time to
  output token" is compared with the predicted mean ITL.

The done-when metrics cover the chips the issue measured (DONE_WHEN_CHIPS); MLPerf rows of chips never
calibrated (MI325X) are reported apart as `specs_only_*`, and the TensorRT-LLM H200 column as
`trtllm_h200_offline`. Each metric is shown over all rows and per workload (the median over the systems
of one chip x benchmark x scenario x request sizes); REPORT_judged.md says which view the verdict uses.

Where the submitter's tp is not published the prediction takes the best tp a submitter could pick (1, 2, 4,
8 up to the accelerators per node), like benchmarks/accuracy.py. Error = predicted / measured - 1. A load
the model says one replica cannot keep up with is an infinite error (it counts, it is not dropped).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import json
import math
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from placement import catalog, engine_version, perf

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "judged" / "published.csv"
TP_CHOICES = (1, 2, 4, 8)
MLPERF = "mlperf_inference_v5.1_closed"
TRTLLM_H200 = "trtllm_v1.0_perf_overview_h200"
# Issue #13's done-when: median / p90 |error| targets per metric, percent (None: no p90 target).
TARGETS: dict[str, tuple[float, float | None]] = {
    "throughput": (15.0, 35.0),
    "capacity": (15.0, 35.0),
    "ttft_mean": (20.0, None),
    "itl_mean": (20.0, None),
}
METRIC_TITLES = {
    "throughput": "throughput (MLPerf v5.1 Offline, tokens/s per accelerator)",
    "capacity": "capacity under a latency limit (MLPerf v5.1 Server + Interactive, tokens/s per accelerator)",
    "ttft_mean": "mean TTFT at the measured request rate (MLPerf v5.1 Server + Interactive logs)",
    "itl_mean": "mean ITL at the measured request rate (MLPerf v5.1 logs: mean time per output token)",
    "all_mlperf": "all MLPerf v5.1 rows, Offline + Server + Interactive (the issue's definition)",
    "trtllm_h200_offline": "TensorRT-LLM v1.0 perf-overview, H200 column (offline, tokens/s per GPU)",
    "specs_only_tokens": "MLPerf v5.1 on chips never calibrated (from specs): all scenarios, tokens/s",
    "specs_only_ttft_mean": "mean TTFT at the measured rate, chips never calibrated",
    "specs_only_itl_mean": "mean ITL at the measured rate, chips never calibrated",
}
# The chips issue #13's measurement covers; MLPerf rows of other chips (never calibrated) are reported apart.
DONE_WHEN_CHIPS = frozenset({"h100", "h200", "l40s", "mi300x"})


@dataclasses.dataclass(frozen=True)
class Row:
    """One published measurement and what the model needs to predict it."""

    row_id: str
    source: str
    system: str
    chip: str
    n_accel: int
    accel_per_node: int
    model: str
    benchmark: str
    precision: str
    engine: str
    engine_version: str | None
    scenario: str
    tp: int | None
    prompt_tokens: float
    output_tokens: float
    ttft_limit_ms: float | None
    tpot_limit_ms: float | None
    tokens_per_s_per_accel: float
    rate_rps_system: float | None
    ttft_mean_ms: float | None
    tpot_mean_ms: float | None

    @property
    def tp_choices(self) -> tuple[int, ...]:
        """The published tp, else every tp a submitter could have picked on one node."""
        if self.tp is not None:
            return (self.tp,)
        return tuple(t for t in TP_CHOICES if t <= min(self.accel_per_node, self.n_accel))


@dataclasses.dataclass(frozen=True)
class Judged:
    """A row's predictions (None: not applicable to the row; math.inf in `predicted`: cannot serve it)."""

    row: Row
    metric: str
    measured: float
    predicted: float
    tp: int | None
    note: str = ""

    @property
    def error_pct(self) -> float:
        """Signed percentage error (inf when the model predicts nothing or cannot keep up)."""
        if not math.isfinite(self.predicted) or self.predicted <= 0:
            return math.inf
        return (self.predicted / self.measured - 1.0) * 100.0


def _num(text: str) -> float | None:
    return float(text) if text.strip() else None


def load(path: pathlib.Path = DATA, estimated_prompt_scale: float = 1.0) -> list[Row]:
    """The judged rows (every row has a source; see the README beside the CSV).

    `estimated_prompt_scale` multiplies the prompt sizes that are estimates (`prompt_source` says so), for
    the sensitivity runs in REPORT_judged.md; the measurement itself uses 1.
    """
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for r in csv.DictReader(handle):
            if not (r["repo"] and r["path"] and r["commit"]):
                raise ValueError(f"{path}: row {r['row_id']} has no source (repo, path, commit)")
            tp = _num(r["tp"])
            rows.append(
                Row(
                    row_id=r["row_id"],
                    source=r["source"],
                    system=r["system"],
                    chip=r["chip"],
                    n_accel=int(r["n_accel"]),
                    accel_per_node=int(r["accel_per_node"]),
                    model=r["model"],
                    benchmark=r["benchmark"],
                    precision=r["precision"],
                    engine=r["engine"],
                    engine_version=r["engine_version"] or None,
                    scenario=r["scenario"],
                    tp=None if tp is None else int(tp),
                    prompt_tokens=float(r["prompt_tokens"])
                    * (estimated_prompt_scale if r["prompt_source"].startswith("estimate") else 1.0),
                    output_tokens=float(r["output_tokens"]),
                    ttft_limit_ms=_num(r["ttft_p99_limit_ms"]),
                    tpot_limit_ms=_num(r["tpot_p99_limit_ms"]),
                    tokens_per_s_per_accel=float(r["tokens_per_s_per_accel"]),
                    rate_rps_system=_num(r["rate_rps_system"]),
                    ttft_mean_ms=_num(r["ttft_mean_ms"]),
                    tpot_mean_ms=_num(r["tpot_mean_ms"]),
                )
            )
    return rows


def _config(row: Row, tp: int) -> perf.ReplicaConfig:
    return perf.ReplicaConfig(row.model, row.chip, row.precision, tp, engine=row.engine)


def _efficiency(row: Row) -> engine_version.VersionedEfficiency:
    """The efficiency the planner uses for this engine release on this chip (the default when unknown)."""
    return engine_version.efficiency(catalog.get_accelerator(row.chip), row.engine, row.engine_version)


def _feasible(row: Row) -> list[int]:
    return [tp for tp in row.tp_choices if perf.infeasibility(_config(row, tp)) is None]


def judge_offline(row: Row) -> Judged:
    """Offline throughput per accelerator at the best feasible tp."""
    eff = _efficiency(row).efficiency
    best, best_tp = 0.0, None
    for tp in _feasible(row):
        try:
            answer = perf.offline_throughput(
                _config(row, tp), row.prompt_tokens, row.output_tokens, efficiency=eff
            )
            value = answer.output_tokens_per_s / tp
        except perf.InvalidConfigError:
            continue
        if value > best:
            best, best_tp = value, tp
    metric = "throughput" if row.source == MLPERF else "trtllm_h200_offline"
    return Judged(row, metric, row.tokens_per_s_per_accel, best if best_tp else math.inf, best_tp)


def judge_loaded(row: Row) -> list[Judged]:
    """Capacity under the row's latency limits; where its log gives them, mean TTFT and ITL at its rate."""
    assert row.ttft_limit_ms is not None and row.tpot_limit_ms is not None
    eff = _efficiency(row).efficiency
    slo = perf.LatencySlo(row.ttft_limit_ms, row.tpot_limit_ms)
    best: tuple[float, int, perf.RatePrediction] | None = None
    for tp in _feasible(row):
        answer = perf.max_rate_under_slo(
            _config(row, tp), row.prompt_tokens, row.output_tokens, slo, itl_is_tpot=True, efficiency=eff
        )
        per_accel = answer.output_tokens_per_s / tp
        if answer.max_rps > 0 and (best is None or per_accel > best[0]):
            best = (per_accel, tp, answer)
    out = [
        Judged(
            row,
            "capacity",
            row.tokens_per_s_per_accel,
            best[0] if best else math.inf,
            best[1] if best else None,
            "" if best else "no tp meets the latency limits",
        )
    ]
    if row.rate_rps_system is None or row.ttft_mean_ms is None or row.tpot_mean_ms is None:
        return out
    if best is None:
        out += [Judged(row, m, v, math.inf, None, "no configuration")
                for m, v in (("ttft_mean", row.ttft_mean_ms), ("itl_mean", row.tpot_mean_ms))]  # fmt: skip
        return out
    _, tp, answer = best
    rate = row.rate_rps_system * tp / row.n_accel
    load = perf.latency_at_rate(
        _config(row, tp),
        perf.RequestSizes(row.prompt_tokens, row.output_tokens),
        rate,
        efficiency=eff,
        prefill_chunk_tokens=answer.prefill_chunk_tokens,
    )
    note = f"{rate:.2f} req/s per tp{tp} replica"
    ttft = math.inf if load is None else load.ttft_mean_ms
    itl = math.inf if load is None else load.itl_mean_ms
    if load is None:
        note += ": the model says one replica cannot keep up"
    out.append(Judged(row, "ttft_mean", row.ttft_mean_ms, ttft, tp, note))
    out.append(Judged(row, "itl_mean", row.tpot_mean_ms, itl, tp, note))
    return out


def judge(rows: Iterable[Row]) -> list[Judged]:
    """Every prediction for every row."""
    out: list[Judged] = []
    for row in rows:
        if row.scenario == "offline":
            out.append(judge_offline(row))
        else:
            out.extend(judge_loaded(row))
    return out


def stats(items: Sequence[Judged]) -> dict[str, Any]:
    """n, median and p90 |error| and median signed error, percent (inf when a prediction is missing)."""
    if not items:
        return {"n": 0, "median_abs_pct": None, "p90_abs_pct": None, "median_signed_pct": None}
    errors = np.array([j.error_pct for j in items])
    with np.errstate(invalid="ignore"):
        # Interpolating between two infinite errors gives NaN: it is infinite.
        values = (np.median(np.abs(errors)), np.percentile(np.abs(errors), 90), np.median(errors))
    median_abs, p90_abs, signed = (math.inf if math.isnan(v) else float(v) for v in values)
    return {
        "n": len(items),
        "median_abs_pct": median_abs,
        "p90_abs_pct": p90_abs,
        "median_signed_pct": signed,
    }


def verdict(metric: str, s: dict[str, Any]) -> str:
    """'meets' / 'misses' against the done-when targets ('-' for a metric without one)."""
    target = TARGETS.get(metric)
    if target is None or not s["n"]:
        return "-"
    median_ok = s["median_abs_pct"] <= target[0]
    p90_ok = target[1] is None or s["p90_abs_pct"] <= target[1]
    return "meets" if median_ok and p90_ok else "misses"


def _grouped(items: Sequence[Judged], key: Callable[[Judged], str]) -> dict[str, list[Judged]]:
    groups: dict[str, list[Judged]] = collections.defaultdict(list)
    for j in items:
        groups[key(j)].append(j)
    return dict(sorted(groups.items()))


def by_metric(judged: Sequence[Judged]) -> dict[str, list[Judged]]:
    """Predictions per reported metric (all_mlperf = every MLPerf throughput-type row, the issue's view)."""
    judged_chips = [j for j in judged if j.row.chip in DONE_WHEN_CHIPS or j.row.source != MLPERF]
    specs_only = [j for j in judged if j.row.chip not in DONE_WHEN_CHIPS and j.row.source == MLPERF]
    out = _grouped(judged_chips, lambda j: j.metric)
    out["all_mlperf"] = [j for j in judged_chips if j.metric in ("throughput", "capacity")]
    out["specs_only_tokens"] = [j for j in specs_only if j.metric in ("throughput", "capacity")]
    out["specs_only_ttft_mean"] = [j for j in specs_only if j.metric == "ttft_mean"]
    out["specs_only_itl_mean"] = [j for j in specs_only if j.metric == "itl_mean"]
    return {m: out.get(m, []) for m in METRIC_TITLES}


def _workload(j: Judged) -> str:
    r = j.row
    return f"{r.chip}|{r.benchmark}|{r.scenario}|{r.prompt_tokens:g}|{r.output_tokens:g}"


def per_group_medians(items: Sequence[Judged]) -> list[Judged]:
    """One point per workload (chip, benchmark, scenario, request sizes): the median measured and median
    predicted over its systems (ten submitters of one chip and benchmark would otherwise weigh it tenfold)."""
    points = []
    for _, group in _grouped(items, _workload).items():
        predicted = [j.predicted for j in group]
        points.append(
            Judged(
                group[0].row,
                group[0].metric,
                float(np.median([j.measured for j in group])),
                float(np.median(predicted)) if all(math.isfinite(p) for p in predicted) else math.inf,
                None,
                f"{len(group)} systems",
            )
        )
    return points


def summary(judged: Sequence[Judged]) -> dict[str, Any]:
    """Per metric: all rows, per chip, engine and scenario, and per workload (chip x benchmark x scenario)."""
    out: dict[str, Any] = {}
    for metric, items in by_metric(judged).items():
        overall = stats(items)
        workload = stats(per_group_medians(items))
        out[metric] = {
            "title": METRIC_TITLES[metric],
            "overall": {**overall, "verdict": verdict(metric, overall)},
            "per_chip": {k: stats(v) for k, v in _grouped(items, lambda j: j.row.chip).items()},
            "per_engine": {k: stats(v) for k, v in _grouped(items, lambda j: j.row.engine).items()},
            "per_scenario": {k: stats(v) for k, v in _grouped(items, lambda j: j.row.scenario).items()},
            "per_workload": {**workload, "verdict": verdict(metric, workload)},
        }
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.1f}%"


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:+.1f}%"


def render(result: dict[str, Any], judged: Sequence[Judged], with_rows: bool) -> str:
    """Markdown tables of the summary (and optionally every row)."""
    lines = [
        "| metric | group | n | median abs err | p90 abs err | median signed err | done-when |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for metric, block in result.items():
        o = block["overall"]
        lines.append(
            f"| {metric} | **all rows** | {o['n']} | {_fmt(o['median_abs_pct'])} | "
            f"{_fmt(o['p90_abs_pct'])} | {_signed(o['median_signed_pct'])} | {o['verdict']} |"
        )
        for view in ("per_chip", "per_engine", "per_scenario"):
            for name, s in block[view].items():
                lines.append(
                    f"| {metric} | {view.removeprefix('per_')} {name} | {s['n']} | "
                    f"{_fmt(s['median_abs_pct'])} | {_fmt(s['p90_abs_pct'])} | "
                    f"{_signed(s['median_signed_pct'])} | |"
                )
        g = block["per_workload"]
        lines.append(
            f"| {metric} | **per workload** (median over the systems of each workload) | {g['n']} | "
            f"{_fmt(g['median_abs_pct'])} | {_fmt(g['p90_abs_pct'])} | {_signed(g['median_signed_pct'])} | "
            f"{g['verdict']} |"
        )
    if with_rows:
        lines += [
            "",
            "| row | system | chip | benchmark | scenario | metric | tp | measured | predicted | error "
            "| note |",
            "|---|---|---|---|---|---|---:|---:|---:|---:|---|",
        ]
        for j in judged:
            r = j.row
            lines.append(
                f"| {r.row_id} | {r.system} | {r.chip} | {r.benchmark} | {r.scenario} | {j.metric} | "
                f"{j.tp or '-'} | {j.measured:.1f} | {j.predicted:.1f} | {_signed(j.error_pct)} | {j.note} |"
            )
    return "\n".join(lines)


def _jsonable(value: float) -> float | str:
    return "inf" if math.isinf(value) else value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (summary and every row)")
    parser.add_argument("--rows", action="store_true", help="also print every row's prediction")
    parser.add_argument("--data", type=pathlib.Path, default=DATA, help="judged CSV (default: %(default)s)")
    parser.add_argument(
        "--estimated-prompt-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="sensitivity run: multiply the prompt sizes that are estimates by F (not the measurement)",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.estimated_prompt_scale) and args.estimated_prompt_scale > 0):
        parser.error(f"--estimated-prompt-scale: must be > 0, got {args.estimated_prompt_scale}")
    judged = judge(load(args.data, args.estimated_prompt_scale))
    result = summary(judged)
    try:
        _print(args, result, judged)
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: nothing left to say.
        sys.stderr.close()
    return 0


def _print(args: argparse.Namespace, result: dict[str, Any], judged: Sequence[Judged]) -> None:
    if args.json:
        rows = [
            {
                "row_id": j.row.row_id,
                "system": j.row.system,
                "chip": j.row.chip,
                "benchmark": j.row.benchmark,
                "scenario": j.row.scenario,
                "metric": j.metric,
                "tp": j.tp,
                "measured": j.measured,
                "predicted": _jsonable(j.predicted),
                "error_pct": _jsonable(j.error_pct),
                "note": j.note,
            }
            for j in judged
        ]
        text = json.dumps({"summary": result, "rows": rows}, indent=2, default=_jsonable)
        print(text.replace("Infinity", '"inf"'))
    else:
        print(render(result, judged, args.rows))


if __name__ == "__main__":
    sys.exit(main())
