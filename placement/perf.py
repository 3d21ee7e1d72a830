"""What one replica of (model, accelerator, precision, tp, role, engine) does: roofline physics plus queueing.

The model, in three layers (docs/performance-model.md has the derivation and its assumptions):

1. Memory: weights (per precision, embeddings kept 16-bit) and KV cache (GQA-aware, fp8 KV with fp8
   weights) must fit; what is left after weights and a runtime reserve bounds the batch.
2. One engine iteration (a continuous-batching step: some decode tokens plus some prefill tokens) costs
   a sum over kernel classes, each on its own roofline: dense GEMMs and MoE expert GEMMs
   max(bytes / bandwidth, flops / peak) (plus a share of the smaller term: imperfect overlap), attention
   (KV bytes streamed + attention FLOPs), tensor-parallel all-reduces (ring: 2 (tp - 1) / tp of the
   activations over the interconnect, plus a per-call latency), and a fixed engine overhead. Bandwidth and
   peak are datasheet figures times efficiency factors (placement.perf_efficiency) that are never above 1,
   so no prediction beats the physical roofline.
3. Serving under load: at arrival rate λ, Little's law gives the decode batch B = λ · output · t_step
   (a fixed point, since t_step grows with B); prompts are an M/G/1 queue served by the prefill token
   budget of each iteration (chunked prefill), whose Pollaczek-Khinchine mean wait and exponential tail
   give TTFT p50/p99; ITL p99 is the iteration whose prefill load (compound-Poisson prompt arrivals plus
   backlog, capped by the chunk budget) is exceeded 1% of the time. The highest rate meeting both SLOs
   is bracketed on a grid of loads and refined by secant and Newton steps (see _search).

Prefill-only and decode-only replicas (disaggregated serving) drop the other phase's work; a prefill
replica's TTFT includes shipping the prompt's KV cache to the decode side over the network.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy import special

from placement import catalog, perf_efficiency
from placement import profiles as measured

# --- physical constants and engine traits (each with its source) ----------------------------------------

# Bytes per weight. int4 is AWQ/GPTQ with one fp16 scale per group of 128 weights (their default group).
INT4_GROUP_SIZE: Final = 128
BYTES_PER_PARAM: Final = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2.0 / INT4_GROUP_SIZE,
}
# Embedding tables and the output head stay 16-bit under fp8/int8/int4 quantization (TensorRT-LLM
# ModelOpt and vLLM's fp8/AWQ/GPTQ checkpoints quantize only the transformer's linear layers).
EMBEDDING_BYTES_PER_PARAM: Final = 2.0
# Activations and all-reduce payloads are 16-bit.
ACTIVATION_BYTES: Final = 2.0
# KV cache element size: fp8 weights come with an fp8 KV cache ("If you specify FP8 quantization, the KV
# cache will automatically be set to FP8 as well", TensorRT-LLM perf-overview); otherwise 16-bit, the
# vLLM/SGLang/TGI default.
KV_BYTES_FP8: Final = 1.0
KV_BYTES_16BIT: Final = 2.0
# Memory a device keeps outside weights and KV: CUDA/ROCm context, activation workspace, CUDA graphs,
# NCCL buffers (vLLM's profiler typically reports 1-3 GiB on 80 GB GPUs); 2 GiB assumed.
RUNTIME_RESERVE_BYTES: Final = 2 * catalog.GIB
# All-reduce latency per call: NCCL/TensorRT-LLM custom all-reduce on NVLink is ~5-10 us for small
# messages (nccl-tests); PCIe-only boards pay several times more.
ALLREDUCE_LATENCY_FAST_S: Final = 8e-6
ALLREDUCE_LATENCY_PCIE_S: Final = 30e-6
PCIE_CLASS_BYTES_PER_S: Final = 64 * catalog.GB
# Prefill -> decode KV transfer in disaggregated serving: RDMA NIC bandwidth per device. 100 Gb/s per GPU
# is a conservative middle between AWS p4d (400 Gb/s for 8 GPUs) and p5 (3200 Gb/s for 8 GPUs).
KV_TRANSFER_BYTES_PER_S_PER_DEVICE: Final = 12.5 * catalog.GB
KV_TRANSFER_LATENCY_S: Final = 1e-3
# Tail quantile used for every p99.
TAIL_PROBABILITY: Final = 0.01
# Fixed cost of the serving path per request, on top of the engine's iterations: scheduling, output
# processing, detokenization and the engine-core <-> API-process hand-off. Measured on the project's real
# vLLM engine (benchmarks/serving_path.py -> benchmarks/results/serving_path_vllm_cpu.json: the engine's
# own mean time_to_first_token minus request_queue_time minus request_prefill_time, 45 sequential
# requests of a tiny model, 7.0 ms). Client-side HTTP and tokenization (another ~6 ms there) depend on
# the client and host and are not included; a lower bound of what a benchmark client sees.
SERVING_PATH_FIXED_S: Final = 0.007
# z-score of the 99th percentile of a standard normal (lognormal fits of mean + p99).
Z_P99: Final = 2.3263478740408408
_STANDARD_NORMAL: Final = statistics.NormalDist()
# Bisection when searching the highest SLO-meeting rate: at most 2^-30 of the bracket, stopping once the
# bracket is within 1e-4 of the rate (far below the model's own error; the solver rounds replicas anyway).
RATE_SEARCH_STEPS: Final = 30
RATE_RELATIVE_TOLERANCE: Final = 1e-4
FIXED_POINT_STEPS: Final = 60


@dataclasses.dataclass(frozen=True)
class EngineTraits:
    """Scheduler limits of a serving engine that shape batching (not efficiency: see perf_efficiency)."""

    # Largest number of sequences decoded together.
    max_batch: int
    # Prefill tokens one iteration carries (chunked prefill budget); None: whole prompts, no chunking.
    prefill_chunk_tokens: int | None
    # Fraction of device memory the engine may use: of all memory (vLLM's gpu_memory_utilization: weights +
    # KV + reserve within it) or, with `fraction_of_free`, of what weights and reserve leave (TensorRT-LLM's
    # kv_cache_free_gpu_mem_fraction).
    memory_fraction: float
    fraction_of_free: bool
    # True: KV for prompt + full output is reserved at admission (TensorRT-LLM's "guaranteed no evict");
    # False: paged KV grows with the sequence, so on average prompt + output / 2 is resident.
    reserves_full_sequence: bool
    source: str
    # The engine option that sets the chunked-prefill budget (None: the engine does not chunk prefill).
    prefill_chunk_option: str | None = None
    # True: the budget counts every token an iteration schedules, one per decoding sequence included
    # (vLLM's max_num_batched_tokens, which must also be >= max_num_seqs; TensorRT-LLM's max_num_tokens);
    # False: it bounds prefill tokens only (SGLang's chunked_prefill_size, TGI's max_batch_prefill_tokens).
    budget_counts_decode: bool = False


ENGINE_TRAITS: Final = {
    "trtllm": EngineTraits(
        max_batch=2048,
        prefill_chunk_tokens=8192,
        memory_fraction=0.95,
        fraction_of_free=True,
        reserves_full_sequence=True,
        source="trtllm-bench: max_num_tokens 8192, kv_cache_free_gpu_mem_fraction 0.95, guaranteed_no_evict",
        prefill_chunk_option="max_num_tokens",
        budget_counts_decode=True,
    ),
    "vllm": EngineTraits(
        max_batch=256,
        prefill_chunk_tokens=2048,
        memory_fraction=0.90,
        fraction_of_free=False,
        reserves_full_sequence=False,
        source="vLLM defaults: max_num_seqs 256, gpu_memory_utilization 0.9, chunked prefill",
        prefill_chunk_option="--max-num-batched-tokens",
        budget_counts_decode=True,
    ),
    "sglang": EngineTraits(
        max_batch=1024,
        prefill_chunk_tokens=8192,
        memory_fraction=0.88,
        fraction_of_free=False,
        reserves_full_sequence=False,
        source="SGLang defaults: chunked_prefill_size 8192, mem_fraction_static ~0.88",
        prefill_chunk_option="--chunked-prefill-size",
        budget_counts_decode=False,
    ),
    "tgi": EngineTraits(
        max_batch=256,
        prefill_chunk_tokens=4096,
        memory_fraction=0.90,
        fraction_of_free=False,
        reserves_full_sequence=False,
        source="TGI v3: max_batch_prefill_tokens 4096, chunked prefill",
        prefill_chunk_option="--max-batch-prefill-tokens",
        budget_counts_decode=False,
    ),
    "neuron": EngineTraits(
        max_batch=64,
        prefill_chunk_tokens=None,
        memory_fraction=0.95,
        fraction_of_free=True,
        reserves_full_sequence=True,
        source="NxD Inference: compiled batch sizes (<= 64 typical), KV reserved per sequence slot",
    ),
}

# vLLM (V1) raises its serving defaults on devices with >= 70 GiB that are not A100s: max_num_seqs 1024
# and max_num_batched_tokens 8192 for the OpenAI server (vllm/engine/arg_utils.py, get_batch_defaults;
# A100 excluded after vLLM PR #17885 measured a regression there).
VLLM_LARGE_DEVICE_BYTES: Final = 70 * catalog.GIB
VLLM_LARGE_DEVICE_MAX_BATCH: Final = 1024
VLLM_LARGE_DEVICE_CHUNK_TOKENS: Final = 8192
# vLLM's CPU backend serves with max_num_seqs 128 and 2048 batched tokens (OpenAI server; the same
# get_batch_defaults, `if current_platform.is_cpu()`, vLLM 0.32): the project's real engine runs with these.
VLLM_CPU_MAX_BATCH: Final = 128


def engine_traits(engine: str, acc: catalog.Accelerator) -> EngineTraits:
    """The engine's scheduler limits on this accelerator (defaults can depend on the device)."""
    traits = ENGINE_TRAITS[engine]
    parent = acc.parent or acc.id
    if engine == "vllm" and acc.vendor == "cpu":
        return dataclasses.replace(
            traits, max_batch=VLLM_CPU_MAX_BATCH, source=traits.source + "; CPU backend: max_num_seqs 128"
        )
    if engine == "vllm" and acc.memory_bytes >= VLLM_LARGE_DEVICE_BYTES and not parent.startswith("a100"):
        return dataclasses.replace(
            traits,
            max_batch=VLLM_LARGE_DEVICE_MAX_BATCH,
            prefill_chunk_tokens=VLLM_LARGE_DEVICE_CHUNK_TOKENS,
            source=traits.source + "; >= 70 GiB non-A100 device: max_num_seqs 1024, 8192 batched tokens",
        )
    return traits


# --- public types ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatencySlo:
    """Latency objectives: p99 time to first token and p99 inter-token latency, milliseconds."""

    ttft_p99_ms: float
    itl_p99_ms: float

    def __post_init__(self) -> None:
        """Both objectives are positive durations."""
        for name in ("ttft_p99_ms", "itl_p99_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"slo.{name} must be a positive number of milliseconds, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """One replica: a model on `tp` devices of one accelerator type, at a precision, in a role and engine."""

    model: str | catalog.ModelArch
    accelerator: str | catalog.Accelerator
    precision: str
    tp: int = 1
    role: str = "aggregated"
    engine: str = "vllm"

    def __hash__(self) -> int:
        """Hash of every field, computed once (configurations key the capacity caches)."""
        try:
            return self.__dict__["_hash"]  # type: ignore[no-any-return]
        except KeyError:
            value = hash((self.model, self.accelerator, self.precision, self.tp, self.role, self.engine))
            self.__dict__["_hash"] = value
            return value

    @property
    def model_arch(self) -> catalog.ModelArch:
        """The model's architecture (catalog lookup for an id)."""
        return self.model if isinstance(self.model, catalog.ModelArch) else catalog.get_model(self.model)

    @property
    def accelerator_spec(self) -> catalog.Accelerator:
        """The accelerator's catalog entry (lookup for an id)."""
        if isinstance(self.accelerator, catalog.Accelerator):
            return self.accelerator
        return catalog.get_accelerator(self.accelerator)


@dataclasses.dataclass(frozen=True)
class RatePrediction:
    """Highest request rate one replica sustains within the SLO, and its latencies there."""

    max_rps: float
    ttft_p99_ms: float
    itl_p99_ms: float
    max_batch: int
    output_tokens_per_s: float
    reason: str | None
    ttft_p50_ms: float = 0.0
    itl_p50_ms: float = 0.0
    source: str = "model"
    # Chunked-prefill token budget this prediction assumes, to pass to the engine as
    # `engine_traits(engine, acc).prefill_chunk_option` (vLLM --max-num-batched-tokens, SGLang
    # --chunked-prefill-size, ...). None: the engine does not chunk, the role does not prefill (decode),
    # the answer is zero, or it comes from a measured profile.
    prefill_chunk_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class OfflinePrediction:
    """Maximum offline throughput of one replica (all requests queued at once, like trtllm-bench/MLPerf)."""

    output_tokens_per_s: float
    requests_per_s: float
    batch: int
    weights_bytes_per_device: float
    kv_bytes_per_device: float
    memory_bytes_per_device: float
    ttft_ms: float
    itl_ms: float
    step_ms: float
    bound: str


@dataclasses.dataclass(frozen=True)
class LoadPrediction:
    """Latency percentiles of one replica at a given arrival rate (None fields: not applicable)."""

    rate_rps: float
    batch: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    prefill_utilization: float
    step_ms: float
    ttft_mean_ms: float = 0.0
    itl_mean_ms: float = 0.0
    # MLPerf's TPOT p99: the 99th percentile over requests of each request's mean inter-token time
    # (_tpot_p99_v); 0.0 where not modelled (prefill-only replicas).
    tpot_p99_ms: float = 0.0


@dataclasses.dataclass(frozen=True)
class RequestSizes:
    """Request sizes (mean and p99 tokens) of a traffic stream."""

    prompt_tokens: float
    output_tokens: float
    prompt_tokens_p99: float | None = None
    output_tokens_p99: float | None = None

    def __post_init__(self) -> None:
        """Sizes are positive and a p99 is never below its mean."""
        for name in ("prompt_tokens", "output_tokens"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 1):
                raise ValueError(f"{name} must be a number >= 1, got {value!r}")
        for name, mean in (
            ("prompt_tokens_p99", self.prompt_tokens),
            ("output_tokens_p99", self.output_tokens),
        ):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= mean):
                raise ValueError(f"{name} must be >= the mean ({mean}), got {value!r}")

    @property
    def prompt_p99(self) -> float:
        """p99 prompt length; deterministic sizes when no p99 was given."""
        return self.prompt_tokens if self.prompt_tokens_p99 is None else self.prompt_tokens_p99

    @property
    def output_p99(self) -> float:
        """p99 output length; deterministic sizes when no p99 was given."""
        return self.output_tokens if self.output_tokens_p99 is None else self.output_tokens_p99

    @functools.cached_property
    def prompt_second_moment(self) -> float:
        """E[prompt^2] of a lognormal with this mean and p99 (Pollaczek-Khinchine needs it)."""
        return self.prompt_tokens**2 * math.exp(lognormal_sigma(self.prompt_tokens, self.prompt_p99) ** 2)


class InvalidConfigError(ValueError):
    """A replica configuration names something that does not exist (unknown precision, role, engine)."""


# --- distribution helper ---------------------------------------------------------------------------------


def lognormal_sigma(mean: float, p99: float) -> float:
    """σ of the lognormal with this mean and 99th percentile (0 when p99 <= mean).

    ln p99 - ln mean = z σ - σ²/2; the smaller root. Ratios beyond the lognormal's reach (p99 / mean >
    e^(z²/2) ≈ 15) are clamped to the largest representable spread.
    """
    if p99 <= mean:
        return 0.0
    gap = math.log(p99 / mean)
    disc = Z_P99**2 - 2.0 * gap
    return Z_P99 - math.sqrt(max(disc, 0.0))


# --- the physical replica ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Physics:
    """Per-device quantities of one replica, precomputed once per configuration."""

    model: catalog.ModelArch
    acc: catalog.Accelerator
    tp: int
    engine: EngineTraits
    eff: perf_efficiency.Efficiency
    dense_weight_bytes: float  # per device, read every iteration (attention, router, norms, output head)
    expert_weight_bytes: float  # per device, one expert of every layer
    weight_bytes: float  # per device, everything resident
    kv_bytes_per_token: float  # per device
    kv_capacity_tokens: float  # whole replica
    memory_budget_bytes: float  # per device
    bandwidth: float  # effective bytes/s per device
    linear_flops_rate: float  # effective FLOP/s per device for weight GEMMs
    attention_flops_rate: float  # effective FLOP/s per device for attention (16-bit math)
    dense_params_per_token: float  # linear params a token multiplies by, excluding experts and output head
    expert_params: float  # one expert's params, all layers
    head_params: float  # output head
    allreduce_latency_s: float
    link_bytes_per_s: float


def weight_bytes(model: catalog.ModelArch, precision: str) -> float:
    """Bytes of all weights at `precision` (embeddings and output head stay 16-bit)."""
    per_param = _bytes_per_param(precision)
    body = model.total_params - model.embedding_params
    embedding_bytes = model.embedding_params * max(per_param, EMBEDDING_BYTES_PER_PARAM)
    return body * per_param + embedding_bytes


def kv_bytes_per_token(model: catalog.ModelArch, precision: str, tp: int = 1) -> float:
    """KV-cache bytes one token adds, summed over the replica's `tp` devices (GQA-aware).

    With more devices than KV heads each device still holds one head, so KV is replicated.
    """
    element = KV_BYTES_FP8 if precision == "fp8" else KV_BYTES_16BIT
    heads_total = max(model.kv_heads, tp)
    return 2.0 * model.layers * heads_total * model.head_dim * element


def _bytes_per_param(precision: str) -> float:
    """Weight bytes per parameter, rejecting unknown precisions."""
    try:
        return BYTES_PER_PARAM[precision]
    except KeyError:
        raise InvalidConfigError(
            f"unknown precision {precision!r}; valid: {', '.join(catalog.PRECISIONS)}"
        ) from None


