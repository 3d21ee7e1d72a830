"""Calibration data (TensorRT-LLM offline grid, MLPerf v4.1) and the fit of the few efficiency factors.

The measurements live in placement/data/ (copies of ../shared/data/calibration, plus the H200 and L40S
columns of the same TensorRT-LLM table, kept apart as held-out data). Each row becomes a
`CalibrationPoint`; `predict` runs the performance model on it; `fit_efficiency` adjusts one vendor and
engine's `Efficiency` by least squares on log(predicted / measured) with a weak pull toward the prior, so
a handful of rows cannot drive a factor to an unphysical value.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import optimize

from placement import catalog, perf, perf_efficiency

TRTLLM_CSV: Final = "trtllm_offline_throughput_h100_a100.csv"
MLPERF_CSV: Final = "mlperf_v4.1_llm.csv"
HELDOUT_CSV: Final = "heldout_trtllm_v0.17_h200_l40s.csv"

# GPT-J 6B (MLPerf's small LLM) is not in the serving catalog; its shape from EleutherAI/gpt-j-6b config.json.
GPTJ_6B: Final = catalog.ModelArch(
    id="gpt-j-6b",
    layers=28,
    hidden_size=4096,
    heads=16,
    kv_heads=16,
    head_dim=256,
    intermediate_size=16384,
    vocab_size=50400,
    max_context_tokens=2048,
    gated_mlp=False,
    source="https://huggingface.co/EleutherAI/gpt-j-6b/blob/main/config.json",
)


@dataclasses.dataclass(frozen=True)
class MlperfWorkload:
    """Mean request sizes of an MLPerf LLM benchmark and where they come from."""

    model: catalog.ModelArch
    prompt_tokens: float
    output_tokens: float
    ttft_p99_ms: float
    tpot_p99_ms: float
    source: str
    beam_width: int = 1


MLPERF_WORKLOADS: Final = {
    # Output mean: completed tokens/s / completed samples/s of v4.1 llama2-70b Server logs (3883.67 / 13.33
    # = 291). Input mean: ~294 tokens is an estimate (OpenOrca subset capped at 1024 tokens, not
    # re-tokenized here). Server limits: TTFT p99 2 s, TPOT p99 200 ms (the CSV's constraint columns).
    "llama2-70b": MlperfWorkload(
        catalog.get_model("llama-2-70b"), 294.0, 291.0, 2000.0, 200.0, "estimate (see comment)"
    ),
    # Mixtral: 5k OpenOrca + 5k GSM8K + 5k MBXP samples. Output: the reference run's 145.9 tokens per
    # sample (mlcommons/inference tools/submission/submission_checker.py, TOKENS_PER_SAMPLE accuracy
    # bound 145.9 x 0.9..1.1; benchmarks/REQUEST_SIZES.md). Input 300 is still an estimate (not fitted on).
    "mixtral-8x7b": MlperfWorkload(
        catalog.get_model("mixtral-8x7b"),
        300.0,
        145.9,
        2000.0,
        200.0,
        "output: MLPerf reference; input: estimate",
    ),
    # GPT-J on CNN/DailyMail: articles average 781 tokens (See et al. 2017: word-level PTB tokens, not
    # GPT-J's BPE, so the BPE prompt is longer; see benchmarks/REQUEST_SIZES.md); 69 output tokens per
    # sample (the CSV's tokens = samples x 69; the reference run's summaries average 300.5 characters,
    # GEN_LEN 4,016,878 over 13,368 samples, i.e. ~69 BPE tokens). Server limit: p99 latency 20 s per
    # query, no TTFT/TPOT split.
    # MLPerf's GPT-J runs beam search with 4 beams (reference implementation, num_beams=4).
    "gptj": MlperfWorkload(GPTJ_6B, 781.0, 69.0, 20000.0, 20000.0 / 69.0, "See et al. 2017; CSV", 4),
}

# MLPerf accelerator names mapped to catalog ids; other systems (H100 NVL/PCIe, GH200, B200, CPUs) are
# different products and are left out. "H200-SXM-141GB-CTS" is a 1000 W custom-thermal H200: left out.
MLPERF_ACCELERATORS: Final = {
    "NVIDIA H100-SXM-80GB": "h100",
    "NVIDIA H200-SXM-141GB": "h200",
    "NVIDIA L40S": "l40s",
    "AMD Instinct MI300X-NPS1-SPX-192GB-750W": "mi300x",
    "AMD MI300X-NPS1-SPX-192GB-750W": "mi300x",
}
# MLPerf "MaxQ" systems run under a power cap (the power category): another operating point of the chip
# than the datasheet peaks the model uses, like the CTS variant above. Left out.
MAXQ_SUFFIX: Final = "_MaxQ"
TRTLLM_ACCELERATORS: Final = {
    "H100-SXM-80GB": "h100",
    "H100": "h100",
    "A100-SXM4-80GB": "a100-80gb",
    "H200-SXM-141GB": "h200",
    "L40S": "l40s",
}
TRTLLM_MODELS: Final = {
    "LLaMA v3.1 8B": "llama-3.1-8b",
    "Llama 3.1 8B": "llama-3.1-8b",
    "LLaMA v3.1 70B": "llama-3.1-70b",
    # Llama 3.3 70B has Llama 3.1 70B's architecture.
    "Llama 3.3 70B": "llama-3.1-70b",
    "LLaMA v3.1 405B": "llama-3.1-405b",
    "Llama 3.1 405B": "llama-3.1-405b",
    "Mistral 7B": "mistral-7b",
    "Mixtral 8x7B": "mixtral-8x7b",
    "Mixtral 8x22B": "mixtral-8x22b",
}
TP_CHOICES: Final = (1, 2, 4, 8)


@dataclasses.dataclass(frozen=True)
class CalibrationPoint:
    """One measurement: tokens/s per device of a model on a chip, and how to reproduce it with the model."""

    dataset: str
    model: catalog.ModelArch
    accelerator: str
    precision: str
    engine: str
    # Tensor-parallel degrees the submitter could have used; the prediction takes the best one.
    tp_choices: tuple[int, ...]
    prompt_tokens: float
    output_tokens: float
    measured_tokens_per_s_per_device: float
    scenario: str = "offline"
    ttft_p99_ms: float = 0.0
    itl_p99_ms: float = 0.0
    beam_width: int = 1
    note: str = ""

    @property
    def label(self) -> str:
        """Short human-readable identity of the row."""
        tps = "/".join(str(t) for t in self.tp_choices)
        return (
            f"{self.model.id} {self.accelerator} {self.precision} tp{tps} {self.engine} "
            f"{self.prompt_tokens:.0f}/{self.output_tokens:.0f} {self.scenario}"
        )


def _rows(name: str) -> list[dict[str, str]]:
    """Rows of one of placement/data's CSV files."""
    text = resources.files("placement").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def trtllm_points(name: str = TRTLLM_CSV) -> list[CalibrationPoint]:
    """The TensorRT-LLM offline grid (per-replica tokens/s turned into per-device)."""
    points = []
    for row in _rows(name):
        model = catalog.get_model(TRTLLM_MODELS.get(row["model"], row["model"]))
        tp = int(row["tp"])
        points.append(
            CalibrationPoint(
                dataset=f"{row['source']}",
                model=model,
                accelerator=TRTLLM_ACCELERATORS[row["gpu"]],
                precision=row["precision"].lower(),
                engine="trtllm",
                tp_choices=(tp,),
                prompt_tokens=float(row["isl"]),
                output_tokens=float(row["osl"]),
                measured_tokens_per_s_per_device=float(row["output_tokens_per_s"]) / tp,
            )
        )
    return points


