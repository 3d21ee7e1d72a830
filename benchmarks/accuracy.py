"""Accuracy of placement.perf against published measurements; prints or --write-s REPORT_accuracy.md.

    .venv/bin/python benchmarks/accuracy.py           # print the report
    .venv/bin/python benchmarks/accuracy.py --write   # also write benchmarks/REPORT_accuracy.md

Datasets (placement/data, copied from ../shared/data/calibration unless noted):
- TensorRT-LLM v0.17 / v1.0 offline grid on H100 (FP8) and A100 (FP16): output tokens/s of one replica.
- MLPerf Inference v4.1 closed division, Offline (and Server) rows on H100-SXM, H200-SXM, MI300X, L40S:
  tokens/s per accelerator (n_accel = per node x nodes); NVIDIA rows declared fp16 ran FP8.
- Held out (never fitted on): the H200 and L40S columns of the same TensorRT-LLM v0.17 table.
Targets (issue 3): median |error| <= 15%, p90 <= 35%, right chip order for >= 95% of pairs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import pathlib
import sys
from collections.abc import Callable, Sequence

import numpy as np

from placement import calibration, perf, perf_efficiency

ROOT = pathlib.Path(__file__).resolve().parent.parent
REPORT = ROOT / "benchmarks" / "REPORT_accuracy.md"
MEDIAN_TARGET_PCT = 15.0
P90_TARGET_PCT = 35.0
ORDER_TARGET_PCT = 95.0
# Two chips whose measured throughputs differ by less than this are a tie: no order to get right.
TIE_TOLERANCE = 0.03

Point = calibration.CalibrationPoint


@dataclasses.dataclass(frozen=True)
class Scored:
    """A point with its prediction."""

    point: Point
    predicted: float

    @property
    def error_pct(self) -> float:
        """Signed percentage error of the prediction."""
        return (self.predicted / self.point.measured_tokens_per_s_per_device - 1.0) * 100.0


def score(
    points: Sequence[Point], efficiency_for: Callable[[Point], perf_efficiency.Efficiency | None]
) -> list[Scored]:
    """Predict every point (with the given efficiency override per point, None = calibrated constants)."""
    return [Scored(p, calibration.predict(p, efficiency_for(p))) for p in points]


def stats(rows: Sequence[Scored]) -> tuple[int, float, float, float]:
    """(n, median |err| %, p90 |err| %, median signed err %)."""
    if not rows:
        return 0, float("nan"), float("nan"), float("nan")
    errors = np.array([r.error_pct for r in rows])
    return (
        len(rows),
        float(np.median(np.abs(errors))),
        float(np.percentile(np.abs(errors), 90)),
        float(np.median(errors)),
    )


def verdict(median: float, p90: float) -> str:
    """Whether a group meets both error targets."""
    return "meets" if median <= MEDIAN_TARGET_PCT and p90 <= P90_TARGET_PCT else "misses"


def table(groups: dict[str, list[Scored]]) -> list[str]:
    """Markdown table of error statistics per group."""
    lines = [
        "| group | n | median abs err | p90 abs err | median signed err | targets |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, rows in groups.items():
        n, med, p90, signed = stats(rows)
        lines.append(f"| {name} | {n} | {med:.1f}% | {p90:.1f}% | {signed:+.1f}% | {verdict(med, p90)} |")
    return lines


def order_pairs(rows: Sequence[Scored]) -> tuple[int, int, list[str]]:
    """Chip pairs measured on the same workload: (pairs, rightly ordered, wrong ones described).

    MLPerf has many systems per chip: their median per (chip, benchmark, scenario) is compared.
    """
    cases: dict[tuple[object, ...], dict[str, list[Scored]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for r in rows:
        p = r.point
        source = p.dataset.split()[0]
        tp = p.tp_choices if source.startswith("trtllm") else ()
        key = (source, p.model.id, tp, p.prompt_tokens, p.output_tokens, p.scenario)
        cases[key][p.accelerator].append(r)
    total = right = 0
    wrong = []
    for key, by_chip in cases.items():
        medians = {
            chip: (
                float(np.median([r.point.measured_tokens_per_s_per_device for r in rs])),
                float(np.median([r.predicted for r in rs])),
            )
            for chip, rs in by_chip.items()
        }
        for a, b in itertools.combinations(sorted(medians), 2):
            (ma, pa), (mb, pb) = medians[a], medians[b]
            if abs(ma / mb - 1.0) < TIE_TOLERANCE:
                continue
            total += 1
            if (ma > mb) == (pa > pb):
                right += 1
            else:
                wrong.append(f"{key[1]} {key[3]:.0f}/{key[4]:.0f} {key[5]} ({key[0]}): {a} vs {b} measured "
                             f"{ma:.0f} vs {mb:.0f}, predicted {pa:.0f} vs {pb:.0f}")  # fmt: skip
    return total, right, wrong


def group_by(rows: Sequence[Scored], key: Callable[[Scored], str]) -> dict[str, list[Scored]]:
    """Rows grouped by a label, in sorted label order."""
    groups: dict[str, list[Scored]] = collections.defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return dict(sorted(groups.items()))


def dataset_of(r: Scored) -> str:
    """Short dataset label."""
    return r.point.dataset.split()[0].replace("_perf_overview", "").replace("_perf", "")


def _outliers(rows: Sequence[Scored]) -> list[str]:
    """One line per distinct badly predicted case: what, measured, predicted, error."""
    seen: set[tuple[str, float]] = set()
    lines = []
    for r in sorted(rows, key=lambda r: -abs(r.error_pct)):
        key = (r.point.label, round(r.predicted))
        if abs(r.error_pct) <= P90_TARGET_PCT or key in seen:
            continue
        seen.add(key)
        lines.append(
            f"- {r.point.label} ({r.point.dataset}): measured "
            f"{r.point.measured_tokens_per_s_per_device:.0f}, predicted {r.predicted:.0f} "
            f"({r.error_pct:+.0f}%)"
        )
    return lines


def _mixtral_mlperf(r: Scored) -> bool:
    """An MLPerf Mixtral row (request sizes estimated, not derived)."""
    return r.point.model.id == "mixtral-8x7b" and r.point.dataset.startswith("mlperf")


def server_chunk_choices(points: Sequence[Point]) -> tuple[int, int]:
    """(configurations whose chosen chunked-prefill budget differs from the engine default, all of them)."""
    changed = total = 0
    for point in points:
        for tp in point.tp_choices:
            config = perf.ReplicaConfig(
                point.model, point.accelerator, point.precision, tp, engine=point.engine
            )
            if perf.infeasibility(config) is not None:
                continue
            slo = perf.LatencySlo(point.ttft_p99_ms, point.itl_p99_ms)
            sizes = (point.prompt_tokens, point.output_tokens)
            chosen = perf.max_rate_under_slo(config, *sizes, slo, itl_is_tpot=True)
            default = perf.max_rate_under_slo(
                config, *sizes, slo, itl_is_tpot=True, choose_prefill_chunk=False
            )
            total += 1
            changed += chosen.prefill_chunk_tokens != default.prefill_chunk_tokens
    return changed, total


def cross_validation() -> list[str]:
    """Leave-one-group-out refits of the NVIDIA TensorRT-LLM factors: each group predicted without itself."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import calibrate  # the fitting sets live next to this script

    points = calibrate.fit_sets()["NVIDIA_TRTLLM"]
    groups: dict[str, Callable[[Point], bool]] = {
        "chip a100-80gb": lambda p: p.accelerator == "a100-80gb",
        "chip h100": lambda p: p.accelerator == "h100",
        "chip h200 (MLPerf)": lambda p: p.accelerator == "h200",
        "chip l40s (MLPerf)": lambda p: p.accelerator == "l40s",
        "model llama-3.1-8b": lambda p: p.model.id == "llama-3.1-8b",
        "model llama-3.1-70b": lambda p: p.model.id == "llama-3.1-70b",
        "model llama-3.1-405b": lambda p: p.model.id == "llama-3.1-405b",
        "model mixtral-8x7b": lambda p: p.model.id == "mixtral-8x7b",
        "model mixtral-8x22b": lambda p: p.model.id == "mixtral-8x22b",
        "model mistral-7b": lambda p: p.model.id == "mistral-7b",
        "MLPerf llama-2-70b + gpt-j": lambda p: p.dataset.startswith("mlperf"),
    }
    lines = [
        "| left out | n | median abs err | p90 abs err | median signed err | targets |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, held in groups.items():
        train = [p for p in points if not held(p)]
        test = [p for p in points if held(p)]
        fitted = calibration.fit_efficiency(train, perf_efficiency.NVIDIA_TRTLLM_PRIOR).efficiency
        n, med, p90, signed = stats(score(test, lambda _p, eff=fitted: eff))
        lines.append(f"| {name} | {n} | {med:.1f}% | {p90:.1f}% | {signed:+.1f}% | {verdict(med, p90)} |")
    return lines


# Chips each fitted family was calibrated on: leaving one out entirely (every dataset, every engine row of
# it) and refitting predicts it from its specs with its vendor's family, as a chip outside the catalog is.
SPECS_ONLY_CHIPS = ("a100-80gb", "h100", "h200", "l40s")


def predicted_from_specs() -> list[str]:
    """Leave-one-chip-out: refit without the chip's rows, predict its offline, held-out and Server rows."""
    train_all = calibration.fit_sets()["NVIDIA_TRTLLM"]
    offline = calibration.trtllm_points() + calibration.mlperf_points(("Offline",))
    heldout = calibration.trtllm_points(calibration.HELDOUT_CSV)
    server = [p for p in calibration.mlperf_points(("Server",)) if p.beam_width == 1]
    lines = [
        "| chip left out | engine | what | n | median abs err | p90 abs err | median signed err | targets |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]

    def row(chip: str, engine: str, what: str, rows: list[Scored]) -> None:
        if rows:
            n, med, p90, signed = stats(rows)
            lines.append(
                f"| {chip} | {engine} | {what} | {n} | {med:.1f}% | {p90:.1f}% | {signed:+.1f}% | "
                f"{verdict(med, p90)} |"
            )

    for chip in SPECS_ONLY_CHIPS:
        train = [p for p in train_all if p.accelerator != chip]
        fitted = calibration.fit_efficiency(train, perf_efficiency.NVIDIA_TRTLLM_PRIOR).efficiency
        for engine in ("trtllm", "vllm"):
            # vLLM on NVIDIA is the TensorRT-LLM family scaled by its published ratio (perf_efficiency).
            eff = fitted if engine == "trtllm" else _scaled_like_vllm(fitted)
            test = [p for p in offline + heldout if p.accelerator == chip and p.engine == engine]
            row(chip, engine, "offline throughput", score(test, lambda _p, e=eff: e))
            cap = [p for p in server if p.accelerator == chip and p.engine == engine]
            row(
                chip,
                engine,
                "capacity under TTFT/TPOT limits (MLPerf Server)",
                score(cap, lambda _p, e=eff: e),
            )
    # AMD's family has one chip: without it there is no AMD fit at all, only the prior.
    amd_prior = perf_efficiency.AMD_VLLM_PRIOR
    row("mi300x", "vllm", "offline throughput (AMD prior, no AMD fit)",
        score([p for p in offline if p.accelerator == "mi300x"], lambda _p: amd_prior))  # fmt: skip
    row("mi300x", "vllm", "capacity under TTFT/TPOT limits (AMD prior)",
        score([p for p in server if p.accelerator == "mi300x"], lambda _p: amd_prior))  # fmt: skip
    return lines


def _scaled_like_vllm(base: perf_efficiency.Efficiency) -> perf_efficiency.Efficiency:
    """`base` (a TensorRT-LLM fit) turned into vLLM's efficiency the way perf_efficiency derives it."""
    return perf_efficiency._scaled(
        base,
        perf_efficiency.VLLM_VS_TRTLLM_EFFICIENCY,
        perf_efficiency.VLLM_VS_TRTLLM_OVERHEAD,
        "derived: TensorRT-LLM x vLLM ratio",
    )


def engine_version_table() -> list[str]:
    """TensorRT-LLM v1.0 rows predicted with the reference (v0.17) efficiency and with v1.0's ratios."""
    from placement import catalog, engine_version

    v1 = [p for p in calibration.trtllm_points() if p.dataset.startswith("trtllm_v1.0")]
    plain = score(v1, lambda _p: None)
    versioned = score(
        v1,
        lambda p: (
            engine_version.efficiency(catalog.get_accelerator(p.accelerator), p.engine, "1.0").efficiency
        ),
    )
    return table({"h100 / trtllm v1.0 rows, reference (v0.17) efficiency": plain,
                  "h100 / trtllm v1.0 rows, v1.0 ratios applied": versioned})  # fmt: skip


def build_report(with_cv: bool) -> str:
    """The whole markdown report."""
    fit_set = score(calibration.trtllm_points() + calibration.mlperf_points(("Offline",)), lambda _p: None)
    heldout = score(calibration.trtllm_points(calibration.HELDOUT_CSV), lambda _p: None)
    server = score([p for p in calibration.mlperf_points(("Server",)) if p.beam_width == 1], lambda _p: None)
    shared_groups = group_by(fit_set, lambda r: f"{r.point.accelerator} / {dataset_of(r)}")
    shared_groups = {"**all rows of ../shared/data/calibration (Offline)**": fit_set, **shared_groups}
    chip_groups = group_by(fit_set, lambda r: r.point.accelerator)
    pairs, right, wrong = order_pairs(fit_set)
    all_pairs, all_right, all_wrong = order_pairs(fit_set + heldout)
    out = [
        "# Performance model accuracy",
        "",
        "Generated by `.venv/bin/python benchmarks/accuracy.py --write` from the calibrated constants",
        "in `placement/perf_efficiency.py` (fitted by `benchmarks/calibrate.py`). Error = predicted /",
        "measured - 1 on output tokens/s per device. Targets: median |err| <= 15%, p90 <= 35%, chip order",
        "right for >= 95% of pairs.",
        "",
        "## Offline throughput on ../shared/data/calibration",
        "",
        "TensorRT-LLM grid: one replica at the published tp. MLPerf closed Offline: per accelerator, the",
        "model takes the best tp a submitter could pick on its node (1, 2, 4, 8 up to devices per node);",
        "`n_accel` = per node x nodes; NVIDIA v4.1 rows declared fp16 ran FP8 (`precision_hint`).",
        "",
        *table(shared_groups),
        "",
        "Per chip:",
        "",
        *table(chip_groups),
        "",
        "Per chip without the MLPerf Mixtral rows, whose request sizes are estimates (see Known gaps):",
        "",
        *table(group_by([r for r in fit_set if not _mixtral_mlperf(r)], lambda r: r.point.accelerator)),
        "",
        f"Chip order (same model, request size and tp; MLPerf: median per chip): **{right}/{pairs} pairs "
        f"right ({100.0 * right / max(pairs, 1):.1f}%)**, target >= {ORDER_TARGET_PCT:.0f}%.",
        "",
        *[f"- wrong: {w}" for w in wrong],
        "",
        f"Rows of the fit set off by more than {P90_TARGET_PCT:.0f}% (deduplicated by prediction):",
        "",
        *_outliers(fit_set),
        "",
        "## Held out: TensorRT-LLM v0.17 H200 and L40S columns (never fitted on)",
        "",
        "Same table as the H100/A100 grid (NVIDIA/TensorRT-LLM perf-overview.md @258c7540), the columns the",
        "shared CSV leaves out; `placement/data/heldout_trtllm_v0.17_h200_l40s.csv` (H100/A100 cells of the",
        "transcription were checked to match the shared CSV exactly).",
        "",
        *table({"all held-out rows": heldout, **group_by(heldout, lambda r: r.point.accelerator)}),
        "",
        f"Chip order over fit and held-out rows together: **{all_right}/{all_pairs} pairs right "
        f"({100.0 * all_right / max(all_pairs, 1):.1f}%)**.",
        "",
        *[f"- wrong: {w}" for w in all_wrong if w not in wrong],
        "",
    ]
    out += [
        "## Engine releases: TensorRT-LLM v1.0 vs v0.17",
        "",
        "`placement/engine_version.py` applies v1.0's measured ratios to the reference (v0.17) family:",
        "decode-heavy x"
        f"{calibration.engine_version_ratios()[('trtllm', '1.0')].bandwidth_ratio:.3f}, prefill-heavy x"
        f"{calibration.engine_version_ratios()[('trtllm', '1.0')].compute_ratio:.3f}, from the two releases'",
        "measured numbers on their shared cells only (no prediction involved). The v1.0 rows below are the",
        "rows those ratios come from: in-sample for the ratios, shown for the direction of the effect.",
        "",
        *engine_version_table(),
        "",
    ]
    if with_cv:
        out += [
            "## Predicted from specs only: leave one chip out of the calibration entirely",
            "",
            "Each chip's rows (every dataset and engine) are removed, the NVIDIA factors refitted on the",
            "other chips, and the chip predicted from its datasheet figures alone, as any chip outside the",
            "catalog is (`uncalibrated: predicted from specs`). Offline throughput includes the held-out",
            "TensorRT-LLM columns; capacity under latency limits is MLPerf Server's highest rate within TTFT",
            "p99 2 s and TPOT p99 200 ms. vLLM rows use the family scaled by the published",
            "vLLM/TensorRT-LLM ratio. AMD's family has one chip, so MI300X without itself is the AMD prior.",
            "",
            *predicted_from_specs(),
            "",
            "## Leave-one-group-out cross-validation (NVIDIA + TensorRT-LLM factors)",
            "",
            "Each row refits the seven NVIDIA/TensorRT-LLM factors without the group and predicts the group:",
            "how the model does on a chip or model it has never been calibrated on.",
            "",
            *cross_validation(),
            "",
        ]
    chunk_changed, chunk_total = server_chunk_choices([r.point for r in server])
    out += [
        "## MLPerf Server: highest rate under TTFT p99 2 s / TPOT p99 200 ms (max_rate_under_slo)",
        "",
        "Not fitted on. The TPOT limit is read as MLPerf defines it (p99 over requests of each request's",
        "mean inter-token time, `itl_is_tpot=True`); GPT-J (beam search, which the serving model does not",
        "represent) is left out. The model chooses the chunked-prefill budget (a smaller one only lowers",
        "the ITL tail and, a little, the prompt-load part of TPOT p99): it leaves the engine default in "
        f"{chunk_changed} of the {chunk_total}",
        "(row, tp) configurations.",
        "",
        *table(
            {
                "all Server rows": server,
                **group_by(server, lambda r: f"{r.point.accelerator} / {r.point.model.id}"),
            }
        ),
        "",
        *latency_under_load_section(),
        *server_latency_section(),
        "## Known gaps",
        "",
        "- MLPerf request sizes (audited in `benchmarks/REQUEST_SIZES.md`): Llama-2-70B output 291 tokens",
        "  (v4.1 Server logs; the reference run's 294.45 agrees), Mixtral output 145.9 (reference run),",
        "  GPT-J output 69; Llama-2-70B and Mixtral input means (294 / 300) are estimates and GPT-J's 781",
        "  is in PTB words, not BPE tokens. Mixtral MLPerf rows are reported but not fitted on.",
        "- Latency under load (TTFT/ITL means and percentiles) has no published measurement in the",
        "  project's calibration set: TensorRT-LLM's online-serving tables and MLPerf v5.1 are held out",
        "  for judging and never added. It is checked against the real vLLM engine (section above) and",
        "  through capacity under latency limits (MLPerf Server, above and per chip in the specs-only",
        "  section); the serving path's fixed cost (perf.SERVING_PATH_FIXED_S) is measured on the real",
        "  vLLM engine (`benchmarks/serving_path.py` -> `benchmarks/results/serving_path_vllm_cpu.json`).",
        "- NeuralMagic's closed L40S vLLM row (118 tokens/s per GPU on Llama-2-70B, the MLPerf reference",
        "  harness) and RedHat's L40S row run far below what the engine reaches elsewhere; they are kept.",
        "- Power-capped `_MaxQ` systems and the 1000 W H200 `-CTS` variant are left out: the model uses",
        "  datasheet peaks at the standard power limit.",
        "- Server predictions sit close to Offline ones: with ~1000 batch slots the admission queue",
        "  (Erlang C) only binds above ~99% utilization, while MLPerf Server runs land ~5-15% below",
        "  Offline (output-length variance and KV reserved for the maximum output are not modelled).",
        "",
    ]
    return "\n".join(out)


LOAD_CHECK = ROOT / "benchmarks" / "results" / "load_model_check.md"


def server_latency_section() -> list[str]:
    """Latency at the submitted load of MLPerf Server/Interactive runs (benchmarks/server_latency.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import server_latency

    lines: list[str] = server_latency.section()
    return lines


def latency_under_load_section() -> list[str]:
    """TTFT/ITL under load against the real vLLM engine (benchmarks/load_model_check.py's tables)."""
    tables = LOAD_CHECK.read_text(encoding="utf-8").rstrip("\n").splitlines() if LOAD_CHECK.exists() else []
    return [
        "## Latency under load on the real engine (TTFT/ITL mean, p50, p99)",
        "",
        "The project's vLLM CPU engine (0.32.0, tiny local Llama, `tests/engine/harness.py`), twice: with",
        "its own defaults (max_num_seqs 128, 2048 batched tokens on CPU) and with `--max-num-seqs 4`, an",
        "admission limit the sweep crosses. Per engine, three repeats of a closed-loop concurrency sweep",
        "(1-16 users) and of Poisson rates at 0.2-1.3x the capacity that sweep measured, 256/64 tokens,",
        "10 s measured after 2 s warm-up per point, client (httpx streaming) and the engine's own",
        "histograms (TTFT from the tokenized hand-off, queue time, ITL) per point:",
        "",
        "```sh",
        ".venv/bin/python benchmarks/load_latency.py --runs 3 --write   # ~20 min: starts/stops its engines",
        ".venv/bin/python benchmarks/load_model_check.py > benchmarks/results/load_model_check.md",
        "```",
        "",
        "The CPU chip is the host as `chipfit profile` declares it (nominal core peak, copy bandwidth),",
        "its efficiency fitted by `placement/profile_fit.py` on ONE sweep (default engine, repeat 0) per",
        "clock: the client's (the fitted per-request overhead, 65-85 ms, is the API front end on this",
        "machine) and the engine's. Everything else is held out: the other repeats, every Poisson point",
        'and the whole max-num-seqs-4 engine. "before" is the model at 2aec971 (its own fit; every point',
        'predicted by latency_at_rate at the rate it achieved, what profile_fit did), "after" this',
        "branch: the fit reads a sweep point as the closed loop it was, a concurrency point is predicted",
        "by `latency_at_concurrency` (admission queue past the slots), a Poisson point by",
        "`latency_over_run` (a finite run from an idle engine at the offered rate, the queue growing at",
        "λ - μ past capacity).",
        "",
        "The machine was shared with six other engineers' jobs and engines (load average 9-24 on 2",
        "cores during the run; the engine's CPU worker alone busy-polls one core): absolute speeds",
        "moved 2-3x between repeats of the same point (the [min-max] columns), and the client's TTFT",
        "carries an API front end starved of CPU (its CPU accounting: 0.10-0.15 ms per output token at",
        "load, not modelled beyond the fitted per-request overhead). What holds across repeats, and what",
        "the model must get right, is the mechanism: past `max_num_seqs` the engine's own queue time",
        "grows by one slot turnover (1 / throughput) per extra user while its ITL stays flat (tokens per",
        "step pinned at ~19 = 4 decodes + prefill). The model before had no admission limit in a closed",
        "loop (engine TTFT 35 ms at 16 users against 665-1623 ms measured); after, it predicts the queue",
        "(701 ms against 630-1480 ms) and engine TTFT 740 ms against 665-1623 ms. Over all 61 held-out",
        "points the median |error| of the engine's TTFT falls from 189% to 119% and of its ITL from 88%",
        "to 74%; client TTFT p99 735% -> 491%. Absolute level: the model's throughput at 4 slots is ~2x",
        "the measured one (ITL at batch 4: 3-4 ms predicted, 5-7 ms measured under contention), so its",
        "queue per extra user is about half the measured one, and Poisson rates that saturate the real",
        "engine (0.6-1.3x its measured capacity) sit below the model's own capacity: at 0.8 vs 0.2 of",
        "measured capacity the engine's TTFT grows 4.5-7x, the model's 1.0-1.1x; at 0.8 vs 0.2 of its own",
        "capacity the model's grows 1.4x (128 slots) and 3.2x (4 slots).",
        "",
        'Wave 4 (same recorded engine data, `load_model_check.py` re-run; "after" columns are this',
        "branch, its own before being 0d08719): the steady state at a rate is now solved exactly near",
        "saturation (grid + bisection on the batch; the damped iteration had stopped 5-10% below the",
        "batch), and `latency_over_run` reads the batch a finite run from idle has filled to",
        "(dB/dt = λ - B / (output · t(B))), not the steady state. Over the 61 held-out points: engine ITL",
        "mean 74% -> 71% (default engine, Poisson: 83% -> 78%), engine TTFT mean 119% -> 119%",
        "(default engine, Poisson: 136% -> 146%); the exact fixed point alone, without the finite-run",
        "fill, had taken engine ITL to 79% (Poisson 103%): on a 12 s run the batch near saturation is",
        "still filling. Client-clock columns and closed-loop points are unchanged (the closed loop gained",
        "only `tpot_p99_ms`).",
        "",
        *tables,
        "",
        "Calibration data (../shared/data/calibration) before/after this change: offline throughput is",
        "untouched (same tables above, 6.9% / 21.1%; held-out TensorRT-LLM H200/L40S columns 7.4% /",
        "15.7%); MLPerf Server capacity under TTFT p99 2 s / TPOT p99 200 ms, never fitted on (the",
        "held-out split for latency-bound capacity), all 41 rows median |error| 16.8% -> 16.7%, p90",
        "56.2% -> 56.2% (the 2 s TTFT limit rarely binds there; the whole-iteration TTFT lowers",
        "TTFT-bound capacity by ~1% on 16k-token prompts).",
        "",
    ]


def main() -> int:
    """Print or write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {REPORT.relative_to(ROOT)}")
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation refits")
    args = parser.parse_args()
    report = build_report(with_cv=not args.no_cv)
    print(report)
    if args.write:
        REPORT.write_text(report, encoding="utf-8")
        print(f"wrote {REPORT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