def efficiency_for(acc: catalog.Accelerator, engine: str) -> perf_efficiency.Efficiency:
    """The calibrated efficiency factors for the accelerator's vendor and the engine."""
    try:
        return perf_efficiency.EFFICIENCIES[(acc.vendor, engine)]
    except KeyError:
        raise InvalidConfigError(f"engine {engine!r} does not run on {acc.vendor} accelerators") from None


def infeasibility(config: ReplicaConfig) -> str | None:
    """Why this configuration cannot run at all (None when it can): precision, engine, tp, memory."""
    return _infeasibility_cached(config)


@functools.lru_cache(maxsize=65536)
def _infeasibility_cached(config: ReplicaConfig) -> str | None:
    """See infeasibility (memoized: every capacity question asks it)."""
    _validate_names(config)
    model, acc = config.model_arch, config.accelerator_spec
    if config.precision not in acc.precisions:
        return f"{acc.id} does not support {config.precision} (supports {', '.join(acc.precisions)})"
    if not catalog.engine_supports(config.engine, acc):
        return f"engine {config.engine} does not run on {acc.vendor} accelerators ({acc.id})"
    if not catalog.engine_supports(config.engine, acc, config.role):
        return (
            f"engine {config.engine} does not serve {config.role} replicas on {acc.vendor} accelerators "
            f"({acc.id})"
        )
    if config.tp > acc.max_tp:
        return f"tp {config.tp} exceeds the {acc.id} limit of {acc.max_tp} devices per replica"
    if model.heads % config.tp != 0:
        return f"tp {config.tp} does not divide the {model.heads} attention heads of {model.id}"
    phys = _physics(config, None)
    if phys.weight_bytes > phys.memory_budget_bytes:
        need_gb = phys.weight_bytes / catalog.GB
        have_gb = phys.memory_budget_bytes / catalog.GB
        return (
            f"{model.id} at {config.precision} needs {need_gb:.1f} GB of weights per device at tp "
            f"{config.tp}, {acc.id} leaves {have_gb:.1f} GB"
        )
    if phys.kv_capacity_tokens < 1.0:
        return (
            f"{model.id} at {config.precision} fits on {acc.id} x{config.tp} but leaves no room for KV cache"
        )
    return None


def _validate_names(config: ReplicaConfig) -> None:
    """Reject malformed configurations (unknown ids or names) with a one-line error naming the field."""
    _ = config.model_arch, config.accelerator_spec  # raise UnknownIdError on unknown ids
    _bytes_per_param(config.precision)
    if config.role not in catalog.ROLES:
        raise InvalidConfigError(f"unknown role {config.role!r}; valid: {', '.join(catalog.ROLES)}")
    if config.engine not in catalog.ENGINES:
        raise InvalidConfigError(f"unknown engine {config.engine!r}; valid: {', '.join(catalog.ENGINES)}")
    if not isinstance(config.tp, int) or isinstance(config.tp, bool) or config.tp < 1:
        raise InvalidConfigError(f"tp must be a positive integer, got {config.tp!r}")


@functools.lru_cache(maxsize=65536)
def _physics(config: ReplicaConfig, efficiency: perf_efficiency.Efficiency | None) -> _Physics:
    """Per-device physics of a configuration (cached; efficiency override is for calibration)."""
    return _physics_cached(
        config.model_arch, config.accelerator_spec, config.precision, config.tp, config.engine, efficiency
    )


@functools.lru_cache(maxsize=4096)
def _physics_cached(
    model: catalog.ModelArch,
    acc: catalog.Accelerator,
    precision: str,
    tp: int,
    engine_name: str,
    efficiency: perf_efficiency.Efficiency | None,
) -> _Physics:
    """See _physics."""
    engine = engine_traits(engine_name, acc)
    eff = efficiency if efficiency is not None else efficiency_for(acc, engine_name)
    per_param = _bytes_per_param(precision)
    head_params = float(model.vocab_size * model.hidden_size)
    expert_params_all_layers = float(model.layers * model.expert_params) if model.is_moe else 0.0
    body_params = (
        float(model.total_params - model.embedding_params) - model.experts * expert_params_all_layers
    )
    # Weights read every iteration: transformer body (minus experts) and output head; the input embedding
    # is a gather of a few rows, not a full read.
    dense_bytes = body_params * per_param + head_params * max(per_param, EMBEDDING_BYTES_PER_PARAM)
    total_bytes = weight_bytes(model, precision)
    compute_precision = catalog.compute_precision(acc, precision)
    compute_eff = eff.compute_8bit if compute_precision in ("fp8", "int8") else eff.compute_16bit
    kv_per_token = kv_bytes_per_token(model, precision, tp)
    if engine.fraction_of_free:
        budget = float(acc.memory_bytes - RUNTIME_RESERVE_BYTES)
        free_per_device = (budget - total_bytes / tp) * engine.memory_fraction
    else:
        budget = acc.memory_bytes * engine.memory_fraction - RUNTIME_RESERVE_BYTES
        free_per_device = budget - total_bytes / tp
    capacity = max(free_per_device, 0.0) * tp / kv_per_token
    fast_link = acc.interconnect_bytes_per_s > PCIE_CLASS_BYTES_PER_S
    attention_peak = acc.dense_flops_per_s.get("bf16", acc.peak_flops_per_s("fp16"))
    return _Physics(
        model=model,
        acc=acc,
        tp=tp,
        engine=engine,
        eff=eff,
        dense_weight_bytes=dense_bytes / tp,
        expert_weight_bytes=(expert_params_all_layers * per_param) / tp,
        weight_bytes=total_bytes / tp,
        kv_bytes_per_token=kv_per_token / tp,
        kv_capacity_tokens=capacity,
        memory_budget_bytes=budget,
        bandwidth=acc.mem_bandwidth_bytes_per_s * eff.bandwidth,
        linear_flops_rate=acc.peak_flops_per_s(precision) * compute_eff,
        attention_flops_rate=attention_peak * eff.compute_16bit,
        dense_params_per_token=body_params,
        expert_params=expert_params_all_layers,
        head_params=head_params,
        allreduce_latency_s=ALLREDUCE_LATENCY_FAST_S if fast_link else ALLREDUCE_LATENCY_PCIE_S,
        link_bytes_per_s=acc.interconnect_bytes_per_s * eff.interconnect,
    )


# --- the one implementation of the step-time and queueing formulas -----------------------------------------
#
# Every formula below is written once, over numpy arrays: `_Rows` holds the physics and request sizes of Q
# replica questions as (Q, 1) columns, and the loads they are evaluated at are (Q, K) arrays, so a whole
# fleet's capacity questions (every service, pool type, precision, tp, role, chunk and request-size bucket)
# are answered by a few hundred array operations instead of millions of scalar calls. The scalar helpers
# (step_time_s, latency_at_rate, ...) evaluate the same functions on one row.

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Physics and request sizes of Q replica questions, each field a (Q, 1) column."""

    layers: FloatArray
    heads: FloatArray
    head_dim: FloatArray
    q_dim: FloatArray
    hidden: FloatArray
    tp: FloatArray
    is_moe: BoolArray
    experts: FloatArray
    active: FloatArray
    dense_params: FloatArray
    head_params: FloatArray
    expert_params: FloatArray
    dense_wbytes: FloatArray
    expert_wbytes: FloatArray
    kv_bpt: FloatArray
    kv_capacity: FloatArray
    bandwidth: FloatArray
    linear_rate: FloatArray
    attn_rate: FloatArray
    ar_lat: FloatArray
    link: FloatArray
    overlap: FloatArray
    overhead: FloatArray
    moe_eff: FloatArray
    chunk: FloatArray  # NaN: the engine does not chunk prefill
    has_chunk: BoolArray
    counts_decode: BoolArray
    # Request sizes: means, prompt p99, E[prompt^2] and the prompt lognormal's sigma.
    prompt: FloatArray
    output: FloatArray
    prompt_p99: FloatArray
    second_moment: FloatArray
    sigma: FloatArray
    # Engine limits that bound the sequence slots, and the slots themselves at the mean sizes (_batch_limit).
    max_batch: FloatArray
    reserves_full: BoolArray
    limit: FloatArray

    @classmethod
    def of(cls, items: Sequence[tuple[_Physics, RequestSizes]]) -> _Rows:
        """Columns for (physics, workload) pairs."""
        phys = np.array([_physics_vector(p) for p, _ in items], dtype=np.float64).reshape(len(items), -1)
        sizes = np.array(
            [(w.prompt_tokens, w.output_tokens, w.prompt_p99) for _, w in items], dtype=np.float64
        ).reshape(len(items), 3)
        return cls.from_arrays(phys, sizes)

    @classmethod
    def from_arrays(cls, phys: FloatArray, sizes: FloatArray) -> _Rows:
        """Columns from a (Q, len(_PHYSICS_COLUMNS)) physics matrix (rows of _physics_vector) and a (Q, 3)
        matrix of (prompt mean, output mean, prompt p99) tokens."""
        columns: dict[str, Any] = {name: phys[:, k : k + 1] for k, name in enumerate(_PHYSICS_COLUMNS)}
        flags: dict[str, Any] = {
            name: columns.pop(name) > 0.5
            for name in ("is_moe", "has_chunk", "counts_decode", "reserves_full")
        }
        prompt, output, prompt_p99 = sizes[:, 0:1], sizes[:, 1:2], sizes[:, 2:3]
        with np.errstate(all="ignore"):
            sigma = _lognormal_sigma_v(prompt, prompt_p99)
        rows = cls(
            **columns,
            **flags,
            prompt=prompt,
            output=output,
            prompt_p99=prompt_p99,
            second_moment=prompt**2 * np.exp(sigma**2),
            sigma=sigma,
            limit=np.zeros_like(prompt),
        )
        return rows.with_chunk(rows.chunk)

    def with_chunk(self, chunk: FloatArray) -> _Rows:
        """The same rows with chunked-prefill budgets `chunk` (NaN: no chunking), slots recomputed."""
        per_sequence = np.where(
            self.reserves_full, self.prompt + self.output, self.prompt + self.output / 2.0
        )
        has_chunk = ~np.isnan(chunk)
        slots = np.where(self.counts_decode & has_chunk, np.minimum(self.max_batch, chunk), self.max_batch)
        limit = np.minimum(slots, self.kv_capacity / per_sequence)
        return dataclasses.replace(self, chunk=chunk, has_chunk=has_chunk, limit=limit)

    def take(self, index: npt.NDArray[np.intp]) -> _Rows:
        """The rows at `index`."""
        return _Rows(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


# Physics fields of _Rows, in the order _physics_vector lists them.
_PHYSICS_COLUMNS: Final = (
    "layers",
    "heads",
    "head_dim",
    "q_dim",
    "hidden",
    "tp",
    "is_moe",
    "experts",
    "active",
    "dense_params",
    "head_params",
    "expert_params",
    "dense_wbytes",
    "expert_wbytes",
    "kv_bpt",
    "kv_capacity",
    "bandwidth",
    "linear_rate",
    "attn_rate",
    "ar_lat",
    "link",
    "overlap",
    "overhead",
    "moe_eff",
    "chunk",
    "has_chunk",
    "counts_decode",
    "max_batch",
    "reserves_full",
)
_PHYSICS_VECTORS: dict[int, tuple[_Physics, tuple[float, ...]]] = {}


def _physics_vector(p: _Physics) -> tuple[float, ...]:
    """The physics of one replica as the numbers _Rows stores (memoized per physics object)."""
    hit = _PHYSICS_VECTORS.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    m, e = p.model, p.engine
    chunk = e.prefill_chunk_tokens
    vector = (
        float(m.layers),
        float(m.heads),
        float(m.head_dim),
        float(m.heads * m.head_dim),
        float(m.hidden_size),
        float(p.tp),
        float(m.is_moe),
        float(m.experts),
        float(m.active_experts),
        p.dense_params_per_token,
        p.head_params,
        p.expert_params,
        p.dense_weight_bytes,
        p.expert_weight_bytes,
        p.kv_bytes_per_token,
        p.kv_capacity_tokens,
        p.bandwidth,
        p.linear_flops_rate,
        p.attention_flops_rate,
        p.allreduce_latency_s,
        p.link_bytes_per_s,
        p.eff.overlap_penalty,
        p.eff.step_overhead_s,
        p.eff.moe,
        math.nan if chunk is None else float(chunk),
        float(chunk is not None),
        float(e.budget_counts_decode),
        float(e.max_batch),
        float(e.reserves_full_sequence),
    )
    if len(_PHYSICS_VECTORS) > 65536:
        _PHYSICS_VECTORS.clear()
    _PHYSICS_VECTORS[id(p)] = (p, vector)
    return vector


def _lognormal_sigma_v(mean: FloatArray, p99: FloatArray) -> FloatArray:
    """lognormal_sigma over arrays."""
    gap = np.log(p99 / mean)
    disc = Z_P99**2 - 2.0 * gap
    out: FloatArray = np.where(p99 <= mean, 0.0, Z_P99 - np.sqrt(np.maximum(disc, 0.0)))
    return out


def _gemm_v(r: _Rows, weight_bytes_read: FloatArray, flops: FloatArray) -> FloatArray:
    """One class of GEMMs on its roofline, with the non-overlapped share of the smaller term."""
    memory_s = weight_bytes_read / r.bandwidth
    compute_s = flops / r.linear_rate
    return np.maximum(memory_s, compute_s) + r.overlap * np.minimum(memory_s, compute_s)


def _step_v(
    r: _Rows,
    decode_tokens: FloatArray | float,
    decode_context_tokens: FloatArray | float,
    prefill_tokens: FloatArray | float,
    prefill_attention_flops: FloatArray | float,
    prefill_context_tokens: FloatArray | float = 0.0,
) -> FloatArray:
    """Seconds of one engine iteration on one device of the replica (see step_time_s)."""
    tokens = decode_tokens + np.asarray(prefill_tokens)
    # Dense GEMMs: weights read once per iteration, 2 FLOPs per weight per token (head: sampled tokens only).
    sampled = decode_tokens + np.where(np.asarray(prefill_tokens) > 0, 1.0, 0.0)
    dense_flops = 2.0 * (r.dense_params * tokens + r.head_params * sampled) / r.tp
    time_s = _gemm_v(r, r.dense_wbytes, dense_flops)
    # Experts a batch of T routed tokens touches per layer: E (1 - (1 - k/E)^T) in expectation.
    touched = r.experts * (1.0 - (1.0 - r.active / r.experts) ** tokens)
    expert_flops = 2.0 * r.expert_params * r.active * tokens / r.tp
    time_s = time_s + np.where(r.is_moe, _gemm_v(r, r.expert_wbytes * touched, expert_flops) / r.moe_eff, 0.0)
    # Attention: stream every decode sequence's KV; FLOPs 4 d per cached token for decode, given for prefill.
    attention_flops = (4.0 * r.layers * r.q_dim * decode_context_tokens + prefill_attention_flops) / r.tp
    time_s = time_s + (decode_context_tokens + np.asarray(prefill_context_tokens)) * r.kv_bpt / r.bandwidth
    time_s = time_s + attention_flops / r.attn_rate
    # Two all-reduces per layer (after attention and after the MLP), ring algorithm.
    payload = tokens * r.hidden * ACTIVATION_BYTES
    per_call = r.ar_lat + 2.0 * (r.tp - 1.0) / r.tp * payload / r.link
    time_s = time_s + np.where(r.tp > 1.0, 2.0 * r.layers * per_call, 0.0)
    out: FloatArray = np.where(tokens <= 0.0, r.overhead, time_s + r.overhead)
    return out


def _decode_step_v(
    r: _Rows, batch: FloatArray | float, prefill: FloatArray | float, prompts: FloatArray | float
) -> FloatArray:
    """Iteration time with `batch` decoding sequences and `prefill` prompt tokens from `prompts` prompts."""
    batch, prefill, prompts = np.asarray(batch), np.asarray(prefill), np.asarray(prompts)
    context = batch * (r.prompt + r.output / 2.0)
    any_prompts = prompts > 0
    attn = prompts * 2.0 * r.layers * r.heads * r.head_dim
    attn = attn * (r.second_moment * np.minimum(1.0, prefill / np.maximum(prompts * r.prompt, 1e-9)))
    attn = np.where(any_prompts, attn, 0.0)
    # A prompt of L tokens cut into chunks of c re-reads L²/(2c) - L/2 earlier KV entries in all: per
    # prefilled token (token-weighted over lognormal L) E[L²] / (2 c E[L]) - 1/2.
    budget = _prefill_budget_v(r, batch)
    per_token = r.second_moment / (2.0 * budget * r.prompt) - 0.5
    rereads = any_prompts & r.has_chunk & (budget > 0.0)
    earlier_chunks = np.where(rereads, prefill * np.maximum(per_token, 0.0), 0.0)
    return _step_v(r, batch, context, prefill, attn, earlier_chunks)


def _prefill_budget_v(r: _Rows, running: FloatArray | float) -> FloatArray:
    """Prompt tokens one iteration may carry next to `running` decoding sequences (NaN: whole prompts)."""
    out: FloatArray = np.where(r.counts_decode, r.chunk - running, r.chunk)
    return out


# Request sizes for row helpers whose formula does not read them.
_UNIT_WORKLOAD: Final = RequestSizes(1.0, 1.0)


def _one(phys: _Physics, workload: RequestSizes | None = None) -> _Rows:
    """One row (sizes irrelevant when `workload` is None)."""
    return _Rows.of([(phys, workload or _UNIT_WORKLOAD)])


def step_time_s(
    phys: _Physics,
    decode_tokens: float,
    decode_context_tokens: float,
    prefill_tokens: float,
    prefill_attention_flops: float,
    prefill_context_tokens: float = 0.0,
) -> float:
    """Seconds of one engine iteration on one device of the replica.

    decode_tokens sequences each produce one token while reading `decode_context_tokens` KV entries in
    total; `prefill_tokens` prompt tokens are processed alongside, whose causal attention costs
    `prefill_attention_flops` (whole replica) and reads the `prefill_context_tokens` KV entries earlier
    chunks of those prompts wrote (chunked prefill re-reads them once per chunk).
    """
    with np.errstate(all="ignore"):
        value = _step_v(
            _one(phys),
            float(decode_tokens),
            float(decode_context_tokens),
            float(prefill_tokens),
            float(prefill_attention_flops),
            float(prefill_context_tokens),
        )
    return float(value.item())


def prefill_attention_flops(model: catalog.ModelArch, prompt_tokens: float, prompts: float = 1.0) -> float:
    """Causal self-attention FLOPs of `prompts` prompts of `prompt_tokens` tokens: 2 L² d per layer."""
    return prompts * 2.0 * model.layers * model.heads * model.head_dim * prompt_tokens**2


def _reserve_tokens(phys: _Physics, prompt: float, output: float) -> float:
    """KV tokens one sequence holds on average in steady state (engine reservation policy)."""
    return prompt + output if phys.engine.reserves_full_sequence else prompt + output / 2.0


def max_batch(
    config: ReplicaConfig,
    prompt_tokens: float,
    output_tokens: float,
    *,
    prefill_chunk_tokens: int | None = None,
) -> int:
    """Largest number of concurrent sequences of this size the replica holds (0: does not fit).

    These are the sequence slots the admission queue of `max_rate_under_slo` assumes; pass the chunk it
    chose (`RatePrediction.prefill_chunk_tokens`), since a budget that counts decode tokens caps them.
    """
    if infeasibility(config) is not None:
        return 0
    phys = _physics(config, None)
    if prefill_chunk_tokens is not None:
        phys = _with_chunk(phys, prefill_chunk_tokens)
    return int(_batch_limit(phys, prompt_tokens, output_tokens, phys.engine.reserves_full_sequence))


def _batch_limit(phys: _Physics, prompt: float, output: float, full_reservation: bool) -> float:
    """Concurrency bound from KV capacity and the engine's batch cap (fractional)."""
    per_sequence = prompt + output if full_reservation else prompt + output / 2.0
    slots = float(phys.engine.max_batch)
    chunk = phys.engine.prefill_chunk_tokens
    if phys.engine.budget_counts_decode and chunk is not None:
        # Every running sequence takes one token of the iteration budget (vLLM also refuses
        # max_num_seqs above max_num_batched_tokens).
        slots = min(slots, float(chunk))
    return min(slots, phys.kv_capacity_tokens / per_sequence)