# Dell's MI300X submission declares fp16 but runs AMD's own recipe (identical software string
# "vLLM 0.4.3+rocm614", which AMD declares fp8) and reaches AMD's fp8 throughput: read as fp8.
AMD_FP8_RECIPE_SOFTWARE: Final = "vLLM 0.4.3+rocm614"


def _mlperf_precision(row: dict[str, str]) -> str:
    """The precision a row really ran at: NVIDIA v4.1 TRT configs declared fp16 set use_fp8 (hint column)."""
    if row["precision_hint"].startswith("fp8"):
        return "fp8"
    if row["software"].startswith(AMD_FP8_RECIPE_SOFTWARE):
        return "fp8"
    return row["precision_declared"]


def _mlperf_engine(software: str) -> str:
    """Serving engine from the software column (TensorRT -> trtllm, else vLLM-based)."""
    return "trtllm" if "TensorRT" in software else "vllm"


def mlperf_points(scenarios: Iterable[str] = ("Offline",)) -> list[CalibrationPoint]:
    """Closed-division MLPerf v4.1 rows on catalog chips, one per distinct (system, benchmark, scenario).

    n_accel = accelerators per node x nodes; tokens_per_s_per_accel is already divided by it. The -99 and
    -99.9 accuracy variants ran the same engine and are deduplicated.
    """
    wanted = set(scenarios)
    seen: set[tuple[str, str, str, str]] = set()
    points = []
    for row in _rows(MLPERF_CSV):
        acc_id = MLPERF_ACCELERATORS.get(row["accelerator"])
        benchmark = row["used_model"].removesuffix("-99.9").removesuffix("-99")
        if row["division"] != "closed" or acc_id is None or row["scenario"] not in wanted:
            continue
        if row["platform"].endswith(MAXQ_SUFFIX):
            continue
        workload = MLPERF_WORKLOADS.get(benchmark)
        precision = _mlperf_precision(row)
        if workload is None or precision not in catalog.PRECISIONS or not row["tokens_per_s_per_accel"]:
            continue
        key = (row["system"], benchmark, row["scenario"], row["tokens_per_s_per_accel"])
        if key in seen:
            continue
        seen.add(key)
        per_node = int(row["accel_per_node"])
        points.append(
            CalibrationPoint(
                dataset=f"mlperf_v4.1 {row['submitter']} {row['platform']}",
                model=workload.model,
                accelerator=acc_id,
                precision=precision,
                engine=_mlperf_engine(row["software"]),
                tp_choices=tuple(t for t in TP_CHOICES if t <= per_node),
                prompt_tokens=workload.prompt_tokens,
                output_tokens=workload.output_tokens,
                measured_tokens_per_s_per_device=float(row["tokens_per_s_per_accel"]),
                scenario=row["scenario"].lower(),
                ttft_p99_ms=workload.ttft_p99_ms,
                itl_p99_ms=workload.tpot_p99_ms,
                beam_width=workload.beam_width,
                note=row["software"],
            )
        )
    return points


