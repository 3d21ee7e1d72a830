"""Efficiency factors of the performance model, per (vendor, engine): the only numbers fitted to data.

Each factor is a physical fraction of a datasheet peak (or a fixed per-iteration cost), shared by every
chip, model and request shape of that vendor and engine: never one value per measurement row.
benchmarks/calibrate.py refits the fitted ones (scipy least squares on log(predicted / measured)) and
prints this table; the values below are its output, pasted with the date and data it was run on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


@dataclasses.dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak for one (vendor, engine), and how they were obtained."""

    # Fraction of datasheet memory bandwidth that weight and KV streaming reaches.
    bandwidth: float
    # Fraction of dense tensor peak that GEMMs reach, for 16-bit and for 8-bit (fp8/int8) math.
    compute_16bit: float
    compute_8bit: float
    # Share of the smaller of (memory time, compute time) of a GEMM that does not overlap the larger:
    # 0 is a perfect roofline max(), 1 a plain sum (kernels of moderate batch sit in between).
    overlap_penalty: float
    # Fraction of the interconnect's per-direction bandwidth a tensor-parallel all-reduce reaches.
    interconnect: float
    # MoE expert layers run below the dense GEMM rate (token permutation, many small grouped GEMMs):
    # their roofline time is divided by this fraction.
    moe: float
    # Fixed cost of one engine iteration (scheduling, sampling, kernel launches), seconds.
    step_overhead_s: float
    source: str

    def __post_init__(self) -> None:
        """Efficiencies are fractions of a physical peak: the model must never beat the roofline."""
        for name in ("bandwidth", "compute_16bit", "compute_8bit", "overlap_penalty", "interconnect", "moe"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"efficiency {name} must be within [0, 1], got {value}")
        if self.step_overhead_s < 0.0:
            raise ValueError(f"efficiency step_overhead_s must be >= 0, got {self.step_overhead_s}")


# Priors the fit starts from and is weakly pulled toward: typical published fractions (~80% of HBM
# bandwidth in decode kernels, ~50-60% of dense tensor peak in serving GEMMs, ~70% of NVLink bandwidth
# in NCCL all-reduce, ~1-3 ms per engine step).
NVIDIA_TRTLLM_PRIOR: Final = Efficiency(
    bandwidth=0.80,
    compute_16bit=0.55,
    compute_8bit=0.45,
    overlap_penalty=0.5,
    interconnect=0.7,
    moe=0.8,
    step_overhead_s=0.001,
    source="prior",
)
AMD_VLLM_PRIOR: Final = Efficiency(
    bandwidth=0.70,
    compute_16bit=0.40,
    compute_8bit=0.30,
    overlap_penalty=0.5,
    interconnect=0.7,
    moe=0.8,
    step_overhead_s=0.003,
    source="prior",
)

# --- fitted by benchmarks/calibrate.py ---------------------------------------------------------------------
# Regenerate with `.venv/bin/python benchmarks/calibrate.py --write` (scipy least squares on
# log(predicted / measured) with a weak pull toward the *_PRIOR values above).
# NVIDIA_TRTLLM: fitted bandwidth, compute_16bit, compute_8bit, overlap_penalty, interconnect, moe,
# step_overhead_s.
NVIDIA_TRTLLM: Final = Efficiency(
    bandwidth=0.95,
    compute_16bit=0.6863,
    compute_8bit=0.6437,
    overlap_penalty=1,
    interconnect=0.4028,
    moe=0.7864,
    step_overhead_s=0.003107,
    source="fitted 2026-11-22 on 251 rows, rms log error 0.161 -> 0.103",
)
# AMD_VLLM: fitted bandwidth, compute_8bit.
AMD_VLLM: Final = Efficiency(
    bandwidth=0.7095,
    compute_16bit=0.4,
    compute_8bit=0.3472,
    overlap_penalty=0.5,
    interconnect=0.7,
    moe=0.8,
    step_overhead_s=0.003,
    source="fitted 2026-11-22 on 4 rows, rms log error 0.137 -> 0.029",
)