# --- offline throughput ------------------------------------------------------------------------------------


def offline_throughput(
    config: ReplicaConfig,
    prompt_tokens: float,
    output_tokens: float,
    *,
    beam_width: int = 1,
    efficiency: perf_efficiency.Efficiency | None = None,
) -> OfflinePrediction:
    """Steady-state offline throughput of one replica with every request queued (trtllm-bench, MLPerf).

    In steady state B sequences decode together and each iteration also prefills the B / output prompts
    that replace the finished ones, so an iteration carries B decode and B * prompt / output prefill tokens.
    B is the largest batch memory, the engine cap and the iteration token budget allow: throughput B / t(B)
    only grows with B. With beam search (`beam_width` > 1, MLPerf GPT-J) every request decodes that many
    sequences, each holding its own KV, and counts one of them as output. Raises InvalidConfigError when
    the configuration cannot run (see `infeasibility`).
    """
    reason = infeasibility(config)
    if reason is not None:
        raise InvalidConfigError(reason)
    phys = _physics(config, efficiency)
    model = phys.model
    if prompt_tokens + output_tokens > model.max_context_tokens:
        raise InvalidConfigError(
            f"{prompt_tokens:.0f}+{output_tokens:.0f} tokens exceed the {model.max_context_tokens}-token "
            f"context of {model.id}"
        )
    beams = float(beam_width)
    batch = _batch_limit(phys, prompt_tokens, output_tokens, phys.engine.reserves_full_sequence) / beams
    chunk = phys.engine.prefill_chunk_tokens
    if chunk is not None:
        batch = min(batch, max(1.0, chunk / (beams + prompt_tokens / output_tokens)))
    if batch < 1.0:
        # Not even one sequence of this length fits next to the weights.
        raise InvalidConfigError(
            f"{model.id} on {phys.acc.id} x{phys.tp} holds {phys.kv_capacity_tokens:.0f} KV tokens, "
            f"fewer than one {prompt_tokens:.0f}+{output_tokens:.0f}-token sequence"
        )
    new_prompts = batch / output_tokens
    step_s = step_time_s(
        phys,
        decode_tokens=batch * beams,
        decode_context_tokens=batch * beams * (prompt_tokens + output_tokens / 2.0),
        prefill_tokens=new_prompts * prompt_tokens,
        prefill_attention_flops=prefill_attention_flops(model, prompt_tokens, new_prompts),
    )
    tokens_per_s = batch / step_s
    kv_bytes = batch * beams * _reserve_tokens(phys, prompt_tokens, output_tokens) * phys.kv_bytes_per_token
    ttft_s = _prefill_alone_s(phys, prompt_tokens)
    bound = _bound_of(phys, batch, prompt_tokens, output_tokens)
    return OfflinePrediction(
        output_tokens_per_s=tokens_per_s,
        requests_per_s=tokens_per_s / output_tokens,
        batch=int(batch),
        weights_bytes_per_device=phys.weight_bytes,
        kv_bytes_per_device=kv_bytes,
        memory_bytes_per_device=phys.weight_bytes + kv_bytes + RUNTIME_RESERVE_BYTES,
        ttft_ms=ttft_s * 1e3,
        itl_ms=step_s * 1e3,
        step_ms=step_s * 1e3,
        bound=bound,
    )


def _bound_of(phys: _Physics, batch: float, prompt: float, output: float) -> str:
    """What limits the offline batch or step: 'memory-capacity', 'batch-cap', 'compute' or 'bandwidth'."""
    per_sequence = _reserve_tokens(phys, prompt, output)
    if phys.kv_capacity_tokens / per_sequence <= batch + 1e-9:
        return "memory-capacity"
    if batch >= phys.engine.max_batch - 1e-9:
        return "batch-cap"
    tokens = batch * (1.0 + prompt / output)
    compute_s = 2.0 * phys.dense_params_per_token * tokens / phys.tp / phys.linear_flops_rate
    memory_s = phys.dense_weight_bytes / phys.bandwidth
    return "compute" if compute_s > memory_s else "bandwidth"


def _prefill_alone_v(r: _Rows, prompt_tokens: FloatArray) -> FloatArray:
    """Time to prefill one prompt on an idle replica (chunked when the engine chunks), per row (Q, 1).

    Chunk i of n attends to the i chunks before it plus itself (causal) and re-reads their KV. Every chunk
    carries the same tokens, and an iteration's time is affine in its attention FLOPs and the KV it
    re-reads (step_time_s), so the n iterations sum to n iterations at the mean of those: i = (n - 1) / 2.
    """
    chunk = np.where(r.has_chunk, r.chunk, prompt_tokens)
    chunks = np.maximum(1.0, np.ceil(prompt_tokens / chunk))
    per_chunk = prompt_tokens / chunks
    done = per_chunk * (chunks - 1.0) / 2.0
    attn = 2.0 * r.layers * r.heads * r.head_dim * per_chunk * (2.0 * done + per_chunk)
    out: FloatArray = chunks * _step_v(r, 0.0, 0.0, per_chunk, attn, done)
    return out


def _prefill_alone_s(phys: _Physics, prompt_tokens: float) -> float:
    """Time to prefill one prompt on an idle replica (chunked when the engine chunks)."""
    with np.errstate(all="ignore"):
        return float(_prefill_alone_v(_one(phys), np.full((1, 1), float(prompt_tokens))).item())


# --- serving under load -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Loads:
    """Latencies of rows at given loads ((Q, K) arrays, seconds); `ok` False where it cannot keep up."""

    ok: BoolArray
    rate: FloatArray
    batch: FloatArray
    step: FloatArray
    ttft_p50: FloatArray
    ttft_p99: FloatArray
    itl_p50: FloatArray
    itl_p99: FloatArray
    prefill_utilization: FloatArray
    # Means (what benchmarks such as TensorRT-LLM's online tables and vLLM's bench serve report beside
    # percentiles).
    ttft_mean: FloatArray
    itl_mean: FloatArray
    # p99 over requests of each request's mean inter-token time (MLPerf's TPOT; see _tpot_p99_v).
    tpot_p99: FloatArray


def _steady_v(r: _Rows, rate: FloatArray, with_prefill: bool) -> tuple[BoolArray, FloatArray, FloatArray]:
    """Fixed point of Little's law B = λ · output · t(B): (stable, batch, mean step seconds), per element.

    The damped iteration from B = 1; an element that overshoots the slot limit is unstable; one still
    moving after FIXED_POINT_STEPS is taken where it stands if within the limit.
    """
    limit = r.limit
    shape = np.broadcast(rate, limit).shape
    batch = np.ones(shape)
    step = np.broadcast_to(_decode_step_v(r, 1.0, 0.0, 0.0), shape).copy()
    done = np.zeros(shape, dtype=np.bool_)
    stable = np.zeros(shape, dtype=np.bool_)
    out_batch = np.zeros(shape)
    out_step = np.zeros(shape)
    for _ in range(FIXED_POINT_STEPS):
        prefill = rate * r.prompt * step if with_prefill else 0.0
        prompts = rate * step if with_prefill else 0.0
        new_step = _decode_step_v(r, np.maximum(batch, 1.0), prefill, prompts)
        new_batch = rate * r.output * new_step
        over = ~done & (new_batch > limit)
        converged = (
            ~done
            & ~over
            & (np.abs(new_batch - batch) <= 1e-6 * np.maximum(batch, 1.0))
            & (np.abs(new_step - step) <= 1e-9)
        )
        out_batch = np.where(converged, new_batch, out_batch)
        out_step = np.where(converged, new_step, out_step)
        stable |= converged
        done |= over | converged
        if done.all():
            return stable, out_batch, out_step
        batch = np.where(done, batch, 0.5 * (batch + new_batch))
        step = np.where(done, step, new_step)
    # A slowly converging iteration means λ sits at the edge of stability: treat as unstable if it drifts.
    late = ~done & (batch <= limit)
    return stable | late, np.where(late, batch, out_batch), np.where(late, step, out_step)


def _queue_tail_v(
    rate: FloatArray, mean_service_s: FloatArray, second_moment_s2: FloatArray
) -> tuple[BoolArray, FloatArray, FloatArray, FloatArray]:
    """M/G/1 waiting time (stable, p50, p99, utilization) from Pollaczek-Khinchine and an exponential tail."""
    rho = rate * mean_service_s
    mean_wait = rate * second_moment_s2 / (2.0 * (1.0 - rho))
    # P(W > w) ≈ ρ exp(-w ρ / E[W]): the heavy-traffic exponential tail (Kingman), exact for M/M/1.
    conditional = mean_wait / rho
    busy = rho > 0.0

    def quantile(tail: float) -> FloatArray:
        out: FloatArray = np.where(busy & (rho > tail), conditional * np.log(rho / tail), 0.0)
        return out

    return rho < 1.0, quantile(0.5), quantile(TAIL_PROBABILITY), np.where(busy, rho, 0.0)


# z-scores used by the arrival-size quantile (scalar constants, computed once).
_Z_TAIL: Final = {tail: _STANDARD_NORMAL.inv_cdf(1.0 - tail) for tail in (0.5, TAIL_PROBABILITY)}


def _arrival_tokens_quantile_v(r: _Rows, arrivals_mean: FloatArray, tail: float) -> FloatArray:
    """Prompt tokens arriving in one iteration that are exceeded with probability `tail`.

    Arrivals are Poisson (mean `arrivals_mean`) with lognormal prompt lengths. At most one prompt
    arrives in most iterations when the mean is small: then P(X > x) ≈ P(any arrival) · P(L > x), so x
    is the prompt-length quantile at tail / P(any arrival). Many arrivals: the compound sum is about
    normal with mean λt·E[L] and variance λt·E[L²]. The larger of the two is taken.
    """
    any_arrival = 1.0 - np.exp(-arrivals_mean)
    z = special.ndtri(1.0 - tail / any_arrival)
    spread = np.exp(np.log(r.prompt) - r.sigma**2 / 2.0 + r.sigma * z)
    single = np.where(r.sigma > 0.0, spread, r.prompt)
    summed = arrivals_mean * r.prompt + _Z_TAIL[tail] * np.sqrt(arrivals_mean * r.second_moment)
    out: FloatArray = np.where(any_arrival <= tail, 0.0, np.maximum(single, summed))
    return out


# Below this many batch slots the Erlang C probability is computed exactly; above, Halfin-Whitt's
# many-server approximation (exact in the limit, within a few percent from ~50 servers).
ERLANG_EXACT_MAX_SERVERS: Final = 64
_SQRT_TAU: Final = math.sqrt(math.tau)