def predict(point: CalibrationPoint, efficiency: perf_efficiency.Efficiency | None = None) -> float:
    """Predicted tokens/s per device for a point: the best feasible tp, offline or under the server SLO."""
    best = 0.0
    for tp in point.tp_choices:
        config = perf.ReplicaConfig(point.model, point.accelerator, point.precision, tp, engine=point.engine)
        if perf.infeasibility(config) is not None:
            continue
        try:
            if point.scenario == "server":
                slo = perf.LatencySlo(point.ttft_p99_ms, point.itl_p99_ms)
                rate = perf.max_rate_under_slo(
                    config,
                    point.prompt_tokens,
                    point.output_tokens,
                    slo,
                    itl_is_tpot=True,
                    efficiency=efficiency,
                )
                value = rate.output_tokens_per_s / tp
            else:
                value = (
                    perf.offline_throughput(
                        config,
                        point.prompt_tokens,
                        point.output_tokens,
                        beam_width=point.beam_width,
                        efficiency=efficiency,
                    ).output_tokens_per_s
                    / tp
                )
        except perf.InvalidConfigError:
            continue
        best = max(best, value)
    return best


# --- fitting -----------------------------------------------------------------------------------------------

FITTED_FIELDS: Final = (
    "bandwidth",
    "compute_16bit",
    "compute_8bit",
    "overlap_penalty",
    "interconnect",
    "moe",
    "step_overhead_s",
)
# Pull toward the prior: one unit of log-error per factor of e away from it, scaled by this weight. Small
# enough that data dominates wherever it exists, large enough that unconstrained factors stay at the prior.
PRIOR_WEIGHT: Final = 0.05
# Physical bounds of each factor during the fit (fractions of peak; step overhead in seconds).
FIT_BOUNDS: Final = {
    # HBM/GDDR streaming reaches at most ~90-95% of the datasheet rate (STREAM-like copy benchmarks).
    "bandwidth": (0.3, 0.95),
    "compute_16bit": (0.1, 1.0),
    "compute_8bit": (0.1, 1.0),
    "overlap_penalty": (0.0, 1.0),
    "interconnect": (0.05, 1.0),
    "moe": (0.2, 1.0),
    "step_overhead_s": (1e-5, 0.02),
}


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A fitted Efficiency and the log-error statistics it was obtained with."""

    efficiency: perf_efficiency.Efficiency
    points: int
    rms_log_error_before: float
    rms_log_error_after: float


def log_errors(
    points: Sequence[CalibrationPoint], efficiency: perf_efficiency.Efficiency | None = None
) -> NDArray[np.float64]:
    """log(predicted / measured) per point (a large penalty when the model predicts nothing)."""
    out = np.empty(len(points))
    for i, point in enumerate(points):
        predicted = predict(point, efficiency)
        out[i] = math.log(predicted / point.measured_tokens_per_s_per_device) if predicted > 0 else 5.0
    return out


def fit_efficiency(
    points: Sequence[CalibrationPoint],
    prior: perf_efficiency.Efficiency,
    fields: Sequence[str] = FITTED_FIELDS,
    source: str = "fitted",
    progress: Callable[[int], None] | None = None,
) -> FitResult:
    """Least squares on log(predicted / measured) over `points`, adjusting `fields` of `prior`."""
    start = np.array([getattr(prior, f) for f in fields], dtype=float)
    lower = np.array([FIT_BOUNDS[f][0] for f in fields])
    upper = np.array([FIT_BOUNDS[f][1] for f in fields])
    start = np.clip(start, lower, upper)
    anchor = start.copy()
    calls = 0

    def build(values: NDArray[np.float64]) -> perf_efficiency.Efficiency:
        changes: dict[str, Any] = {f: float(v) for f, v in zip(fields, values, strict=True)}
        return dataclasses.replace(prior, **changes)

    def residuals(values: NDArray[np.float64]) -> NDArray[np.float64]:
        nonlocal calls
        calls += 1
        if progress is not None:
            progress(calls)
        data = log_errors(points, build(values))
        # Pull toward the prior in log space (overlap_penalty can be 0: pulled linearly instead).
        pulls = [
            PRIOR_WEIGHT * (v - s if f == "overlap_penalty" else math.log(max(v, 1e-9) / max(s, 1e-9)))
            for f, v, s in zip(fields, values, anchor, strict=True)
        ]
        return np.concatenate([data, np.array(pulls)])

    before = float(np.sqrt(np.mean(log_errors(points, prior) ** 2)))
    result = optimize.least_squares(residuals, start, bounds=(lower, upper), diff_step=1e-3, max_nfev=200)
    fitted = build(result.x)
    fitted = dataclasses.replace(fitted, source=source)
    after = float(np.sqrt(np.mean(log_errors(points, fitted) ** 2)))
    return FitResult(fitted, len(points), before, after)


# The efficiency constants benchmarks/calibrate.py fits, and the vendor and engine each one serves.
FITTED_FAMILIES: Final = {"NVIDIA_TRTLLM": ("nvidia", "trtllm"), "AMD_VLLM": ("amd", "vllm")}


def fit_sets() -> dict[str, list[CalibrationPoint]]:
    """Fitting points per fitted constant (benchmarks/calibrate.py fits on exactly these)."""
    # MLPerf Mixtral's request sizes are not known here (see MLPERF_WORKLOADS): not fitted on.
    mlperf = [p for p in mlperf_points(("Offline",)) if p.model.id != "mixtral-8x7b"]
    points = trtllm_points() + mlperf
    return {
        "NVIDIA_TRTLLM": [p for p in points if p.engine == "trtllm"],
        "AMD_VLLM": [p for p in points if p.accelerator == "mi300x" and p.engine == "vllm"],
    }


# --- engine versions ---------------------------------------------------------------------------------------

# The TensorRT-LLM grid was published for two releases (perf-overview.md @258c7540 = v0.17, @00f37686 =
# v1.0); v0.17 has most rows, so the fitted NVIDIA_TRTLLM family is effectively v0.17's: the reference.
REFERENCE_ENGINE_VERSIONS: Final = {"trtllm": "0.17"}
# A cell counts as decode-dominated (its throughput follows memory bandwidth) when its output is at least
# this many times its prompt, prefill-dominated (follows compute) when its prompt is.
PHASE_DOMINANCE_RATIO: Final = 4.0


@dataclasses.dataclass(frozen=True)
class VersionRatio:
    """How a release's measured throughput compares to the reference release's on the same cells."""

    engine: str
    version: str
    reference: str
    # Median measured(version) / measured(reference) over decode- and prefill-dominated shared cells.
    bandwidth_ratio: float
    compute_ratio: float
    cells: int


def _release(source: str) -> tuple[str, str] | None:
    """`trtllm_v1.0_perf_overview` -> ("trtllm", "1.0")."""
    parts = source.split("_")
    if len(parts) >= 2 and parts[1].startswith("v"):
        return parts[0], parts[1][1:]
    return None


def engine_version_ratios() -> dict[tuple[str, str], VersionRatio]:
    """Per (engine, version): its throughput relative to the reference release, from measurements only.

    Compares the two releases' published numbers on identical cells (model, GPU, precision, tp, prompt,
    output); no model prediction is involved, so the ratio is what the release changed.
    """
    cells: dict[tuple[str, str], dict[tuple[str, ...], float]] = {}
    for row in _rows(TRTLLM_CSV):
        release = _release(row["source"])
        if release is None:
            continue
        model = TRTLLM_MODELS.get(row["model"], row["model"])
        key = (
            model,
            TRTLLM_ACCELERATORS[row["gpu"]],
            row["precision"].lower(),
            row["tp"],
            row["isl"],
            row["osl"],
        )
        cells.setdefault(release, {})[key] = float(row["output_tokens_per_s"])
    out = {}
    for (engine, version), measured in cells.items():
        reference = REFERENCE_ENGINE_VERSIONS.get(engine)
        if reference is None or version == reference or (engine, reference) not in cells:
            continue
        base = cells[(engine, reference)]
        shared = [k for k in measured if k in base]
        decode = [measured[k] / base[k] for k in shared if float(k[5]) >= PHASE_DOMINANCE_RATIO * float(k[4])]
        prefill = [
            measured[k] / base[k] for k in shared if float(k[4]) >= PHASE_DOMINANCE_RATIO * float(k[5])
        ]
        if not decode or not prefill:
            continue
        out[(engine, version)] = VersionRatio(
            engine, version, reference, float(np.median(decode)), float(np.median(prefill)), len(shared)
        )
    return out