# --- end fitted --------------------------------------------------------------------------------------------

# Engines without calibration data are scaled from the fitted ones by published relative throughput.
# vLLM on NVIDIA: vLLM v0.6 blog (Sept 2024) measures 1.8-2.7x over v0.5 and "competitive" with
# TensorRT-LLM; we take 85% of TensorRT-LLM's compute and bandwidth fractions and its step overhead
# (the same blog removes most CPU overhead with multi-step scheduling and asynchronous output
# processing; V1 keeps CUDA graphs and async scheduling). SGLang: within a few percent of vLLM in the
# same blog's comparisons; taken equal.
VLLM_VS_TRTLLM_EFFICIENCY: Final = 0.85
VLLM_VS_TRTLLM_OVERHEAD: Final = 1.0
# TGI: Hugging Face TGI v3 notes report throughput comparable to vLLM; taken 90% of vLLM.
TGI_VS_VLLM_EFFICIENCY: Final = 0.90
# AWS Neuron (transformers-neuronx / NxD Inference): no calibration data here; a conservative prior of
# 60% bandwidth and 40% compute of the NeuronCore-v2 peaks with a 5 ms step (compiled static graphs).
NEURON_PRIOR: Final = Efficiency(
    bandwidth=0.60,
    compute_16bit=0.40,
    compute_8bit=0.40,
    overlap_penalty=0.5,
    interconnect=0.7,
    moe=0.8,
    step_overhead_s=0.005,
    source="prior: no Inferentia2 measurements among the calibration data (placement/data)",
)


def _scaled(base: Efficiency, factor: float, overhead_factor: float, source: str) -> Efficiency:
    """`base` with fractions scaled by `factor` (capped at 1) and step overhead by `overhead_factor`."""
    return Efficiency(
        bandwidth=min(1.0, base.bandwidth * factor),
        compute_16bit=min(1.0, base.compute_16bit * factor),
        compute_8bit=min(1.0, base.compute_8bit * factor),
        overlap_penalty=base.overlap_penalty,
        interconnect=base.interconnect,
        moe=base.moe,
        step_overhead_s=base.step_overhead_s * overhead_factor,
        source=source,
    )


def _table() -> dict[tuple[str, str], Efficiency]:
    """Every (vendor, engine) pair the catalog allows, fitted or derived."""
    nvidia_vllm = _scaled(
        NVIDIA_TRTLLM,
        VLLM_VS_TRTLLM_EFFICIENCY,
        VLLM_VS_TRTLLM_OVERHEAD,
        "derived: TensorRT-LLM x vLLM ratio",
    )
    return {
        ("nvidia", "trtllm"): NVIDIA_TRTLLM,
        ("nvidia", "vllm"): nvidia_vllm,
        ("nvidia", "sglang"): dataclasses.replace(nvidia_vllm, source="derived: equal to vLLM"),
        ("nvidia", "tgi"): _scaled(nvidia_vllm, TGI_VS_VLLM_EFFICIENCY, 1.0, "derived: vLLM x TGI ratio"),
        ("amd", "vllm"): AMD_VLLM,
        ("amd", "sglang"): dataclasses.replace(AMD_VLLM, source="derived: equal to vLLM on ROCm"),
        ("amd", "tgi"): _scaled(AMD_VLLM, TGI_VS_VLLM_EFFICIENCY, 1.0, "derived: vLLM x TGI ratio"),
        ("aws", "neuron"): NEURON_PRIOR,
        ("aws", "vllm"): dataclasses.replace(NEURON_PRIOR, source="derived: vLLM's Neuron backend"),
        ("aws", "tgi"): dataclasses.replace(NEURON_PRIOR, source="derived: TGI on optimum-neuron"),
    }


EFFICIENCIES: Final[Mapping[tuple[str, str], Efficiency]] = MappingProxyType(_table())