def _admission_wait_v(
    slots: FloatArray, offered: FloatArray, hold_s: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """(p50, p99) wait for a free batch slot: M/M/c with c = KV/engine slots, each held `hold_s`.

    A request is admitted only when a sequence slot (KV capacity, engine max batch) is free; `offered`
    is the mean number of slots in use (λ · hold). Erlang C gives the chance to wait (Erlang B in closed
    form, a / c Poisson probability over its distribution function, for few servers); the wait is then
    exponential with rate c/hold - λ. Infinite where the slots cannot keep up.
    """
    servers, idle, saturated, p_wait = _erlang_c_v(slots, offered)
    drain_rate = servers / hold_s - offered / hold_s

    def quantile(tail: float) -> FloatArray:
        wait = np.where(p_wait > tail, np.log(p_wait / tail) / drain_rate, 0.0)
        out: FloatArray = np.where(idle, 0.0, np.where(saturated, math.inf, wait))
        return out

    return quantile(0.5), quantile(TAIL_PROBABILITY)


def _erlang_c_v(
    slots: FloatArray, offered: FloatArray
) -> tuple[FloatArray, BoolArray, BoolArray, FloatArray]:
    """(servers, idle, saturated, P(wait)) of M/M/c with c = floor(slots) and `offered` Erlangs."""
    servers = np.floor(slots)
    idle = (servers < 1.0) | (offered <= 0.0)
    saturated = ~idle & (offered >= servers)
    # Erlang B = P(N = c) / P(N <= c) for N ~ Poisson(offered).
    pmf = np.exp(servers * np.log(offered) - offered - special.gammaln(servers + 1.0))
    blocking = pmf / special.pdtr(servers, offered)
    utilization = offered / servers
    exact_wait = blocking / (1.0 - utilization * (1.0 - blocking))
    beta = (servers - offered) / np.sqrt(offered)
    density = np.exp(-(beta**2) / 2.0) / _SQRT_TAU
    many_wait = np.where(density > 0.0, 1.0 / (1.0 + beta * special.ndtr(beta) / density), 0.0)
    p_wait = np.where(servers <= ERLANG_EXACT_MAX_SERVERS, exact_wait, many_wait)
    return servers, idle, saturated, p_wait


def _admission_mean_v(slots: FloatArray, offered: FloatArray, hold_s: FloatArray) -> FloatArray:
    """Mean wait for a free batch slot (M/M/c): P(wait) / (c/hold - λ); infinite when saturated."""
    servers, idle, saturated, p_wait = _erlang_c_v(slots, offered)
    mean = p_wait / (servers / hold_s - offered / hold_s)
    out: FloatArray = np.where(idle, 0.0, np.where(saturated, math.inf, mean))
    return out


def _queue_mean_v(rate: FloatArray, mean_service_s: FloatArray, second_moment_s2: FloatArray) -> FloatArray:
    """Mean M/G/1 wait (Pollaczek-Khinchine): λ E[S²] / (2 (1 - ρ)); infinite at ρ >= 1."""
    rho = rate * mean_service_s
    out: FloatArray = np.where(rho < 1.0, rate * second_moment_s2 / (2.0 * (1.0 - rho)), math.inf)
    return out


def _admission_wait(slots: float, offered: float, hold_s: float) -> tuple[float, float]:
    """(p50, p99) wait for a free batch slot (scalar; see _admission_wait_v)."""
    with np.errstate(all="ignore"):
        p50, p99 = _admission_wait_v(
            np.array(float(slots)), np.array(float(offered)), np.array(float(hold_s))
        )
    return float(p50), float(p99)


def _serving_path_v(prompt_tokens: FloatArray) -> FloatArray:
    """The serving path's own time to a first token outside the engine's iterations (seconds).

    Scheduling, output processing, detokenization and the hand-off between the engine core and the API
    process: SERVING_PATH_FIXED_S per request, whatever the prompt (see its definition).
    """
    out: FloatArray = np.full_like(prompt_tokens, SERVING_PATH_FIXED_S, dtype=np.float64)
    return out


def _own_prefill_v(
    r: _Rows, running: FloatArray, budget: FloatArray, prompt: FloatArray, others: FloatArray
) -> FloatArray:
    """Seconds of the iterations that carry one `prompt`-token prompt, once it is at the head of the queue.

    The prompt is cut into n = ceil(prompt / budget) chunks, one per iteration; every one of those
    iterations also decodes the `running` sequences (and reads every weight), and carries the mean prompt
    tokens of other requests that arrive meanwhile (`others`, at most what the budget leaves). Draining the
    prompt at the full iterations' token rate instead (prompt / (budget / t_full)) would count only the
    prompt's share of an iteration: a short prompt still waits for a whole iteration.
    """
    chunks = np.maximum(1.0, np.ceil(prompt / np.maximum(budget, 1.0)))
    own = prompt / chunks
    tokens = own + np.minimum(others, np.maximum(budget - own, 0.0))
    out: FloatArray = chunks * _decode_step_v(r, running, tokens, tokens / r.prompt)
    return out


def _tpot_p99_v(
    r: _Rows,
    rate: FloatArray,
    batch: FloatArray | float,
    step: FloatArray,
    budget: FloatArray | float,
    batch_varies: bool = True,
) -> FloatArray:
    """p99 over requests of each request's mean inter-token time (MLPerf's TPOT), seconds.

    A request's TPOT averages the iterations it decodes in, so it moves with what those iterations carry
    on average over its own lifetime, not with one iteration's tail (that is ITL p99):

    - the running batch: with Poisson arrivals each holding a slot for about `output` iterations, the batch
      is the population of an M/G/inf system (Poisson, mean B); its average over a window as long as the
      holding time has variance 2B/3 (autocovariance B (1 - tau / H) for a fixed holding time H), capped
      at the slot limit. A closed loop (`batch_varies` False) holds the batch fixed;
    - the prompt tokens riding those iterations: compound Poisson per iteration (mean λ t E[L], variance
      λ t E[L²]), averaged over the request's `output` iterations, capped by the prefill budget.

    The two independent deviations, each taken at its p99 through the iteration time, add in quadrature
    on top of the mean iteration `step`.
    """
    running = np.maximum(batch, 1.0)
    prefill = np.minimum(rate * step * r.prompt, np.maximum(budget, 0.0))
    base = _decode_step_v(r, running, prefill, prefill / r.prompt)
    spread = Z_P99 * np.sqrt(rate * step * r.second_moment / np.maximum(r.output, 1.0))
    prefill_hi = np.minimum(prefill + spread, np.maximum(budget, prefill))
    from_prefill = _decode_step_v(r, running, prefill_hi, prefill_hi / r.prompt) - base
    if batch_varies:
        batch_hi = np.minimum(
            running + Z_P99 * np.sqrt(2.0 * np.maximum(batch, 0.0) / 3.0), np.maximum(r.limit, running)
        )
        from_batch = _decode_step_v(r, batch_hi, prefill, prefill / r.prompt) - base
    else:
        from_batch = np.zeros_like(from_prefill)
    out: FloatArray = step + np.sqrt(np.maximum(from_prefill, 0.0) ** 2 + np.maximum(from_batch, 0.0) ** 2)
    return out


def _aggregated_loads(r: _Rows, rate: FloatArray, batch: FloatArray, step: FloatArray) -> _Loads:
    """Continuous batching with chunked prefill at a steady state (rate, batch, step)."""
    running = np.maximum(batch, 1.0)
    mean_prompt, p99_prompt = r.prompt, r.prompt_p99
    # Prompt tokens drain at the budget of each iteration: the chunk budget (less the decode tokens where
    # the engine counts them) per iteration carrying a full chunk; engines without chunking run whole
    # prompts (one per iteration, at least).
    budget = np.where(r.has_chunk, _prefill_budget_v(r, running), np.maximum(p99_prompt, mean_prompt))
    # Below one token, decoding sequences fill the whole token budget: prompts never get in.
    ok = budget >= 1.0
    full = _decode_step_v(r, running, budget, budget / mean_prompt)
    service_rate_tok = budget / full
    stable, wait_p50, wait_p99, rho = _queue_tail_v(
        rate, mean_prompt / service_rate_tok, r.second_moment / service_rate_tok**2
    )
    ok &= stable
    # Admission: a request first needs a free sequence slot (KV capacity, engine batch cap).
    admit_p50, admit_p99 = _admission_wait_v(r.limit, batch, r.output * step)
    ok &= np.isfinite(admit_p99)
    # TTFT: the serving path's fixed cost (front end, tokenization, scheduling, detokenization), waiting for
    # a slot and for the prefill budget, the iteration in flight, then the prompt's own iterations: a prompt
    # rides whole iterations, each also decoding the running sequences and reading every weight.
    path_p50, path_p99 = _serving_path_v(mean_prompt), _serving_path_v(p99_prompt)
    own_p50 = _own_prefill_v(r, running, budget, mean_prompt, rate * step * mean_prompt)
    own_p99 = _own_prefill_v(r, running, budget, p99_prompt, rate * step * mean_prompt)
    ttft_p50 = path_p50 + admit_p50 + wait_p50 + own_p50 + step / 2.0
    ttft_p99 = path_p99 + admit_p99 + wait_p99 + own_p99 + step
    ttft_mean = (
        path_p50
        + _admission_mean_v(r.limit, batch, r.output * step)
        + _queue_mean_v(rate, mean_prompt / service_rate_tok, r.second_moment / service_rate_tok**2)
        + own_p50
        + step / 2.0
    )
    # ITL: an iteration carries the prompt tokens that arrived during the previous one plus any backlog,
    # capped by the budget. Every iteration emits a token per running sequence, so the p99 gap is the
    # iteration whose prefill load has a 1% chance of being exceeded.
    backlog_p99 = wait_p99 * rate * mean_prompt
    backlog_p50 = wait_p50 * rate * mean_prompt
    tokens_p99 = np.minimum(
        _arrival_tokens_quantile_v(r, rate * step, TAIL_PROBABILITY) + backlog_p99, budget
    )
    tokens_p50 = np.minimum(_arrival_tokens_quantile_v(r, rate * step, 0.5) + backlog_p50, budget)
    itl_p99 = _decode_step_v(r, running, tokens_p99, tokens_p99 / mean_prompt)
    itl_p50 = _decode_step_v(r, running, tokens_p50, tokens_p50 / mean_prompt)
    itl_p99 = np.maximum(itl_p99, itl_p50)
    tpot_p99 = _tpot_p99_v(r, rate, batch, step, budget)
    # The mean gap is the mean iteration: the steady state's step already carries the mean prefill load.
    return _Loads(ok, rate, batch, step, ttft_p50, ttft_p99, itl_p50, itl_p99, rho, ttft_mean, step, tpot_p99)


def _decode_loads(r: _Rows, rate: FloatArray, batch: FloatArray, step: FloatArray) -> _Loads:
    """Decode-only replica at a steady state: sequences arrive with their KV computed, no prefill."""
    # Batch membership varies (Poisson arrivals, output lengths): p99 step at the p99 of a Poisson batch.
    batch_p99 = batch + Z_P99 * np.sqrt(np.maximum(batch, 0.0))
    step_p99 = _decode_step_v(r, np.maximum(np.minimum(batch_p99, r.limit), 1.0), 0.0, 0.0)
    admit_p50, admit_p99 = _admission_wait_v(r.limit, batch, r.output * step)
    ok = np.isfinite(admit_p99)
    zero = np.zeros_like(batch)
    admit_mean = _admission_mean_v(r.limit, batch, r.output * step)
    return _Loads(
        ok,
        rate,
        batch,
        step,
        admit_p50 + step,
        admit_p99 + step_p99,
        step,
        step_p99,
        zero,
        admit_mean + step,
        step,
        _tpot_p99_v(r, rate, batch, step, 0.0),
    )


def kv_transfer_s(phys: _Physics, prompt_tokens: float) -> float:
    """Shipping one prompt's KV cache from a prefill replica to a decode replica over RDMA."""
    return float(_kv_transfer_v(phys.kv_bytes_per_token, float(phys.tp), prompt_tokens))


def _kv_transfer_v(kv_bpt: Any, tp: Any, prompt_tokens: Any) -> Any:
    """KV transfer seconds (arrays or floats)."""
    total_bytes = prompt_tokens * kv_bpt * tp
    return KV_TRANSFER_LATENCY_S + total_bytes / (KV_TRANSFER_BYTES_PER_S_PER_DEVICE * tp)


@dataclasses.dataclass(frozen=True)
class _PrefillRows:
    """Rate-independent quantities of prefill-only rows, (Q, 1) each."""

    prompts_per_batch: FloatArray
    batch_s: FloatArray
    service_rate_tok: FloatArray
    # One mean prompt prefilled on an idle replica.
    alone_mean: FloatArray
    alone_p50: FloatArray
    alone_p99: FloatArray
    transfer_p50: FloatArray
    transfer_p99: FloatArray


def _prefill_rows(r: _Rows) -> _PrefillRows:
    """Prompts batched up to the token budget: the batch's time, the prefill token rate, TTFT parts."""
    chunk = np.where(r.has_chunk, r.chunk, np.maximum(r.prompt_p99, 1.0))
    prompts_per_batch = np.maximum(chunk / r.prompt, 1.0)
    batch_attn = prompts_per_batch * 2.0 * r.layers * r.heads * r.head_dim * 1.0**2 * r.second_moment
    batch_s = _step_v(r, 0.0, 0.0, prompts_per_batch * r.prompt, batch_attn)
    service_rate_tok = prompts_per_batch * r.prompt / batch_s
    mean_service = r.prompt / service_rate_tok
    alone_mean = _prefill_alone_v(r, r.prompt)
    return _PrefillRows(
        prompts_per_batch=prompts_per_batch,
        batch_s=batch_s,
        service_rate_tok=service_rate_tok,
        alone_mean=alone_mean,
        alone_p50=np.maximum(alone_mean, mean_service),
        alone_p99=np.maximum(_prefill_alone_v(r, r.prompt_p99), r.prompt_p99 / service_rate_tok),
        transfer_p50=_kv_transfer_v(r.kv_bpt, r.tp, r.prompt),
        transfer_p99=_kv_transfer_v(r.kv_bpt, r.tp, r.prompt_p99),
    )


def _prefill_loads(r: _Rows, pre: _PrefillRows, rate: FloatArray) -> _Loads:
    """Prefill-only replica: M/G/1 on prompt tokens served in budget-sized batches, + KV transfer."""
    srt = pre.service_rate_tok
    ok, wait_p50, wait_p99, rho = _queue_tail_v(rate, r.prompt / srt, r.second_moment / srt**2)
    path_p50, path_p99 = _serving_path_v(r.prompt), _serving_path_v(r.prompt_p99)
    ttft_p50 = path_p50 + wait_p50 + pre.alone_p50 + pre.transfer_p50
    ttft_p99 = path_p99 + wait_p99 + pre.alone_p99 + pre.transfer_p99
    ttft_mean = (
        path_p50
        + _queue_mean_v(rate, r.prompt / srt, r.second_moment / srt**2)
        + pre.alone_p50
        + pre.transfer_p50
    )
    shape = np.broadcast(rate, srt).shape
    zero = np.zeros(shape)
    batch = np.broadcast_to(pre.prompts_per_batch, shape)
    step = np.broadcast_to(pre.batch_s, shape)
    return _Loads(
        np.broadcast_to(ok, shape),
        rate,
        batch,
        step,
        ttft_p50,
        ttft_p99,
        zero,
        zero,
        rho,
        ttft_mean,
        zero,
        zero,
    )


# The steady batch at a given rate: a grid over the slot range, then bisection within the first cell that
# holds a root (2^-60 of a cell: exact to double precision).
STEADY_GRID_POINTS: Final = 16
STEADY_BISECTION_STEPS: Final = 60


def _steady_batch_v(r: _Rows, role: str, rate: FloatArray) -> tuple[BoolArray, FloatArray]:
    """(stable, B): the smallest decode batch with B = λ · output · t(B) within the slot limit, per row.

    In the explicit steady state (_search_step) a batch B sustains the rate B / (output · t(B)); the root is
    where that equals λ. A grid over (0, limit] finds the first load at which sequences leave at least as
    fast as they arrive, bisection pins the root between it and the grid point before. Stable where the
    root lies within the slot limit. Unlike a damped iteration this converges near saturation, where the
    rate a batch sustains flattens (dλ/dB -> 0) and the batch climbs steeply with the rate: there an
    iteration stopped after a fixed number of steps sits well below the batch, and so below the ITL and
    TTFT, the engine reaches.
    """
    top = np.maximum(r.limit, 1.0)
    demand = rate * r.output
    fractions = np.arange(1, STEADY_GRID_POINTS + 1, dtype=np.float64).reshape(1, -1) / STEADY_GRID_POINTS
    grid = top * fractions
    keeps_up = grid - demand * _search_step(r, role, grid) >= 0.0
    stable = keeps_up.any(axis=1, keepdims=True)
    first = np.argmax(keeps_up, axis=1).reshape(-1, 1)
    hi = np.take_along_axis(grid, first, axis=1)
    lo = np.where(first > 0, np.take_along_axis(grid, np.maximum(first - 1, 0), axis=1), 0.0)
    for _ in range(STEADY_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        behind = mid - demand * _search_step(r, role, mid) < 0.0
        lo = np.where(behind, mid, lo)
        hi = np.where(behind, hi, mid)
    # No arrivals: nothing decodes (the bisection would only approach 0).
    batch = np.where(demand <= 0.0, 0.0, np.where(stable, hi, top))
    return stable & (batch <= r.limit), batch


def _loads_at_rate(r: _Rows, role: str, rate: FloatArray) -> _Loads:
    """Latencies of rows of one role at arrival rates `rate` (the steady state of _steady_batch_v)."""
    if role == "prefill":
        return _prefill_loads(r, _prefill_rows(r), rate)
    stable, batch = _steady_batch_v(r, role, rate)
    step = _search_step(r, role, batch)
    loads = (
        _aggregated_loads(r, rate, batch, step) if role != "decode" else _decode_loads(r, rate, batch, step)
    )
    return dataclasses.replace(loads, ok=loads.ok & stable)


def _prediction(loads: _Loads, i: int = 0, j: int = 0) -> LoadPrediction | None:
    """Element (i, j) as a LoadPrediction (None when the replica cannot keep up there)."""
    if not bool(loads.ok[i, j]):
        return None
    return LoadPrediction(
        rate_rps=float(loads.rate[i, j]) if np.ndim(loads.rate) else float(loads.rate),
        batch=float(loads.batch[i, j]),
        ttft_p50_ms=float(loads.ttft_p50[i, j]) * 1e3,
        ttft_p99_ms=float(loads.ttft_p99[i, j]) * 1e3,
        itl_p50_ms=float(loads.itl_p50[i, j]) * 1e3,
        itl_p99_ms=float(loads.itl_p99[i, j]) * 1e3,
        prefill_utilization=float(loads.prefill_utilization[i, j]),
        step_ms=float(loads.step[i, j]) * 1e3,
        ttft_mean_ms=float(np.broadcast_to(loads.ttft_mean, loads.ok.shape)[i, j]) * 1e3,
        itl_mean_ms=float(np.broadcast_to(loads.itl_mean, loads.ok.shape)[i, j]) * 1e3,
        tpot_p99_ms=float(np.broadcast_to(loads.tpot_p99, loads.ok.shape)[i, j]) * 1e3,
    )


def latency_at_rate(
    config: ReplicaConfig,
    workload: RequestSizes,
    rate_rps: float,
    *,
    efficiency: perf_efficiency.Efficiency | None = None,
    prefill_chunk_tokens: int | None = None,
) -> LoadPrediction | None:
    """TTFT and ITL p50/p99 of one replica at `rate_rps` arrivals (Poisson); None when it cannot keep up.

    `prefill_chunk_tokens` runs the engine with that chunked-prefill budget (default: the engine's own).
    """
    _validate_chunk(config, prefill_chunk_tokens)
    reason = infeasibility(config)
    if reason is not None:
        raise InvalidConfigError(reason)
    phys = _physics(config, efficiency)
    if prefill_chunk_tokens is not None:
        phys = _with_chunk(phys, prefill_chunk_tokens)
    with np.errstate(all="ignore"):
        loads = _loads_at_rate(_Rows.of([(phys, workload)]), config.role, np.full((1, 1), float(rate_rps)))
    return _prediction(loads)


def latencies_at(
    items: Sequence[tuple[ReplicaConfig, RequestSizes, float]],
) -> list[LoadPrediction | None]:
    """latency_at_rate for many (configuration, sizes, rate) at once (engine-default chunks).

    Raises InvalidConfigError for a configuration that cannot run (see `infeasibility`).
    """
    out: list[LoadPrediction | None] = [None] * len(items)
    by_role: dict[str, list[int]] = {}
    for i, (config, _, _) in enumerate(items):
        reason = infeasibility(config)
        if reason is not None:
            raise InvalidConfigError(reason)
        by_role.setdefault(config.role, []).append(i)
    for role, index in by_role.items():
        rows = _Rows.of([(_physics(items[i][0], None), items[i][1]) for i in index])
        rates = np.array([float(items[i][2]) for i in index]).reshape(-1, 1)
        with np.errstate(all="ignore"):
            loads = _loads_at_rate(rows, role, rates)
        for k, i in enumerate(index):
            out[i] = _prediction(loads, k)
    return out


# Damped iterations solving a closed loop's throughput (converges geometrically; far more than needed).
CLOSED_LOOP_STEPS: Final = 200
# The iteration stops once every throughput moves less than this (relative) in a step.
CLOSED_LOOP_TOLERANCE: Final = 1e-12


def _closed_loads(r: _Rows, users: FloatArray, extra_path_s: float = 0.0) -> _Loads:
    """Aggregated replica with `users` requests always in flight (a closed loop: a benchmark's concurrency).

    Continuous batching as the engine runs it: of the requests in flight, those in the serving path
    (front end, tokenization) are not in the engine; the engine runs at most `limit` sequences (max_num_seqs,
    KV capacity, a budget that counts decode tokens) and the rest wait in its queue, never more than the
    users there are. Throughput X solves X = running / (output · t(running, X · t · prompt)) (each request
    holds its slot for about `output` iterations, prompt tokens arriving at X share them, at most the prefill
    budget per iteration), Little's law gives the engine's population users - X · path and the queue wait
    (population - limit) / X. Nothing diverges: past the admission limit TTFT grows linearly with the users
    and ITL stays at the full batch's iteration.
    """
    path = _serving_path_v(r.prompt) + extra_path_s
    slots = np.maximum(np.floor(r.limit), 1.0)
    budget_full = np.where(r.has_chunk, _prefill_budget_v(r, slots), np.maximum(r.prompt_p99, r.prompt))
    step = np.broadcast_to(_decode_step_v(r, 1.0, 0.0, 0.0), users.shape).copy()
    rate = users / (path + r.output * step)
    running = np.minimum(users, slots)
    for _ in range(CLOSED_LOOP_STEPS):
        inside = np.maximum(users - rate * path, 1e-9)
        running = np.minimum(inside, slots)
        budget = np.maximum(
            np.where(r.has_chunk, _prefill_budget_v(r, np.maximum(running, 1.0)), budget_full), 1.0
        )
        prefill = np.minimum(rate * step * r.prompt, budget)
        step = _decode_step_v(r, np.maximum(running, 1.0), prefill, prefill / r.prompt)
        served = np.minimum(running / (r.output * step), budget / (step * r.prompt))
        settled = np.abs(served - rate) <= CLOSED_LOOP_TOLERANCE * rate
        rate = 0.5 * (rate + served)
        if settled.all():
            break
    inside = np.maximum(users - rate * path, 1e-9)
    running = np.minimum(inside, slots)
    slot_wait = np.maximum(inside - slots, 0.0) / rate
    budget = np.maximum(
        np.where(r.has_chunk, _prefill_budget_v(r, np.maximum(running, 1.0)), budget_full), 1.0
    )
    full = _decode_step_v(r, np.maximum(running, 1.0), budget, budget / r.prompt)
    service = r.prompt * full / budget
    # Prompts queue for the prefill budget (M/G/1 at the loop's rate), never behind more than the other users.
    second = r.second_moment * (full / budget) ** 2
    stable, wait_p50, wait_p99, rho = _queue_tail_v(rate, service, second)
    wait_mean = _queue_mean_v(rate, service, second)
    most = (np.minimum(users, slots) - 1.0) * service
    wait_p50, wait_p99, wait_mean = (
        np.minimum(np.where(stable, w, np.inf), most) for w in (wait_p50, wait_p99, wait_mean)
    )
    others = rate * step * r.prompt
    own_p50 = _own_prefill_v(r, np.maximum(running, 1.0), budget, r.prompt, others)
    own_p99 = _own_prefill_v(r, np.maximum(running, 1.0), budget, r.prompt_p99, others)
    ttft_p50 = path + slot_wait + wait_p50 + own_p50 + step / 2.0
    ttft_p99 = _serving_path_v(r.prompt_p99) + extra_path_s + slot_wait + wait_p99 + own_p99 + step
    ttft_mean = path + slot_wait + wait_mean + own_p50 + step / 2.0
    tokens_p99 = np.minimum(
        _arrival_tokens_quantile_v(r, rate * step, TAIL_PROBABILITY) + wait_p99 * rate * r.prompt, budget
    )
    tokens_p50 = np.minimum(
        _arrival_tokens_quantile_v(r, rate * step, 0.5) + wait_p50 * rate * r.prompt, budget
    )
    itl_p99 = _decode_step_v(r, np.maximum(running, 1.0), tokens_p99, tokens_p99 / r.prompt)
    itl_p50 = _decode_step_v(r, np.maximum(running, 1.0), tokens_p50, tokens_p50 / r.prompt)
    itl_p99 = np.maximum(itl_p99, itl_p50)
    ok = np.broadcast_to(r.limit >= 1.0, users.shape)
    tpot_p99 = _tpot_p99_v(r, rate, running, step, budget, batch_varies=False)
    return _Loads(
        ok, rate, running, step, ttft_p50, ttft_p99, itl_p50, itl_p99, rho, ttft_mean, step, tpot_p99
    )


def latency_at_concurrency(
    config: ReplicaConfig,
    workload: RequestSizes,
    concurrency: float,
    *,
    efficiency: perf_efficiency.Efficiency | None = None,
    prefill_chunk_tokens: int | None = None,
    max_num_seqs: int | None = None,
    request_overhead_s: float = 0.0,
) -> LoadPrediction | None:
    """TTFT and ITL (mean, p50, p99) of an aggregated replica with `concurrency` requests kept in flight.

    What a concurrency sweep (`chipfit profile --concurrency`, vLLM's bench serve --max-concurrency)
    measures; `rate_rps` of the answer is the throughput the loop reaches. Unlike an open-loop rate, any
    concurrency has an answer: past the engine's admission limit the extra requests wait in its queue.
    `max_num_seqs` is the engine's sequence cap when the deployment sets one (vLLM --max-num-seqs; default
    the engine's own). `request_overhead_s` is a measured per-request front-end cost beyond
    SERVING_PATH_FIXED_S (profile_fit.Calibration.request_overhead_s): a request spends it outside the
    engine, so it lengthens the loop and TTFT. None only when not one request of this size fits.
    """
    if not (math.isfinite(request_overhead_s) and request_overhead_s >= 0):
        raise InvalidConfigError(f"request_overhead_s must be >= 0 seconds, got {request_overhead_s!r}")
    if config.role != "aggregated":
        raise InvalidConfigError(f"a closed loop is modelled for aggregated replicas, not {config.role!r}")
    if not (math.isfinite(concurrency) and concurrency >= 1):
        raise InvalidConfigError(f"concurrency must be >= 1, got {concurrency!r}")
    _validate_chunk(config, prefill_chunk_tokens)
    reason = infeasibility(config)
    if reason is not None:
        raise InvalidConfigError(reason)
    phys = _physics(config, efficiency)
    if prefill_chunk_tokens is not None:
        phys = _with_chunk(phys, prefill_chunk_tokens)
    phys = _with_max_num_seqs(phys, max_num_seqs)
    with np.errstate(all="ignore"):
        loads = _closed_loads(
            _Rows.of([(phys, workload)]), np.full((1, 1), float(concurrency)), float(request_overhead_s)
        )
    return _prediction(loads)


def _open_loop(
    config: ReplicaConfig,
    workload: RequestSizes,
    rate_rps: float,
    efficiency: perf_efficiency.Efficiency | None,
    max_num_seqs: int | None,
) -> LoadPrediction | None:
    """latency_at_rate, with the engine's sequence cap set to `max_num_seqs` when given."""
    if max_num_seqs is None:
        return latency_at_rate(config, workload, rate_rps, efficiency=efficiency)
    phys = _with_max_num_seqs(_physics(config, efficiency), max_num_seqs)
    with np.errstate(all="ignore"):
        loads = _loads_at_rate(_Rows.of([(phys, workload)]), config.role, np.full((1, 1), float(rate_rps)))
    return _prediction(loads)


def _with_max_num_seqs(phys: _Physics, max_num_seqs: int | None) -> _Physics:
    """The same replica with the engine's sequence cap set to `max_num_seqs` (None: unchanged)."""
    if max_num_seqs is None:
        return phys
    if not isinstance(max_num_seqs, int) or isinstance(max_num_seqs, bool) or max_num_seqs < 1:
        raise InvalidConfigError(f"max_num_seqs must be a positive integer, got {max_num_seqs!r}")
    return dataclasses.replace(phys, engine=dataclasses.replace(phys.engine, max_batch=max_num_seqs))


def latency_over_run(
    config: ReplicaConfig,
    workload: RequestSizes,
    rate_rps: float,
    duration_s: float,
    *,
    warmup_s: float = 0.0,
    efficiency: perf_efficiency.Efficiency | None = None,
    max_num_seqs: int | None = None,
    request_overhead_s: float = 0.0,
) -> LoadPrediction | None:
    """TTFT and ITL (mean, p50, p99) a benchmark of Poisson arrivals at `rate_rps` measures over a finite run.

    Arrivals run for `warmup_s + duration_s` seconds from an idle replica; the requests arriving in the last
    `duration_s` are measured (`chipfit profile --rate`, vLLM's bench serve --request-rate). Unlike
    latency_at_rate there is an answer at any rate, because a run is finite:

    - the engine can serve at most μ = the closed loop's throughput with every slot busy
      (latency_at_concurrency past the admission limit); above it the waiting queue grows at λ - μ, so a
      request arriving at time s waits (λ - μ) s / μ for a slot: continuous batching keeps the batch at
      the limit and ITL at the full batch's iteration, and TTFT grows with the run, not to infinity;
    - below μ the steady state (latency_at_rate) holds once the queue has had time to build: a queue
      started empty holds on average at most sqrt(2 (λ + μ) s / π) requests at time s (the driftless
      diffusion's mean, an upper bound for any λ <= μ), so near capacity TTFT is the smaller of the steady
      state's and that bound's (the queueing formula's 1 / (1 - ρ) needs a run longer than it to appear).

    Means and p50s use the mean measured arrival time (s̄ = warmup + duration / 2), p99s the last
    arrivals (warmup + 0.99 duration). `max_num_seqs` and `request_overhead_s` as in
    latency_at_concurrency. None only when not one request of this size fits.
    """
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise InvalidConfigError(f"rate must be a positive number of requests/s, got {rate_rps!r}")
    if not (math.isfinite(duration_s) and duration_s > 0 and math.isfinite(warmup_s) and warmup_s >= 0):
        raise InvalidConfigError(
            f"duration_s must be > 0 and warmup_s >= 0, got {duration_s!r}, {warmup_s!r}"
        )
    if config.role != "aggregated":
        raise InvalidConfigError(f"a finite run is modelled for aggregated replicas, not {config.role!r}")
    slots = max_batch(config, workload.prompt_tokens, workload.output_tokens)
    if max_num_seqs is not None:
        slots = min(slots, _with_max_num_seqs(_physics(config, efficiency), max_num_seqs).engine.max_batch)
    if slots < 1:
        return None
    closed = functools.partial(
        latency_at_concurrency,
        efficiency=efficiency,
        max_num_seqs=max_num_seqs,
        request_overhead_s=request_overhead_s,
    )
    # The saturated engine: every slot busy with a queue behind (users well past the slots).
    saturated = closed(config, workload, 2.0 * slots + 8.0)
    if saturated is None:
        return None
    capacity = saturated.rate_rps
    # Users at which the queue starts: every slot busy plus the requests in the serving path.
    first_waiting = slots + capacity * (SERVING_PATH_FIXED_S + request_overhead_s)
    mean_at = warmup_s + duration_s / 2.0
    tail_at = warmup_s + (1.0 - TAIL_PROBABILITY) * duration_s

    def queued(at_s: float) -> float:
        """Requests waiting for a slot at time `at_s`: the fluid excess plus the diffusion bound."""
        excess = max(rate_rps - capacity, 0.0) * at_s
        return excess + math.sqrt(2.0 * (rate_rps + capacity) * at_s / math.pi)

    at_mean = closed(config, workload, first_waiting + queued(mean_at))
    at_tail = closed(config, workload, first_waiting + queued(tail_at))
    assert at_mean is not None and at_tail is not None
    steady = _open_loop(config, workload, rate_rps, efficiency, max_num_seqs) if rate_rps < capacity else None
    if steady is not None:
        steady = _still_filling(
            _with_max_num_seqs(_physics(config, efficiency), max_num_seqs),
            workload,
            rate_rps,
            steady,
            warmup_s,
            duration_s,
        )
    if steady is not None and request_overhead_s > 0.0:
        extra_ms = request_overhead_s * 1e3
        steady = dataclasses.replace(
            steady,
            ttft_mean_ms=steady.ttft_mean_ms + extra_ms,
            ttft_p50_ms=steady.ttft_p50_ms + extra_ms,
            ttft_p99_ms=steady.ttft_p99_ms + extra_ms,
        )
    if steady is None:
        return dataclasses.replace(
            at_mean,
            rate_rps=min(rate_rps, capacity),
            ttft_p99_ms=at_tail.ttft_p99_ms,
            prefill_utilization=1.0,
        )
    return dataclasses.replace(
        steady,
        ttft_mean_ms=min(steady.ttft_mean_ms, at_mean.ttft_mean_ms),
        ttft_p50_ms=min(steady.ttft_p50_ms, at_mean.ttft_p50_ms),
        ttft_p99_ms=min(steady.ttft_p99_ms, at_tail.ttft_p99_ms),
    )


# Integration steps of the batch's build-up from an idle engine over a finite run (semi-implicit Euler,
# stable at any step; 2,000 steps resolve a holding time in 10+ steps for runs up to 200 holding times).
FILL_STEPS: Final = 2000


def _still_filling(
    phys: _Physics,
    workload: RequestSizes,
    rate_rps: float,
    steady: LoadPrediction,
    warmup_s: float,
    duration_s: float,
) -> LoadPrediction:
    """`steady` with the batch a finite run from an idle engine has actually reached (below capacity).

    From idle the decode batch fills as a fluid: dB/dt = λ - B / (output · t(B)), arrivals in and finished
    sequences out, each iteration also carrying the λ t prompt tokens that arrived during the last one. It
    relaxes to the steady state B* with time constant output · t / (1 - B t'(B) / t), the holding time
    divided by how far the iteration time is from growing as fast as the batch: a few holding times at
    moderate load, but near saturation (t' B / t -> 1) far longer than a benchmark's run. Means and p50s
    are read at the batch averaged over the measured arrivals' window (warmup_s .. warmup_s + duration_s),
    p99s at the last arrivals' batch; once the batch has reached B* (within 1%) the steady state stands.
    """
    target = steady.batch
    end = warmup_s + (1.0 - TAIL_PROBABILITY) * duration_s
    if target <= 1.0 or end <= 0.0:
        return steady
    dt = end / FILL_STEPS
    batch, step = 0.0, _decode_step(phys, 1.0, workload, 0.0, 0.0)
    window_sum, window_n = 0.0, 0
    for k in range(1, FILL_STEPS + 1):
        step = _decode_step(
            phys, max(batch, 1.0), workload, rate_rps * workload.prompt_tokens * step, rate_rps * step
        )
        # Semi-implicit: the departures use the new batch, so the update never overshoots B*.
        batch = (batch + rate_rps * dt) / (1.0 + dt / (workload.output_tokens * step))
        if k * dt >= warmup_s:
            window_sum += batch
            window_n += 1
    at_tail = min(batch, target)
    at_mean = min(window_sum / window_n if window_n else batch, target)
    if at_mean >= 0.99 * target:
        return steady
    rows = _Rows.of([(phys, workload)])
    rate = np.full((1, 1), float(rate_rps))
    with np.errstate(all="ignore"):
        loads = [
            _aggregated_loads(
                rows, rate, np.full((1, 1), b), _search_step(rows, "aggregated", np.full((1, 1), b))
            )
            for b in (at_mean, at_tail)
        ]
    mean, tail = _prediction(loads[0]), _prediction(loads[1])
    if mean is None or tail is None:
        return steady
    return dataclasses.replace(
        mean,
        ttft_p99_ms=tail.ttft_p99_ms,
        itl_p99_ms=tail.itl_p99_ms,
        tpot_p99_ms=tail.tpot_p99_ms,
    )


def _decode_step(
    phys: _Physics, batch: float, workload: RequestSizes, prefill: float, prompts: float
) -> float:
    """Iteration time with `batch` decoding sequences and `prefill` prompt tokens from `prompts` prompts."""
    with np.errstate(all="ignore"):
        return float(
            _decode_step_v(_one(phys, workload), float(batch), float(prefill), float(prompts)).item()
        )


def _prefill_budget(phys: _Physics, running: float) -> float | None:
    """Prompt tokens one iteration may carry next to `running` decoding sequences (None: whole prompts)."""
    chunk = phys.engine.prefill_chunk_tokens
    if chunk is None:
        return None
    return float(_prefill_budget_v(_one(phys), float(running)).item())


# --- the contract entry point ------------------------------------------------------------------------------


def max_rate_under_slo(
    config: ReplicaConfig,
    prompt_tokens: float,
    output_tokens: float,
    slo: LatencySlo,
    *,
    prompt_tokens_p99: float | None = None,
    output_tokens_p99: float | None = None,
    itl_is_tpot: bool = False,
    profiles: tuple[measured.MeasuredProfile, ...] = (),
    efficiency: perf_efficiency.Efficiency | None = None,
    prefill_chunk_tokens: int | None = None,
    choose_prefill_chunk: bool = True,
) -> RatePrediction:
    """Highest Poisson request rate one replica serves within `slo`, with its latencies there.

    A measured profile among `profiles` for this exact configuration takes precedence (see
    `rate_from_profile`); otherwise the roofline + queueing model answers.

    Role "aggregated": both SLOs. "prefill": prompts/s within the TTFT SLO, KV transfer included.
    "decode": requests/s within the ITL SLO. max_rps is 0.0 (with a reason) when the SLO cannot be met
    even at vanishing load or the model does not fit. Sizes are means; without p99s they are treated as
    fixed (a bucket of equal-sized requests). `itl_is_tpot` reads the ITL objective as MLPerf's TPOT (p99
    over requests of each request's mean inter-token time, i.e. about the mean iteration) instead of the
    p99 of every single inter-token gap.

    Chunked prefill: by default (`choose_prefill_chunk`) the model picks the engine's token budget per
    configuration among `prefill_chunk_candidates` (the engine default and smaller powers of two), the one
    serving the highest rate within the SLO: a smaller budget caps the prefill work that lands in one
    iteration (lower ITL p99) but re-reads weights and pays the step overhead more often (less prefill
    throughput, longer TTFT). The choice is `RatePrediction.prefill_chunk_tokens`; it never serves less
    than the engine default. `prefill_chunk_tokens` fixes the budget instead; `choose_prefill_chunk=False`
    keeps the engine default.
    """
    workload = RequestSizes(prompt_tokens, output_tokens, prompt_tokens_p99, output_tokens_p99)
    _validate_chunk(config, prefill_chunk_tokens)
    for profile in profiles:
        if _profile_matches(profile, config):
            measured = rate_from_profile(profile, config, workload, slo)
            if measured is not None:
                return measured
    question = RateQuestion(
        config, workload, slo, itl_is_tpot, efficiency, prefill_chunk_tokens, choose_prefill_chunk
    )
    return max_rates([question])[0]


def _validate_chunk(config: ReplicaConfig, prefill_chunk_tokens: int | None) -> None:
    """Reject a chunked-prefill budget that is not a positive integer or that the engine cannot take."""
    if prefill_chunk_tokens is None:
        return
    if (
        not isinstance(prefill_chunk_tokens, int)
        or isinstance(prefill_chunk_tokens, bool)
        or prefill_chunk_tokens < 1
    ):
        raise InvalidConfigError(
            f"prefill_chunk_tokens must be a positive integer, got {prefill_chunk_tokens!r}"
        )
    _validate_names(config)
    if engine_traits(config.engine, config.accelerator_spec).prefill_chunk_tokens is None:
        raise InvalidConfigError(f"prefill_chunk_tokens: engine {config.engine} does not chunk prefill")


def _profile_matches(profile: measured.MeasuredProfile, config: ReplicaConfig) -> bool:
    """True when the profile was measured on exactly this configuration."""
    model_id = config.model if isinstance(config.model, str) else config.model.id
    acc_id = config.accelerator if isinstance(config.accelerator, str) else config.accelerator.id
    return profile.matches(model_id, acc_id, config.precision, config.tp, config.engine, config.role)


# Concurrency samples per sweep segment when interpolating a measured profile.
PROFILE_INTERPOLATION_SAMPLES: Final = 512
# Request sizes within this relative distance of the sweep's are used as measured, without rescaling.
PROFILE_SIZE_TOLERANCE: Final = 0.05


def rate_from_profile(
    profile: measured.MeasuredProfile, config: ReplicaConfig, workload: RequestSizes, slo: LatencySlo
) -> RatePrediction | None:
    """The highest SLO-meeting rate a measured profile supports (None when it cannot answer).

    Bucket table: the bucket holding the request size answers when the table was measured under an SLO at
    least as strict as `slo`. Concurrency sweep: TTFT/ITL p99 and tokens/s are interpolated linearly in
    concurrency and the largest concurrency meeting both objectives gives the rate (tokens/s / output
    length). When the asked request size differs from the sweep's, the measured rate is rescaled by the
    model's own ratio between the two sizes (measurement sets the level, physics the shape).
    """
    for bucket in profile.buckets:
        strict_enough = (profile.bucket_ttft_p99_ms or math.inf) <= slo.ttft_p99_ms and (
            profile.bucket_itl_p99_ms or math.inf
        ) <= slo.itl_p99_ms
        if strict_enough and bucket.contains(workload.prompt_tokens, workload.output_tokens):
            return RatePrediction(
                max_rps=bucket.max_rps,
                ttft_p99_ms=profile.bucket_ttft_p99_ms or 0.0,
                itl_p99_ms=profile.bucket_itl_p99_ms or 0.0,
                max_batch=0,
                output_tokens_per_s=bucket.max_rps * workload.output_tokens,
                reason="measured bucket table"
                if bucket.max_rps > 0
                else "measured: SLO not met in this bucket",
                source=f"profile:{profile.source}",
            )
    sweep_prompt, sweep_output = profile.sweep_prompt_tokens, profile.sweep_output_tokens
    if not profile.points or sweep_prompt is None or sweep_output is None:
        return None
    points = profile.points
    concurrency = np.array([p.concurrency for p in points])
    grid = np.linspace(concurrency[0], concurrency[-1], PROFILE_INTERPOLATION_SAMPLES)
    ttft = np.interp(grid, concurrency, [p.ttft_p99_ms for p in points])
    itl = np.interp(grid, concurrency, [p.itl_p99_ms for p in points])
    rates = np.interp(grid, concurrency, [profile.point_rate_rps(p) for p in points])
    ok = np.nonzero((ttft <= slo.ttft_p99_ms) & (itl <= slo.itl_p99_ms) & (rates > 0))[0]
    source = f"profile:{profile.source}"
    if ok.size == 0:
        return RatePrediction(
            0.0, 0.0, 0.0, 0, 0.0, "measured: SLO not met at any measured concurrency", 0.0, 0.0, source
        )
    # The best SLO-meeting rate (throughput need not be monotone in concurrency).
    best = int(ok[np.argmax(rates[ok])])
    rate = float(rates[best])
    scale = 1.0
    same_prompt = abs(workload.prompt_tokens / sweep_prompt - 1.0) <= PROFILE_SIZE_TOLERANCE
    same_output = abs(workload.output_tokens / sweep_output - 1.0) <= PROFILE_SIZE_TOLERANCE
    if not (same_prompt and same_output) and infeasibility(config) is None:
        try:
            asked = offline_throughput(config, workload.prompt_tokens, workload.output_tokens).requests_per_s
            measured_at = offline_throughput(config, sweep_prompt, sweep_output).requests_per_s
            scale = asked / measured_at
        except InvalidConfigError:
            return None
    return RatePrediction(
        max_rps=rate * scale,
        ttft_p99_ms=float(ttft[best]),
        itl_p99_ms=float(itl[best]),
        max_batch=round(float(grid[best])),
        output_tokens_per_s=rate * scale * workload.output_tokens,
        reason="measured concurrency sweep"
        + ("" if scale == 1.0 else f" rescaled x{scale:.2f} to this size"),
        source=source,
    )


# Chunked-prefill budgets the model chooses among: a half-octave grid (multiples of 128 tokens) from 256
# up to the engine's own default (only trading down: activation memory is reserved for the default, so
# larger budgets are not offered). vLLM, SGLang, TensorRT-LLM and TGI accept any budget in this range; 256
# is vLLM's default max_num_seqs (its budget must hold one token per running sequence) and the smallest
# chunk the Sarathi-Serve paper (Agrawal et al., OSDI 2024) sweeps: below it the per-iteration weight
# read and step overhead dominate the prefill cost. Half octaves keep the best budget within ~20% of the
# continuous optimum (the largest chunk whose iteration still meets the ITL objective).
PREFILL_CHUNK_CANDIDATES: Final = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# Across request-size buckets (placement.candidates), a budget other than the engine default is kept only
# when it saves at least this much. Within one question the model takes the budget serving the highest
# rate, the larger budget on a tie: a margin there would make the answer depend on which budget happened
# to be searched first, and a looser SLO could then serve less (a margin on the answer is not monotone).
PREFILL_CHUNK_MIN_GAIN: Final = 0.01


def prefill_chunk_candidates(engine: EngineTraits) -> tuple[int, ...]:
    """Budgets the model tries for an engine, its default first (empty when the engine does not chunk)."""
    default = engine.prefill_chunk_tokens
    if default is None:
        return ()
    smaller = sorted((c for c in PREFILL_CHUNK_CANDIDATES if c < default), reverse=True)
    return (default, *smaller)


def _with_chunk(phys: _Physics, chunk_tokens: int) -> _Physics:
    """The same replica run with a different chunked-prefill budget (memoized per physics object)."""
    if chunk_tokens == phys.engine.prefill_chunk_tokens:
        return phys
    hit = _WITH_CHUNK.get((id(phys), chunk_tokens))
    if hit is not None and hit[0] is phys:
        return hit[1]
    out = dataclasses.replace(
        phys, engine=dataclasses.replace(phys.engine, prefill_chunk_tokens=chunk_tokens)
    )
    if len(_WITH_CHUNK) > 65536:
        _WITH_CHUNK.clear()
    _WITH_CHUNK[(id(phys), chunk_tokens)] = (phys, out)
    return out


_WITH_CHUNK: dict[tuple[int, int], tuple[_Physics, _Physics]] = {}


# --- the highest SLO-meeting rate, for many questions at once ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class RateQuestion:
    """One capacity question: everything that determines max_rate_under_slo's model answer (its cache key)."""

    config: ReplicaConfig
    workload: RequestSizes
    slo: LatencySlo
    itl_is_tpot: bool = False
    efficiency: perf_efficiency.Efficiency | None = None
    prefill_chunk_tokens: int | None = None
    choose_prefill_chunk: bool = True

    def __hash__(self) -> int:
        """Hash of every field, computed once (questions key the answer cache)."""
        try:
            return self.__dict__["_hash"]  # type: ignore[no-any-return]
        except KeyError:
            value = hash(
                (
                    self.config,
                    self.workload,
                    self.slo,
                    self.itl_is_tpot,
                    self.efficiency,
                    self.prefill_chunk_tokens,
                    self.choose_prefill_chunk,
                )
            )
            self.__dict__["_hash"] = value
            return value


# Answers kept across calls (services, re-plans and the autoscaler ask the same questions); the oldest are
# dropped beyond this many (~1 KB each). Two kinds of entries share it: the question as asked, and the
# answer at one fixed chunked-prefill budget (`_at_chunk`), which a question choosing its budget computes
# on the way and a later question asking for that budget (candidates re-price every bucket at the budget
# the Deployment will run) reuses.
RATE_CACHE_MAX_ENTRIES: Final = 400_000
_RATE_CACHE: dict[RateQuestion, RatePrediction] = {}
# Rate search: a geometric grid of this many loads between the lowest tested load and saturation brackets
# the highest SLO-meeting load; each refinement step then evaluates three loads at once: a pair closely
# around the secant estimate of where the objectives' excess crosses zero (log load vs log latency/SLO),
# and the bracket's geometric midpoint (so the bracket at least halves even where the secant is poor).
# It stops when the two rates are within RATE_RELATIVE_TOLERANCE / 10 (the previous scalar bisection
# stopped at the tolerance); a good estimate closes the bracket in one or two steps.
RATE_GRID_POINTS: Final = 5
REFINE_MAX_STEPS: Final = 48
# Half-width of the pair around the secant estimate, relative: a bracket of twice this is below the
# search's stopping tolerance (the rate moves no faster than the batch: λ = B / (output · t(B))).
SECANT_PAIR_HALF_WIDTH: Final = RATE_RELATIVE_TOLERANCE * 0.25


def clear_rate_cache() -> None:
    """Forget every cached answer and physics (the catalog or efficiency factors changed)."""
    _RATE_CACHE.clear()
    _BLOCK_CACHE.clear()
    _BLOCK_CACHE_ROWS[0] = 0
    _PHYSICS_VECTORS.clear()
    _WITH_CHUNK.clear()
    _physics.cache_clear()
    _physics_cached.cache_clear()
    _infeasibility_cached.cache_clear()


def _canonical(question: RateQuestion) -> RateQuestion:
    """The question with catalog ids resolved, so an id and its catalog object share one cache entry."""
    config = question.config
    model = config.model if isinstance(config.model, str) else config.model.id
    acc = config.accelerator if isinstance(config.accelerator, str) else config.accelerator.id
    if (isinstance(config.model, str) or catalog.MODELS.get(model) == config.model) and (
        isinstance(config.accelerator, str) or catalog.ACCELERATORS.get(acc) == config.accelerator
    ):
        if config.model == model and config.accelerator == acc:
            return question
        return dataclasses.replace(question, config=dataclasses.replace(config, model=model, accelerator=acc))
    return question


def _at_chunk(question: RateQuestion, chunk: int | None) -> RateQuestion:
    """The question at one fixed budget (None: the engine's own), the cache key of that budget's answer."""
    if question.prefill_chunk_tokens == chunk and not question.choose_prefill_chunk:
        return question
    return RateQuestion(
        question.config,
        question.workload,
        question.slo,
        question.itl_is_tpot,
        question.efficiency,
        chunk,
        False,
    )


def max_rates(questions: Sequence[RateQuestion]) -> list[RatePrediction]:
    """max_rate_under_slo's model answer for many questions at once (cached; profiles are not consulted).

    Raises InvalidConfigError (or catalog.UnknownIdError) for the first malformed question.
    """
    keys = [_canonical(q) for q in questions]
    cache = _RATE_CACHE
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        with np.errstate(all="ignore"):
            _solve_rates(missing, cache)
    out = [cache[k] for k in keys]
    overflow = len(cache) - RATE_CACHE_MAX_ENTRIES
    if overflow > 0:
        for key in list(itertools.islice(iter(cache), overflow)):
            del cache[key]
    return out


@dataclasses.dataclass
class _Pending:
    """A question choosing its chunk budget: its physics, the budgets to try and the best answer so far."""

    question: RateQuestion
    phys: _Physics
    budgets: tuple[int | None, ...]
    best: RatePrediction


def _checked(
    q: RateQuestion, configs: dict[tuple[int, int, int | None], _Physics | RatePrediction]
) -> _Physics | RatePrediction:
    """The question's physics, or its zero answer when the configuration or the request cannot run.

    `configs` memoizes the configuration's part within one call (by the identity of the configuration
    and efficiency objects, which the questions keep alive).
    """
    config, workload = q.config, q.workload
    key = (id(config), id(q.efficiency), q.prefill_chunk_tokens)
    known = configs.get(key)
    if known is None:
        if q.prefill_chunk_tokens is not None:
            _validate_chunk(config, q.prefill_chunk_tokens)
        reason = infeasibility(config)
        known = configs[key] = _zero(reason) if reason is not None else _physics(config, q.efficiency)
    if isinstance(known, RatePrediction):
        return known
    phys = known
    too_long = _sequence_misfit(phys, config.role, workload.prompt_p99 + workload.output_p99)
    return _zero(too_long) if too_long is not None else phys


def _sequence_misfit(phys: _Physics, role: str, context: float) -> str | None:
    """Why a sequence of `context` tokens (p99 prompt + p99 output) cannot run here (None: it can)."""
    if context > phys.model.max_context_tokens:
        return (
            f"a {context:.0f}-token sequence exceeds the {phys.model.max_context_tokens}-token context "
            f"of {phys.model.id}"
        )
    if role != "prefill" and phys.kv_capacity_tokens < context:
        return (
            f"a {context:.0f}-token sequence needs more KV than the {phys.kv_capacity_tokens:.0f} tokens "
            f"{phys.model.id} leaves on {phys.acc.id} x{phys.tp}"
        )
    return None


def _solve_rates(questions: Sequence[RateQuestion], cache: dict[RateQuestion, RatePrediction]) -> None:
    """Answer distinct questions into `cache`: checks, then the chunk rounds, vectorized by role.

    Every budget a question searches is searched in full from a vanishing load and cached at that budget
    (`_at_chunk`), so an answer never depends on which question computed it first.
    """
    pending: list[_Pending] = []
    fixed: list[tuple[RateQuestion, RateQuestion]] = []
    todo: dict[RateQuestion, _Physics] = {}
    configs: dict[tuple[int, int, int | None], _Physics | RatePrediction] = {}
    chunk_options: dict[int, tuple[int | None, ...]] = {}
    for q in questions:
        checked = _checked(q, configs)
        if isinstance(checked, RatePrediction):
            cache[q] = checked
            continue
        budgets: tuple[int | None, ...]
        if q.prefill_chunk_tokens is not None:
            budgets = (q.prefill_chunk_tokens,)
        elif q.choose_prefill_chunk and q.config.role != "decode":
            budgets = chunk_options.get(id(checked.engine)) or ()
            if not budgets:
                budgets = chunk_options[id(checked.engine)] = prefill_chunk_candidates(checked.engine) or (
                    None,
                )
        else:
            budgets = (None,)
        key = _at_chunk(q, budgets[0])
        if key not in cache:
            todo[key] = checked
        if len(budgets) == 1:
            fixed.append((q, key))
        else:
            pending.append(_Pending(q, checked, budgets, _ZERO_PLACEHOLDER))
    # Round 0: each question's first budget (the engine default when it chooses), searched in full.
    _search_into(todo, cache)
    for q, key in fixed:
        cache[q] = cache[key]
    for p in pending:
        p.best = cache[_at_chunk(p.question, p.budgets[0])]
    # Round k tries every choosing question's k-th (smaller) budget: it only matters when it serves more than
    # the best so far, so where the best is positive it is first tested at that rate and searched only when
    # it meets the SLO there. The answer is the highest rate over the budgets (the larger budget on a tie),
    # so it never falls when the SLO loosens.
    live = pending
    for round_index in range(1, max((len(p.budgets) for p in pending), default=0)):
        # A question out of budgets, or whose best no smaller budget can beat, stays so (its best is final).
        live = [p for p in live if round_index < len(p.budgets) and _smaller_chunk_may_win(p)]
        if not live:
            break
        keys = [_at_chunk(p.question, p.budgets[round_index]) for p in live]
        floors = [max(p.best.max_rps, 0.0) for p in live]
        test = [(k, p, f) for k, p, f in zip(keys, live, floors, strict=True) if f > 0.0 and k not in cache]
        passed = _meet_floors(test)
        todo = {}
        for k, p, f in zip(keys, live, floors, strict=True):
            if k not in cache and (f <= 0.0 or k in passed):
                todo[k] = p.phys
        _search_into(todo, cache)
        for k, p in zip(keys, live, strict=True):
            result = cache.get(k)
            if result is not None and result.max_rps > p.best.max_rps:
                p.best = result
    for p in pending:
        cache[p.question] = p.best


# --- capacity questions in blocks (placement.candidates' path) ---------------------------------------------
#
# A service asks about every (chip, role, precision, tp) it may run on for each of its request-size buckets:
# ~1,000 questions per service that differ, within one configuration, only in their sizes. block_rates
# answers a block of such questions (one configuration, SLO, efficiency and chunk policy; its sizes as an
# (n, 4) array) with the same search and chunk rounds as max_rates (_search_arrays, _floors_met: the one
# implementation), but without a RateQuestion, a hash of it and a RatePrediction per question. Answers are
# cached per row under what determines them — configuration, efficiency, SLO, the row's sizes and the
# chunked-prefill budget (or "chosen") — and shared across services, re-plans and the autoscaler.


class RowAnswer(NamedTuple):
    """One row's answer: max_rate_under_slo's fields the candidates read (see RatePrediction)."""

    max_rps: float
    ttft_p99_ms: float
    itl_p99_ms: float
    max_batch: int
    prefill_chunk_tokens: int | None
    reason: str | None


@dataclasses.dataclass(frozen=True)
class RateBlock:
    """Capacity questions sharing everything but their request sizes, asked as one."""

    config: ReplicaConfig
    slo: LatencySlo
    # Rows of (mean prompt, mean output, p99 prompt, p99 output) tokens: RequestSizes' four fields.
    sizes: Sequence[tuple[float, float, float, float]]
    efficiency: perf_efficiency.Efficiency | None = None
    # A fixed chunked-prefill budget; None lets the model choose (RateQuestion's choose_prefill_chunk).
    prefill_chunk_tokens: int | None = None
    itl_is_tpot: bool = False


@dataclasses.dataclass(frozen=True)
class BlockRates:
    """A block's answers, one per row, and why its configuration cannot run at all (None: it can)."""

    rows: tuple[RowAnswer, ...]
    infeasible: str | None


# Budget keys of the row cache: the engine default (None), a fixed budget, or the model's choice.
_CHOSEN: Final = -1
_DEFAULT_BUDGET: Final = 0
_BlockKey = tuple[object, ...]
_RowKey = tuple[float, float, float, float, int]
_BLOCK_CACHE: dict[_BlockKey, dict[_RowKey, RowAnswer]] = {}
_BLOCK_CACHE_ROWS = [0]


def _budget_key(budget: int | None) -> int:
    """The row cache's key for a budget (None: the engine's own)."""
    return _DEFAULT_BUDGET if budget is None else budget


def _zero_row(reason: str) -> RowAnswer:
    """A row no rate serves (see _zero)."""
    return RowAnswer(0.0, 0.0, 0.0, 0, None, reason)


@dataclasses.dataclass
class _BlockRow:
    """A row still to answer: its block, physics, budgets, the block's cache and the row's sizes."""

    block: RateBlock
    phys: _Physics
    budgets: tuple[int | None, ...]
    cache: dict[_RowKey, RowAnswer]
    size: tuple[float, float, float, float]
    best: RowAnswer
    # The call's table of blocks (physics columns, then TTFT and ITL objectives and TPOT) and this row's.
    table: FloatArray
    slot: int


def block_rates(blocks: Sequence[RateBlock]) -> list[BlockRates]:
    """max_rates' answers for blocks of questions (the same answers: tests/unit/test_candidate_blocks.py).

    Raises InvalidConfigError (or catalog.UnknownIdError) for a malformed configuration or budget.
    """
    with np.errstate(all="ignore"):
        return _block_rates(blocks)


def _block_rates(blocks: Sequence[RateBlock]) -> list[BlockRates]:
    """See block_rates."""
    answers: list[list[RowAnswer | None]] = []
    infeasible: list[str | None] = []
    todo: list[tuple[int, int, _BlockRow]] = []
    table_rows: list[tuple[float, ...]] = []
    table = np.zeros((0, len(_PHYSICS_COLUMNS) + 3))
    for b, block in enumerate(blocks):
        config = block.config
        if block.prefill_chunk_tokens is not None:
            _validate_chunk(config, block.prefill_chunk_tokens)
        reason = infeasibility(config)
        infeasible.append(reason)
        if reason is not None:
            answers.append([_zero_row(reason)] * len(block.sizes))
            continue
        phys = _physics(config, block.efficiency)
        budgets: tuple[int | None, ...]
        if block.prefill_chunk_tokens is not None:
            budgets = (block.prefill_chunk_tokens,)
        elif config.role != "decode":
            budgets = prefill_chunk_candidates(phys.engine) or (None,)
        else:
            budgets = (None,)
        final = _CHOSEN if len(budgets) > 1 else _budget_key(budgets[0])
        outer = (config, block.efficiency, block.slo.ttft_p99_ms, block.slo.itl_p99_ms, block.itl_is_tpot)
        cache = _BLOCK_CACHE.get(outer)
        if cache is None:
            cache = _BLOCK_CACHE[outer] = {}
        rows: list[RowAnswer | None] = []
        slot = len(table_rows)
        slo = block.slo
        table_rows.append((*_physics_vector(phys), slo.ttft_p99_ms, slo.itl_p99_ms, float(block.itl_is_tpot)))
        longest = min(
            float(phys.model.max_context_tokens),
            math.inf if config.role == "prefill" else phys.kv_capacity_tokens,
        )
        for i, size in enumerate(block.sizes):
            p, o, pp, op = size
            if pp + op > longest:
                misfit = _sequence_misfit(phys, config.role, pp + op)
                if misfit is not None:
                    rows.append(_zero_row(misfit))
                    continue
            hit = cache.get((p, o, pp, op, final))
            rows.append(hit)
            if hit is None:
                todo.append(
                    (
                        b,
                        i,
                        _BlockRow(block, phys, budgets, cache, (p, o, pp, op), _PLACEHOLDER_ROW, table, slot),
                    )
                )
        answers.append(rows)
    if todo:
        table = np.array(table_rows, dtype=np.float64)
        for _, _, row in todo:
            row.table = table
        _solve_block_rows([row for _, _, row in todo])
        for b, i, row in todo:
            answers[b][i] = row.best
    if _BLOCK_CACHE_ROWS[0] > RATE_CACHE_MAX_ENTRIES:
        _BLOCK_CACHE.clear()
        _BLOCK_CACHE_ROWS[0] = 0
    return [
        BlockRates(tuple(a for a in rows if a is not None), reason)
        for rows, reason in zip(answers, infeasible, strict=True)
    ]


_PLACEHOLDER_ROW: Final = _zero_row("not searched")


def _solve_block_rows(rows: Sequence[_BlockRow]) -> None:
    """Each row's answer into row.best and its caches: _solve_rates' rounds over rows (see there)."""
    for row, answer in zip(rows, _rows_at([(row, row.budgets[0]) for row in rows]), strict=True):
        row.best = answer
    live = [row for row in rows if len(row.budgets) > 1]
    for round_index in range(1, max((len(row.budgets) for row in live), default=0)):
        live = [r for r in live if round_index < len(r.budgets) and _row_may_win(r)]
        if not live:
            break
        # A budget already answered is compared as it is; rows whose best is positive search the budget only
        # when it meets the SLO at that rate; the others search it.
        tests: list[tuple[_BlockRow, int | None]] = []
        wanted: list[tuple[_BlockRow, int | None]] = []
        for r in live:
            budget = r.budgets[round_index]
            hit = r.cache.get((*r.size, _budget_key(budget)))
            if hit is not None:
                if hit.max_rps > r.best.max_rps:
                    r.best = hit
            elif r.best.max_rps > 0.0:
                tests.append((r, budget))
            else:
                wanted.append((r, budget))
        passed = _block_floors_met(tests)
        wanted.extend(t for t in tests if id(t[0]) in passed)
        for (r, _), answer in zip(wanted, _rows_at(wanted), strict=True):
            if answer.max_rps > r.best.max_rps:
                r.best = answer
    for row in rows:
        if len(row.budgets) > 1:
            row.cache[(*row.size, _CHOSEN)] = row.best
            _BLOCK_CACHE_ROWS[0] += 1


def _row_may_win(row: _BlockRow) -> bool:
    """_smaller_chunk_may_win for a row."""
    return _chunk_may_help(row.best.max_rps, row.best.reason, row.block.itl_is_tpot)


def _block_rows(
    items: Sequence[tuple[_BlockRow, int | None]],
) -> tuple[_Rows, FloatArray, FloatArray, BoolArray]:
    """_Rows of rows at budgets (None: the engine's own) and their SLO columns."""
    table = items[0][0].table
    columns = table[np.fromiter((r.slot for r, _ in items), dtype=np.intp, count=len(items))]
    width = len(_PHYSICS_COLUMNS)
    sizes = np.array([r.size for r, _ in items], dtype=np.float64).reshape(len(items), 4)
    rows = _Rows.from_arrays(columns[:, :width], sizes[:, :3])
    chunk = np.array([math.nan if c is None else float(c) for _, c in items]).reshape(-1, 1)
    if not np.isnan(chunk).all():
        rows = rows.with_chunk(np.where(np.isnan(chunk), rows.chunk, chunk))
    return (
        rows,
        columns[:, width : width + 1],
        columns[:, width + 1 : width + 2],
        columns[:, width + 2 :] > 0.5,
    )


def _rows_at(items: Sequence[tuple[_BlockRow, int | None]]) -> list[RowAnswer]:
    """Each row's full search at its budget: from its cache, else searched (by role) and cached."""
    out: list[RowAnswer | None] = [r.cache.get((*r.size, _budget_key(c))) for r, c in items]
    for role in ("aggregated", "decode", "prefill"):
        index = [k for k, (r, _) in enumerate(items) if out[k] is None and r.block.config.role == role]
        if not index:
            continue
        group = [items[k] for k in index]
        rows, ttft, itl, tpot = _block_rows(group)
        found = _search_arrays(rows, role, ttft, itl, tpot)
        rates, t99, i99 = found.rate.tolist(), found.ttft_p99_ms.tolist(), found.itl_p99_ms.tolist()
        batches, chunks, codes = found.batch.tolist(), rows.chunk[:, 0].tolist(), found.code.tolist()
        for j, k in enumerate(index):
            if codes[j] < 0:
                answer = _zero_row(found.why[j])
            else:
                chunk = chunks[j]
                answer = RowAnswer(
                    rates[j],
                    t99[j],
                    i99[j],
                    max(1, round(batches[j])),
                    None if role == "decode" or math.isnan(chunk) else int(chunk),
                    _BINDING_REASONS[codes[j]],
                )
            r, budget = items[k]
            r.cache[(*r.size, _budget_key(budget))] = answer
            _BLOCK_CACHE_ROWS[0] += 1
            out[k] = answer
    return [a for a in out if a is not None]


def _block_floors_met(tests: Sequence[tuple[_BlockRow, int | None]]) -> set[int]:
    """ids of the rows that meet their SLO at their best rate so far, at the budget given (_meet_floors)."""
    passed: set[int] = set()
    for role in ("aggregated", "decode", "prefill"):
        group = [t for t in tests if t[0].block.config.role == role]
        if not group:
            continue
        rows, ttft, itl, tpot = _block_rows(group)
        floors = np.array([r.best.max_rps for r, _ in group]).reshape(-1, 1)
        start = np.array(
            [r.best.max_batch * r.best.max_rps / r.best.max_rps for r, _ in group], dtype=np.float64
        ).reshape(-1, 1)
        meets = _floors_met(rows, role, ttft, itl, tpot, floors, start)
        passed.update(id(r) for (r, _), m in zip(group, meets.tolist(), strict=True) if m)
    return passed


def _slo_columns(questions: Sequence[RateQuestion]) -> tuple[FloatArray, FloatArray, BoolArray]:
    """(TTFT SLO ms, ITL SLO ms, ITL read as TPOT) of the questions as (Q, 1) columns."""
    ttft = np.array([q.slo.ttft_p99_ms for q in questions]).reshape(-1, 1)
    itl = np.array([q.slo.itl_p99_ms for q in questions]).reshape(-1, 1)
    tpot = np.array([q.itl_is_tpot for q in questions]).reshape(-1, 1)
    return ttft, itl, tpot


def _rows_at_chunks(items: Sequence[tuple[RateQuestion, _Physics]]) -> _Rows:
    """Rows of fixed-budget questions (a budget of None keeps the engine's own)."""
    rows = _Rows.of([(phys, q.workload) for q, phys in items])
    chunk = np.array(
        [math.nan if q.prefill_chunk_tokens is None else float(q.prefill_chunk_tokens) for q, _ in items]
    ).reshape(-1, 1)
    if np.isnan(chunk).all():
        return rows
    return rows.with_chunk(np.where(np.isnan(chunk), rows.chunk, chunk))


def _search_into(todo: Mapping[RateQuestion, _Physics], cache: dict[RateQuestion, RatePrediction]) -> None:
    """Full searches for fixed-budget questions, by role, answers into `cache`."""
    for role in ("aggregated", "decode", "prefill"):
        items = [(q, phys) for q, phys in todo.items() if q.config.role == role]
        if not items:
            continue
        found = _search(_rows_at_chunks(items), role, [q for q, _ in items])
        for (q, _), answer in zip(items, found, strict=True):
            cache[q] = answer


def _meet_floors(tests: Sequence[tuple[RateQuestion, _Pending, float]]) -> set[RateQuestion]:
    """The fixed-budget questions that meet their SLO at their floor rate (one load each, by role)."""
    passed: set[RateQuestion] = set()
    for role in ("aggregated", "decode", "prefill"):
        items = [t for t in tests if t[0].config.role == role]
        if not items:
            continue
        r = _rows_at_chunks([(k, p.phys) for k, p, _ in items])
        ttft_slo, itl_slo, tpot = _slo_columns([k for k, _, _ in items])
        floors = np.array([f for _, _, f in items]).reshape(-1, 1)
        start = np.array(
            [p.best.max_batch * f / p.best.max_rps for _, p, f in items], dtype=np.float64
        ).reshape(-1, 1)
        meets = _floors_met(r, role, ttft_slo, itl_slo, tpot, floors, start)
        passed.update(k for (k, _, _), m in zip(items, meets.tolist(), strict=True) if m)
    return passed


def _floors_met(
    r: _Rows,
    role: str,
    ttft_slo: FloatArray,
    itl_slo: FloatArray,
    tpot: BoolArray,
    floors: FloatArray,
    start: FloatArray,
) -> BoolArray:
    """Where each row meets its SLO at its floor rate ((Q,) booleans; `start`: the batch Newton starts from,
    the best answer's batch scaled to the floor)."""
    pre = _prefill_rows(r) if role == "prefill" else None
    ceiling = _ceiling(r, role, pre)
    if pre is not None:
        at = _prefill_loads(r, pre, floors)
        ok = at.ok
    else:
        # Newton from the best answer's batch scaled to the floor (the budget barely moves the step).
        stable, batch = _batch_at_rate(r, role, floors, start)
        at = _loads_at(r, role, batch, pre)
        ok = at.ok & stable
    meets = _meets(role, dataclasses.replace(at, ok=ok), ttft_slo, itl_slo, tpot) & (floors < ceiling)
    out: BoolArray = meets[:, 0]
    return out


def _smaller_chunk_may_win(p: _Pending) -> bool:
    """False when no smaller prefill chunk can serve more than the best answer so far.

    A smaller chunk only shortens the iterations that carry prefill (lower ITL); it lowers the prefill
    token rate and the sequence slots, so TTFT at any rate and the saturation rate only get worse. When
    the best answer is bound by TTFT or saturation (or misses TTFT alone at zero load), every smaller chunk
    answers less; the previous scalar search tried them anyway (tests/unit/test_perf_vectorized.py
    compares the two).
    """
    best = p.best
    return best is None or _chunk_may_help(best.max_rps, best.reason, p.question.itl_is_tpot)


def _chunk_may_help(max_rps: float, reason: str | None, itl_is_tpot: bool) -> bool:
    """The rule of _smaller_chunk_may_win on the best answer's rate and reason (shared by the block path)."""
    if itl_is_tpot:
        return True
    if max_rps > 0.0:
        return reason == _BINDING_REASONS[2]
    why = reason or ""
    return "ITL" in why or not why.startswith("TTFT")


def _meets(
    role: str, loads: _Loads, ttft_slo_ms: FloatArray, itl_slo_ms: FloatArray, tpot: BoolArray
) -> BoolArray:
    """Where both objectives hold (a prefill replica has no ITL, a decode replica's TTFT is not its own)."""
    itl = np.where(tpot, loads.tpot_p99, loads.itl_p99)
    ttft_ok = (loads.ttft_p99 * 1e3 <= ttft_slo_ms) if role != "decode" else True
    itl_ok = (itl * 1e3 <= itl_slo_ms) if role != "prefill" else True
    out: BoolArray = loads.ok & ttft_ok & itl_ok
    return out


def _loads_at(r: _Rows, role: str, x: FloatArray, pre: _PrefillRows | None) -> _Loads:
    """Loads at search coordinate `x`: the arrival rate for prefill rows, the decode batch otherwise.

    With the batch B as the coordinate the steady state is explicit: the prompts admitted per iteration are
    B / output, so t = t(B, B · prompt / output prefill tokens) and λ = B / (output · t); no fixed point.
    """
    if role == "prefill":
        assert pre is not None
        return _prefill_loads(r, pre, x)
    if role == "decode":
        step = _decode_step_v(r, np.maximum(x, 1.0), 0.0, 0.0)
        return _decode_loads(r, x / (r.output * step), x, step)
    step = _decode_step_v(r, np.maximum(x, 1.0), x * r.prompt / r.output, x / r.output)
    return _aggregated_loads(r, x / (r.output * step), x, step)


# Newton steps solving B = λ · output · t(B) for the searches' first load (a damped iteration needs tens).
NEWTON_STEPS: Final = 30
NEWTON_TOLERANCE: Final = 1e-9


def _search_step(r: _Rows, role: str, batch: FloatArray) -> FloatArray:
    """Mean iteration time at decode batch `batch` in steady state (see _loads_at)."""
    if role == "decode":
        return _decode_step_v(r, np.maximum(batch, 1.0), 0.0, 0.0)
    return _decode_step_v(r, np.maximum(batch, 1.0), batch * r.prompt / r.output, batch / r.output)


def _batch_at_rate(
    r: _Rows, role: str, rate: FloatArray, start: FloatArray | None = None
) -> tuple[BoolArray, FloatArray]:
    """(stable, B): the steady decode batch at arrival rate `rate`, by Newton's method on B - λ·output·t(B).

    Newton starts from `start` where given (positive, within the slot limit), else from the batch the
    zero-load step gives. Stable where the root exists within the slot limit. Rows Newton does not settle
    fall back to the grid and bisection of _steady_batch_v (the same fixed point).
    """
    demand = rate * r.output
    batch = demand * _search_step(r, role, np.zeros_like(demand))
    if start is not None:
        usable = np.isfinite(start) & (start > 0.0)
        batch = np.where(usable, np.minimum(start, r.limit), batch)
    settled = np.zeros(batch.shape, dtype=np.bool_)
    # Rows still moving (a settled row stays where it settled: an answer never depends on the other rows).
    moving = np.arange(batch.shape[0])
    sub = r
    for _ in range(NEWTON_STEPS):
        b, d = batch[moving], demand[moving]
        step = _search_step(sub, role, b)
        gap = b - d * step
        done = np.abs(gap) <= NEWTON_TOLERANCE * np.maximum(b, 1.0)
        settled[moving] = done
        keep = ~done[:, 0]
        if not keep.any():
            break
        h = np.maximum(b * 1e-6, 1e-9)
        slope = 1.0 - d * (_search_step(sub, role, b + h) - step) / h
        # No root ahead where the slope is not positive: step past the slot limit (unstable).
        cap = 2.0 * sub.limit + 1.0
        moved = np.minimum(np.where(slope > 0.0, np.maximum(b - gap / slope, 0.5 * b), cap), cap)
        batch[moving[keep]] = moved[keep]
        moving = moving[keep]
        sub = sub.take(np.nonzero(keep)[0])
    stable = settled & (batch <= r.limit)
    unsettled = ~settled & (batch <= r.limit)
    if unsettled.any():
        rows = np.nonzero(unsettled[:, 0])[0]
        fallback, fallback_batch = _steady_batch_v(r.take(rows), role, rate[rows])
        stable[rows] = fallback
        batch[rows] = fallback_batch
    return stable, batch


def _ceiling(r: _Rows, role: str, pre: _PrefillRows | None) -> FloatArray:
    """The rate at which each row could not keep up even with unlimited latency (the search's top)."""
    if role == "prefill":
        assert pre is not None
        per_batch = np.maximum(np.where(r.has_chunk, r.chunk, r.prompt) / r.prompt, 1.0)
        out: FloatArray = 1.0 / pre.alone_mean * per_batch
        return out
    slots = np.maximum(r.limit, 1.0)
    out = slots / _decode_step_v(r, slots, 0.0, 0.0) / r.output
    return out


def _secant_guess(
    role: str,
    lo: FloatArray,
    hi: FloatArray,
    at_lo: _Loads,
    at_hi: _Loads,
    ttft_slo_ms: FloatArray,
    itl_slo_ms: FloatArray,
    tpot: BoolArray,
) -> FloatArray:
    """Where the first objective crosses its bound between lo (meets) and hi (misses), per row (Q,).

    Each objective's slack, objective / latency - 1, is interpolated linearly in the load (near saturation
    latency grows like 1 / (x_s - x), so the slack is about linear there); the earliest crossing wins. NaN
    where no objective crosses (hi misses because the replica cannot keep up there).
    """
    guess = np.full(lo.shape, np.nan)
    objectives = []
    if role != "decode":
        objectives.append((at_lo.ttft_p99, at_hi.ttft_p99, ttft_slo_ms))
    if role != "prefill":
        objectives.append(
            (
                np.where(tpot, at_lo.tpot_p99, at_lo.itl_p99),
                np.where(tpot, at_hi.tpot_p99, at_hi.itl_p99),
                itl_slo_ms,
            )
        )
    for lat_lo, lat_hi, bound in objectives:
        s_lo = (bound / (lat_lo * 1e3) - 1.0)[:, 0]
        s_hi = np.where(at_hi.ok[:, 0], (bound / (lat_hi * 1e3) - 1.0)[:, 0], -1.0)
        crosses = (s_lo >= 0.0) & (s_hi < 0.0)
        x = lo + np.clip(s_lo / (s_lo - s_hi), 0.0, 1.0) * (hi - lo)
        guess = np.where(crosses & ~(guess <= x), x, guess)
    return guess


def _min_slack(
    role: str, loads: _Loads, ttft_slo_ms: FloatArray, itl_slo_ms: FloatArray, tpot: BoolArray
) -> FloatArray:
    """min over the objectives of objective / latency - 1: >= 0 exactly where _meets holds, -1 where the
    replica cannot keep up."""
    itl = np.where(tpot, loads.tpot_p99, loads.itl_p99) * 1e3
    slack_itl = itl_slo_ms / itl - 1.0
    slack_ttft = ttft_slo_ms / (loads.ttft_p99 * 1e3) - 1.0
    slack = (
        slack_itl
        if role == "decode"
        else slack_ttft
        if role == "prefill"
        else np.minimum(slack_ttft, slack_itl)
    )
    out: FloatArray = np.where(loads.ok, slack, -1.0)
    return out


@dataclasses.dataclass(frozen=True)
class _Found:
    """A search's answers as arrays over its rows, (Q,) each; `code` -1 where even a vanishing load misses
    the SLO (`why` holds the reason), else the index of the binding reason in _BINDING_REASONS."""

    rate: FloatArray
    ttft_p99_ms: FloatArray
    itl_p99_ms: FloatArray
    ttft_p50_ms: FloatArray
    itl_p50_ms: FloatArray
    batch: FloatArray
    chunk: FloatArray
    code: npt.NDArray[np.int64]
    why: dict[int, str]

    def prediction(self, i: int, role: str, output_tokens: float) -> RatePrediction:
        """Row `i` as a RatePrediction (what max_rates caches)."""
        if self.code[i] < 0:
            return _zero(self.why[i])
        rate = float(self.rate[i])
        chunk = float(self.chunk[i])
        return RatePrediction(
            max_rps=rate,
            ttft_p99_ms=float(self.ttft_p99_ms[i]),
            itl_p99_ms=float(self.itl_p99_ms[i]),
            max_batch=max(1, round(float(self.batch[i]))),
            output_tokens_per_s=rate * output_tokens if role != "prefill" else 0.0,
            reason=_BINDING_REASONS[int(self.code[i])],
            ttft_p50_ms=float(self.ttft_p50_ms[i]),
            itl_p50_ms=float(self.itl_p50_ms[i]),
            prefill_chunk_tokens=None if role == "decode" or math.isnan(chunk) else int(chunk),
        )


def _search(r: _Rows, role: str, questions: Sequence[RateQuestion]) -> list[RatePrediction]:
    """Highest SLO-meeting rate of each row, searched from a vanishing load (max_rps 0.0 and the reason when
    even that misses)."""
    ttft_slo, itl_slo, tpot = _slo_columns(questions)
    found = _search_arrays(r, role, ttft_slo, itl_slo, tpot)
    outputs = r.output[:, 0].tolist()
    return [found.prediction(i, role, outputs[i]) for i in range(len(questions))]


def _search_arrays(r: _Rows, role: str, ttft_slo: FloatArray, itl_slo: FloatArray, tpot: BoolArray) -> _Found:
    """_search over rows with their SLO columns ((Q, 1) each), answers as arrays (the one implementation)."""
    n = ttft_slo.shape[0]
    all_ttft_slo, all_itl_slo = ttft_slo[:, 0].tolist(), itl_slo[:, 0].tolist()
    pre = _prefill_rows(r) if role == "prefill" else None
    ceiling = _ceiling(r, role, pre)
    low_rate = ceiling * 1e-6
    if pre is not None:
        low = _prefill_loads(r, pre, low_rate)
    else:
        stable, batch = _batch_at_rate(r, role, low_rate)
        low = _loads_at(r, role, batch, pre)
        low = dataclasses.replace(low, ok=low.ok & stable)
    low_meets = _meets(role, low, ttft_slo, itl_slo, tpot)
    found = _Found(
        rate=np.zeros(n),
        ttft_p99_ms=np.zeros(n),
        itl_p99_ms=np.zeros(n),
        ttft_p50_ms=np.zeros(n),
        itl_p50_ms=np.zeros(n),
        batch=np.zeros(n),
        chunk=np.full(n, math.nan),
        code=np.full(n, -1, dtype=np.int64),
        why={},
    )
    missed = np.nonzero(~low_meets[:, 0])[0]
    if missed.size:
        shape = low_meets.shape
        kept = np.broadcast_to(low.ok, shape)[missed, 0].tolist()
        ttft_ms = (np.broadcast_to(low.ttft_p99, shape)[missed, 0] * 1e3).tolist()
        itl_ms = (np.broadcast_to(low.itl_p99, shape)[missed, 0] * 1e3).tolist()
        for i, ok, ttft, itl in zip(missed.tolist(), kept, ttft_ms, itl_ms, strict=True):
            found.why[i] = _why_not(role, all_ttft_slo[i], all_itl_slo[i], (ttft, itl) if ok else None)
    live = np.nonzero(low_meets[:, 0])[0]
    if live.size == 0:
        return found
    r = r.take(live)
    pre = None if pre is None else _take_prefill(pre, live)
    ttft_slo, itl_slo, tpot = ttft_slo[live], itl_slo[live], tpot[live]
    low = _Loads(
        **{
            f.name: np.broadcast_to(getattr(low, f.name), low_rate.shape)[live]
            for f in dataclasses.fields(low)
        }
    )
    x_low = low.rate if role == "prefill" else low.batch
    x_top = ceiling[live] if role == "prefill" else r.limit
    x_low = np.minimum(x_low, x_top)
    # Grid: x_low * (x_top / x_low)^(j / G), j = 1..G, the last point the saturation load itself.
    fractions = np.arange(1, RATE_GRID_POINTS + 1, dtype=np.float64).reshape(1, -1) / RATE_GRID_POINTS
    grid = x_low * (x_top / x_low) ** fractions
    grid[:, -1:] = x_top
    if role != "prefill":
        # Known edges of the latency curves, each bracketed by a pair of loads just either side so that an
        # answer sitting on one needs no bisection: the admission queue saturates at a whole number of
        # sequence slots (_erlang_c_v: offered load B >= floor(slots)); the ITL percentiles jump where a
        # prompt starts arriving in more than the percentile's share of iterations
        # (_arrival_tokens_quantile_v: λ t = -ln(1 - tail), i.e. B = output · -ln(1 - tail); the p99 one,
        # which the ITL objective reads).
        edges = [np.floor(r.limit)]
        if role == "aggregated":
            edges.append(r.output * -math.log1p(-TAIL_PROBABILITY))
        sides = (1.0 - SECANT_PAIR_HALF_WIDTH, 1.0 + SECANT_PAIR_HALF_WIDTH)
        pairs = np.concatenate([edge * side for edge in edges for side in sides], axis=1)
        grid = np.sort(np.concatenate([grid, np.clip(pairs, x_low, x_top)], axis=1), axis=1)
    columns = grid.shape[1]
    loads = _loads_at(r, role, grid, pre)
    meets = _meets(role, loads, ttft_slo, itl_slo, tpot)
    # First grid point missing the SLO (all columns when none does); the answer lies between it and the point
    # before.
    first_miss = np.where(meets.all(axis=1), columns, np.argmin(meets, axis=1))
    rows = np.arange(live.size)
    lo_x = np.where(first_miss == 0, x_low[:, 0], grid[rows, np.maximum(first_miss - 1, 0)])
    best = _pick(loads, rows, np.maximum(first_miss - 1, 0), first_miss > 0, low)
    saturated = first_miss == columns
    hi_x = np.where(saturated, x_top[:, 0], grid[rows, np.minimum(first_miss, columns - 1)])
    above = _pick(loads, rows, np.minimum(first_miss, columns - 1), np.ones(live.size, bool), low)
    # Refine between lo_x (meets) and hi_x (misses), all rows in lockstep: three loads per step (see
    # RATE_GRID_POINTS), the bracket moving to the first that misses and the one before it.
    refine = np.nonzero(~saturated)[0]
    # The last pair evaluated around a guess, and its slack (see _min_slack): a local secant through it is
    # a Newton step, which from the steep side of a convex latency curve lands just short of the answer.
    pair_x = np.full((live.size, 2), np.nan)
    pair_s = np.full((live.size, 2), np.nan)
    for step in range(REFINE_MAX_STEPS):
        if refine.size == 0:
            break
        sub = r.take(refine)
        sub_pre = None if pre is None else _take_prefill(pre, refine)
        slo_t, slo_i, sub_tpot = ttft_slo[refine], itl_slo[refine], tpot[refine]
        lo, hi = lo_x[refine], hi_x[refine]
        middle = np.sqrt(lo * hi)
        across = _secant_guess(
            role, lo, hi, _rows_of(best, refine), _rows_of(above, refine), slo_t, slo_i, sub_tpot
        )
        across = np.where(np.isnan(across), middle, across)
        px, ps = pair_x[refine], pair_s[refine]
        local_step = px[:, 0] - ps[:, 0] * (px[:, 1] - px[:, 0]) / (ps[:, 1] - ps[:, 0])
        inside = np.isfinite(local_step) & (local_step > lo) & (local_step < hi)
        newton = np.where(inside, local_step, middle)
        # First step: the secant pair and the midpoint pair; then the Newton pair where it lands inside the
        # bracket (else the secant pair) and the midpoint, so the bracket at least halves every step.
        guesses = [across, newton] if step < 1 else [np.where(inside, newton, across)]
        columns = [
            g * (1.0 + side) for g in guesses for side in (-SECANT_PAIR_HALF_WIDTH, SECANT_PAIR_HALF_WIDTH)
        ]
        points = np.stack(columns if step < 1 else [*columns, middle], axis=1)
        points = np.clip(points, lo[:, None], hi[:, None])
        at = _loads_at(sub, role, points, sub_pre)
        slack = _min_slack(role, at, slo_t, slo_i, sub_tpot)
        # Keep the pair whose slack is nearer zero for the next local step.
        nearer = np.abs(slack[:, 2:4]).min(axis=1) < np.abs(slack[:, :2]).min(axis=1)
        if step >= 1:
            nearer[:] = False
        pair_x[refine] = np.where(nearer[:, None], points[:, 2:4], points[:, :2])
        pair_s[refine] = np.where(nearer[:, None], slack[:, 2:4], slack[:, :2])
        order = np.argsort(points, axis=1)
        points = np.take_along_axis(points, order, axis=1)
        at = _Loads(
            **{
                f.name: np.take_along_axis(np.broadcast_to(getattr(at, f.name), points.shape), order, axis=1)
                for f in dataclasses.fields(at)
            }
        )
        ok = _meets(role, at, slo_t, slo_i, sub_tpot)
        width = points.shape[1]
        miss = np.where(ok.all(axis=1), width, np.argmin(ok, axis=1))
        local = np.arange(refine.size)
        up = miss > 0
        down = miss < width
        lo_x[refine[up]] = points[local[up], miss[up] - 1]
        hi_x[refine[down]] = points[local[down], miss[down]]
        best = _assign(
            best, refine[up], _pick(at, local, np.maximum(miss - 1, 0), up, _rows_of(best, refine)), up
        )
        above = _assign(
            above,
            refine[down],
            _pick(at, local, np.minimum(miss, width - 1), down, _rows_of(above, refine)),
            down,
        )
        # The rate moves no faster than the load (λ = B / (output · t(B)), t growing with B): a bracket
        # within the tolerance in load is within it in rate, wherever the loads above are not servable.
        refine = refine[hi_x[refine] - lo_x[refine] > RATE_RELATIVE_TOLERANCE * lo_x[refine]]
    # Which limit stops a higher rate: the first objective exceeded just above the answer, or saturation.
    above_ok = above.ok[:, 0] & ~(saturated & (role != "prefill"))
    ttft_binds = (
        above_ok & (above.ttft_p99[:, 0] * 1e3 > ttft_slo[:, 0]) if role != "decode" else above_ok & False
    )
    itl_binds = (
        above_ok & (np.where(tpot, above.tpot_p99, above.itl_p99)[:, 0] * 1e3 > itl_slo[:, 0])
        if role != "prefill"
        else above_ok & False
    )
    found.code[live] = np.where(ttft_binds, 1, np.where(itl_binds, 2, 0))
    found.rate[live] = best.rate[:, 0]
    found.ttft_p99_ms[live] = best.ttft_p99[:, 0] * 1e3
    found.itl_p99_ms[live] = best.itl_p99[:, 0] * 1e3
    found.ttft_p50_ms[live] = best.ttft_p50[:, 0] * 1e3
    found.itl_p50_ms[live] = best.itl_p50[:, 0] * 1e3
    found.batch[live] = best.batch[:, 0]
    found.chunk[live] = r.chunk[:, 0]
    return found


def _take_prefill(pre: _PrefillRows, index: npt.NDArray[np.intp]) -> _PrefillRows:
    """The prefill rows at `index`."""
    return _PrefillRows(**{f.name: getattr(pre, f.name)[index] for f in dataclasses.fields(pre)})


def _rows_of(loads: _Loads, index: npt.NDArray[np.intp]) -> _Loads:
    """The (Q, 1) loads at rows `index`."""
    return _Loads(**{f.name: getattr(loads, f.name)[index] for f in dataclasses.fields(loads)})


def _pick(
    loads: _Loads, rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp], take: BoolArray, fallback: _Loads
) -> _Loads:
    """Column `cols[i]` of each row of `loads` where `take`, else the row of `fallback`, as (Q, 1) arrays."""
    out = {}
    for f in dataclasses.fields(loads):
        grid = np.broadcast_to(getattr(loads, f.name), loads.ok.shape)[rows, cols]
        base = np.broadcast_to(getattr(fallback, f.name), (rows.size, 1))[:, 0]
        out[f.name] = np.where(take, grid, base).reshape(-1, 1).copy()
    return _Loads(**out)


def _assign(target: _Loads, index: npt.NDArray[np.intp], source: _Loads, mask: BoolArray) -> _Loads:
    """`target` rows `index` overwritten by the `mask`ed rows of `source` (in place; returns target)."""
    for f in dataclasses.fields(target):
        getattr(target, f.name)[index] = np.broadcast_to(getattr(source, f.name), source.ok.shape)[mask]
    return target


# The reason a rate search gives when no objective binds: the replica saturates first.
SATURATED_REASON: Final = "saturated: memory or prefill capacity binds before the SLO"
_BINDING_REASONS: Final = (SATURATED_REASON, "ttft_p99 binds", "itl_p99 binds")


def _zero(reason: str) -> RatePrediction:
    """An infeasible answer: no rate meets the SLO (or nothing fits)."""
    return RatePrediction(
        max_rps=0.0, ttft_p99_ms=0.0, itl_p99_ms=0.0, max_batch=0, output_tokens_per_s=0.0, reason=reason
    )


# Filler for an answer not computed yet (never returned).
_ZERO_PLACEHOLDER: Final = _zero("not searched")


def _why_not(role: str, ttft_slo_ms: float, itl_slo_ms: float, load_ms: tuple[float, float] | None) -> str:
    """Explain why even a vanishing rate misses the SLO (`load_ms`: TTFT and ITL p99 there, None when the
    replica cannot keep up even there)."""
    if load_ms is None:
        return "the replica cannot hold even one request of this size"
    ttft_ms, itl_ms = load_ms
    parts = []
    if role != "decode" and ttft_ms > ttft_slo_ms:
        parts.append(f"TTFT p99 {ttft_ms:.0f} ms > {ttft_slo_ms:.0f} ms at zero load")
    if role != "prefill" and itl_ms > itl_slo_ms:
        parts.append(f"ITL p99 {itl_ms:.1f} ms > {itl_slo_ms:.1f} ms at zero load")
    return "; ".join(parts) or "SLO not met at zero load"


# --- cost ------------------------------------------------------------------------------------------------


def dollars_per_million_output_tokens(
    price_per_device_hour: float, devices: int, output_tokens_per_s: float
) -> float:
    """$ per 1M output tokens of a replica of `devices` devices producing `output_tokens_per_s` (inf at 0)."""
    if output_tokens_per_s <= 0.0:
        return math.inf
    return price_per_device_hour * devices / 3600.0 / output_tokens_per_s * 1e6
