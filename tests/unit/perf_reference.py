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
   is found by bisection.

Prefill-only and decode-only replicas (disaggregated serving) drop the other phase's work; a prefill
replica's TTFT includes shipping the prompt's KV cache to the decode side over the network.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from typing import Final

import numpy as np

from placement import catalog, perf, perf_efficiency
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


def _gemm_time(phys: _Physics, weight_bytes_read: float, flops: float) -> float:
    """One class of GEMMs on its roofline, with the non-overlapped share of the smaller term."""
    memory_s = weight_bytes_read / phys.bandwidth
    compute_s = flops / phys.linear_flops_rate
    return max(memory_s, compute_s) + phys.eff.overlap_penalty * min(memory_s, compute_s)


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
    model, tp = phys.model, phys.tp
    tokens = decode_tokens + prefill_tokens
    if tokens <= 0.0:
        return phys.eff.step_overhead_s
    # Dense GEMMs: weights read once per iteration, 2 FLOPs per weight per token (head: sampled tokens only).
    sampled = decode_tokens + (1.0 if prefill_tokens > 0 else 0.0)
    dense_flops = 2.0 * (phys.dense_params_per_token * tokens + phys.head_params * sampled) / tp
    time_s = _gemm_time(phys, phys.dense_weight_bytes, dense_flops)
    if model.is_moe:
        # Experts a batch of T routed tokens touches per layer: E (1 - (1 - k/E)^T) in expectation.
        touched = model.experts * (1.0 - (1.0 - model.active_experts / model.experts) ** tokens)
        expert_flops = 2.0 * phys.expert_params * model.active_experts * tokens / tp
        time_s += _gemm_time(phys, phys.expert_weight_bytes * touched, expert_flops) / phys.eff.moe
    # Attention: stream every decode sequence's KV; FLOPs 4 d per cached token for decode, given for prefill.
    q_dim = model.heads * model.head_dim
    attention_flops = (4.0 * model.layers * q_dim * decode_context_tokens + prefill_attention_flops) / tp
    time_s += (decode_context_tokens + prefill_context_tokens) * phys.kv_bytes_per_token / phys.bandwidth
    time_s += attention_flops / phys.attention_flops_rate
    if tp > 1:
        # Two all-reduces per layer (after attention and after the MLP), ring algorithm.
        payload = tokens * model.hidden_size * ACTIVATION_BYTES
        per_call = phys.allreduce_latency_s + 2.0 * (tp - 1) / tp * payload / phys.link_bytes_per_s
        time_s += 2.0 * model.layers * per_call
    return time_s + phys.eff.step_overhead_s


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


def _prefill_alone_s(phys: _Physics, prompt_tokens: float) -> float:
    """Time to prefill one prompt on an idle replica (chunked when the engine chunks)."""
    chunk = phys.engine.prefill_chunk_tokens or prompt_tokens
    chunks = max(1, math.ceil(prompt_tokens / chunk))
    per_chunk = prompt_tokens / chunks
    total = 0.0
    for i in range(chunks):
        # Chunk i attends to the i chunks before it plus itself (causal).
        done = per_chunk * i
        attn = (
            2.0
            * phys.model.layers
            * phys.model.heads
            * phys.model.head_dim
            * per_chunk
            * (2.0 * done + per_chunk)
        )
        total += step_time_s(phys, 0.0, 0.0, per_chunk, attn, prefill_context_tokens=done)
    return total


# --- serving under load -----------------------------------------------------------------------------------


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
    if config.role == "prefill":
        return _prefill_load(phys, workload, rate_rps)
    if config.role == "decode":
        return _decode_load(phys, workload, rate_rps)
    return _aggregated_load(phys, workload, rate_rps)


def _decode_step(
    phys: _Physics, batch: float, workload: RequestSizes, prefill: float, prompts: float
) -> float:
    """Iteration time with `batch` decoding sequences and `prefill` prompt tokens from `prompts` prompts."""
    context = batch * (workload.prompt_tokens + workload.output_tokens / 2.0)
    attn = 0.0
    earlier_chunks = 0.0
    if prompts > 0:
        attn = prompts * 2.0 * phys.model.layers * phys.model.heads * phys.model.head_dim
        attn *= workload.prompt_second_moment * min(
            1.0, prefill / max(prompts * workload.prompt_tokens, 1e-9)
        )
        budget = _prefill_budget(phys, batch)
        if budget is not None and budget > 0.0:
            # A prompt of L tokens cut into chunks of c re-reads L²/(2c) - L/2 earlier KV entries in all:
            # per prefilled token (token-weighted over lognormal L) E[L²] / (2 c E[L]) - 1/2.
            per_token = workload.prompt_second_moment / (2.0 * budget * workload.prompt_tokens) - 0.5
            earlier_chunks = prefill * max(per_token, 0.0)
    return step_time_s(phys, batch, context, prefill, attn, earlier_chunks)


def _prefill_budget(phys: _Physics, running: float) -> float | None:
    """Prompt tokens one iteration may carry next to `running` decoding sequences (None: whole prompts)."""
    chunk = phys.engine.prefill_chunk_tokens
    if chunk is None:
        return None
    return float(chunk) - running if phys.engine.budget_counts_decode else float(chunk)


STEADY_GRID_POINTS: Final = 16
STEADY_BISECTION_STEPS: Final = 60


def _steady_batch(
    phys: _Physics, workload: RequestSizes, rate: float, with_prefill: bool
) -> tuple[float, float] | None:
    """Fixed point of Little's law B = λ · output · t(B): (batch, mean step seconds), None if unstable.

    In steady state B decoding sequences share every iteration with the B / output prompts that replace
    the finished ones, so t(B) is explicit; the smallest root within the slot limit is bracketed on a grid
    and bisected.
    """
    limit = _batch_limit(
        phys, workload.prompt_tokens, workload.output_tokens, phys.engine.reserves_full_sequence
    )

    def step_at(batch: float) -> float:
        if not with_prefill:
            return _decode_step(phys, max(batch, 1.0), workload, 0.0, 0.0)
        return _decode_step(
            phys,
            max(batch, 1.0),
            workload,
            batch * workload.prompt_tokens / workload.output_tokens,
            batch / workload.output_tokens,
        )

    top = max(limit, 1.0)
    demand = rate * workload.output_tokens
    if demand <= 0.0:
        return 0.0, step_at(0.0)
    lo = 0.0
    for k in range(1, STEADY_GRID_POINTS + 1):
        hi = top * k / STEADY_GRID_POINTS
        if hi - demand * step_at(hi) >= 0.0:
            break
        lo = hi
    else:
        return None
    for _ in range(STEADY_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid - demand * step_at(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return (hi, step_at(hi)) if hi <= limit else None


def _queue_tail(
    rate: float, mean_service_s: float, second_moment_s2: float
) -> tuple[float, float, float] | None:
    """M/G/1 waiting time (p50, p99, utilization) from Pollaczek-Khinchine and an exponential tail."""
    rho = rate * mean_service_s
    if rho >= 1.0:
        return None
    if rho <= 0.0:
        return 0.0, 0.0, 0.0
    mean_wait = rate * second_moment_s2 / (2.0 * (1.0 - rho))
    # P(W > w) ≈ ρ exp(-w ρ / E[W]): the heavy-traffic exponential tail (Kingman), exact for M/M/1.
    conditional = mean_wait / rho

    def quantile(tail: float) -> float:
        return conditional * math.log(rho / tail) if rho > tail else 0.0

    return quantile(0.5), quantile(TAIL_PROBABILITY), rho


def _arrival_tokens_quantile(arrivals_mean: float, workload: RequestSizes, tail: float) -> float:
    """Prompt tokens arriving in one iteration that are exceeded with probability `tail`.

    Arrivals are Poisson (mean `arrivals_mean`) with lognormal prompt lengths. At most one prompt
    arrives in most iterations when the mean is small: then P(X > x) ≈ P(any arrival) · P(L > x), so x
    is the prompt-length quantile at tail / P(any arrival). Many arrivals: the compound sum is about
    normal with mean λt·E[L] and variance λt·E[L²]. The larger of the two is taken.
    """
    any_arrival = 1.0 - math.exp(-arrivals_mean)
    if any_arrival <= tail:
        return 0.0
    mean = workload.prompt_tokens
    sigma = lognormal_sigma(mean, workload.prompt_p99)
    single = mean
    if sigma > 0.0:
        z = _STANDARD_NORMAL.inv_cdf(1.0 - tail / any_arrival)
        single = math.exp(math.log(mean) - sigma**2 / 2.0 + sigma * z)
    z_tail = _STANDARD_NORMAL.inv_cdf(1.0 - tail)
    summed = arrivals_mean * mean + z_tail * math.sqrt(arrivals_mean * workload.prompt_second_moment)
    return max(single, summed)


# Below this many batch slots the Erlang C probability is computed exactly; above, Halfin-Whitt's
# many-server approximation (exact in the limit, within a few percent from ~50 servers).
ERLANG_EXACT_MAX_SERVERS: Final = 64


def _admission_wait(slots: float, offered: float, hold_s: float) -> tuple[float, float]:
    """(p50, p99) wait for a free batch slot: M/M/c with c = KV/engine slots, each held `hold_s`.

    A request is admitted only when a sequence slot (KV capacity, engine max batch) is free; `offered`
    is the mean number of slots in use (λ · hold). Erlang C gives the chance to wait; the wait is then
    exponential with rate c/hold - λ.
    """
    servers = math.floor(slots)
    if servers < 1 or offered <= 0.0:
        return 0.0, 0.0
    if offered >= servers:
        return math.inf, math.inf
    if servers <= ERLANG_EXACT_MAX_SERVERS:
        blocking = 1.0
        for k in range(1, servers + 1):
            blocking = offered * blocking / (k + offered * blocking)
        utilization = offered / servers
        p_wait = blocking / (1.0 - utilization * (1.0 - blocking))
    else:
        beta = (servers - offered) / math.sqrt(offered)
        density = _STANDARD_NORMAL.pdf(beta)
        if density <= 0.0:
            # Far from saturation (beta beyond ~38): no request ever waits.
            return 0.0, 0.0
        p_wait = 1.0 / (1.0 + beta * _STANDARD_NORMAL.cdf(beta) / density)
    drain_rate = servers / hold_s - offered / hold_s
    if drain_rate <= 0.0:
        # Offered load within rounding of the slots: saturated, as the vectorized division by zero says.
        return math.inf, math.inf

    def quantile(tail: float) -> float:
        return math.log(p_wait / tail) / drain_rate if p_wait > tail else 0.0

    return quantile(0.5), quantile(TAIL_PROBABILITY)


def _own_prefill(
    phys: _Physics, workload: RequestSizes, running: float, budget: float, prompt: float, others: float
) -> float:
    """Seconds of the whole iterations that carry one prompt (each also decodes the running sequences)."""
    chunks = max(1.0, math.ceil(prompt / max(budget, 1.0)))
    own = prompt / chunks
    tokens = own + min(others, max(budget - own, 0.0))
    return chunks * _decode_step(phys, running, workload, tokens, tokens / workload.prompt_tokens)


def _tpot_p99(
    phys: _Physics,
    workload: RequestSizes,
    rate: float,
    batch: float,
    step: float,
    budget: float,
    limit: float,
    batch_varies: bool = True,
) -> float:
    """MLPerf's TPOT p99 (p99 over requests of each one's mean inter-token time), seconds (scalar twin).

    The request-averaged batch (M/G/inf population averaged over one holding time: variance 2B/3, capped
    at the slot limit) and the request-averaged prompt tokens per iteration (compound Poisson, variance
    λ t E[L²] / output, capped by the budget), each at its p99 through the iteration time, in quadrature.
    """
    running = max(batch, 1.0)
    prefill = min(rate * step * workload.prompt_tokens, max(budget, 0.0))
    base = _decode_step(phys, running, workload, prefill, prefill / workload.prompt_tokens)
    spread = Z_P99 * math.sqrt(rate * step * workload.prompt_second_moment / max(workload.output_tokens, 1.0))
    prefill_hi = min(prefill + spread, max(budget, prefill))
    from_prefill = (
        _decode_step(phys, running, workload, prefill_hi, prefill_hi / workload.prompt_tokens) - base
    )
    from_batch = 0.0
    if batch_varies:
        batch_hi = min(running + Z_P99 * math.sqrt(2.0 * max(batch, 0.0) / 3.0), max(limit, running))
        from_batch = _decode_step(phys, batch_hi, workload, prefill, prefill / workload.prompt_tokens) - base
    return step + math.sqrt(max(from_prefill, 0.0) ** 2 + max(from_batch, 0.0) ** 2)


def _aggregated_load(phys: _Physics, workload: RequestSizes, rate: float) -> LoadPrediction | None:
    """Continuous batching with chunked prefill: decode and prompts share every iteration."""
    steady = _steady_batch(phys, workload, rate, with_prefill=True)
    if steady is None:
        return None
    batch, step = steady
    running = max(batch, 1.0)
    chunk_budget = _prefill_budget(phys, running)
    mean_prompt, p99_prompt = workload.prompt_tokens, workload.prompt_p99
    # Prompt tokens drain at the budget of each iteration: the chunk budget (less the decode tokens where
    # the engine counts them) per iteration carrying a full chunk; engines without chunking run whole
    # prompts (one per iteration, at least).
    budget = chunk_budget if chunk_budget is not None else max(p99_prompt, mean_prompt)
    if budget < 1.0:
        # Decoding sequences fill the whole token budget: prompts never get in.
        return None
    full = _decode_step(phys, running, workload, budget, budget / mean_prompt)
    service_rate_tok = budget / full
    tail = _queue_tail(
        rate, mean_prompt / service_rate_tok, workload.prompt_second_moment / service_rate_tok**2
    )
    if tail is None:
        return None
    wait_p50, wait_p99, rho = tail
    # Admission: a request first needs a free sequence slot (KV capacity, engine batch cap).
    limit = _batch_limit(phys, mean_prompt, workload.output_tokens, phys.engine.reserves_full_sequence)
    admit_p50, admit_p99 = _admission_wait(limit, batch, workload.output_tokens * step)
    if math.isinf(admit_p99):
        return None
    # TTFT: waiting for a slot and for the prefill budget, the prompt's own prefill, the iteration in flight.
    # The serving path's fixed cost (placement.perf.SERVING_PATH_FIXED_S, the same constant).
    path = perf.SERVING_PATH_FIXED_S
    others = rate * step * mean_prompt
    own_p50 = _own_prefill(phys, workload, running, budget, mean_prompt, others)
    own_p99 = _own_prefill(phys, workload, running, budget, p99_prompt, others)
    ttft_p50 = path + admit_p50 + wait_p50 + own_p50 + step / 2.0
    ttft_p99 = path + admit_p99 + wait_p99 + own_p99 + step
    # ITL: an iteration carries the prompt tokens that arrived during the previous one plus any backlog,
    # capped by the budget. Every iteration emits a token per running sequence, so the p99 gap is the
    # iteration whose prefill load has a 1% chance of being exceeded.
    backlog_p99 = wait_p99 * rate * mean_prompt
    backlog_p50 = wait_p50 * rate * mean_prompt
    tokens_p99 = min(_arrival_tokens_quantile(rate * step, workload, TAIL_PROBABILITY) + backlog_p99, budget)
    tokens_p50 = min(_arrival_tokens_quantile(rate * step, workload, 0.5) + backlog_p50, budget)
    itl_p99 = _decode_step(phys, running, workload, tokens_p99, tokens_p99 / mean_prompt)
    itl_p50 = _decode_step(phys, running, workload, tokens_p50, tokens_p50 / mean_prompt)
    itl_p99 = max(itl_p99, itl_p50)
    tpot_p99 = _tpot_p99(phys, workload, rate, batch, step, budget, limit)
    return LoadPrediction(
        rate_rps=rate,
        batch=batch,
        ttft_p50_ms=ttft_p50 * 1e3,
        ttft_p99_ms=ttft_p99 * 1e3,
        itl_p50_ms=itl_p50 * 1e3,
        itl_p99_ms=itl_p99 * 1e3,
        prefill_utilization=rho,
        step_ms=step * 1e3,
        tpot_p99_ms=tpot_p99 * 1e3,
    )


CLOSED_LOOP_STEPS: Final = 200


def _queue_mean(rate: float, mean_service_s: float, second_moment_s2: float) -> float:
    """Mean M/G/1 wait (Pollaczek-Khinchine); infinite at utilization >= 1."""
    rho = rate * mean_service_s
    return rate * second_moment_s2 / (2.0 * (1.0 - rho)) if rho < 1.0 else math.inf


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
    """Aggregated replica with `concurrency` requests always in flight (closed loop); see perf."""
    if config.role != "aggregated":
        raise InvalidConfigError(f"a closed loop is modelled for aggregated replicas, not {config.role!r}")
    _validate_chunk(config, prefill_chunk_tokens)
    reason = infeasibility(config)
    if reason is not None:
        raise InvalidConfigError(reason)
    phys = _physics(config, efficiency)
    if prefill_chunk_tokens is not None:
        phys = _with_chunk(phys, prefill_chunk_tokens)
    if max_num_seqs is not None:
        phys = dataclasses.replace(phys, engine=dataclasses.replace(phys.engine, max_batch=max_num_seqs))
    limit = _batch_limit(
        phys, workload.prompt_tokens, workload.output_tokens, phys.engine.reserves_full_sequence
    )
    if limit < 1.0:
        return None
    users, prompt, output = float(concurrency), workload.prompt_tokens, workload.output_tokens
    path = perf.SERVING_PATH_FIXED_S + request_overhead_s
    slots = max(math.floor(limit), 1.0)

    def budget_at(running: float) -> float:
        chunk = _prefill_budget(phys, max(running, 1.0))
        if chunk is None:
            chunk = max(workload.prompt_p99, prompt)
        return max(chunk, 1.0)

    step = _decode_step(phys, 1.0, workload, 0.0, 0.0)
    rate = users / (path + output * step)
    for _ in range(CLOSED_LOOP_STEPS):
        running = min(max(users - rate * path, 1e-9), slots)
        budget = budget_at(running)
        prefill = min(rate * step * prompt, budget)
        step = _decode_step(phys, max(running, 1.0), workload, prefill, prefill / prompt)
        served = min(running / (output * step), budget / (step * prompt))
        settled = abs(served - rate) <= perf.CLOSED_LOOP_TOLERANCE * rate
        rate = 0.5 * (rate + served)
        if settled:
            break
    inside = max(users - rate * path, 1e-9)
    running = min(inside, slots)
    slot_wait = max(inside - slots, 0.0) / rate
    budget = budget_at(running)
    full = _decode_step(phys, max(running, 1.0), workload, budget, budget / prompt)
    service = prompt * full / budget
    second = workload.prompt_second_moment * (full / budget) ** 2
    tail = _queue_tail(rate, service, second)
    wait_p50, wait_p99, rho = (math.inf, math.inf, rate * service) if tail is None else tail
    wait_mean = _queue_mean(rate, service, second)
    most = (min(users, slots) - 1.0) * service
    wait_p50, wait_p99, wait_mean = min(wait_p50, most), min(wait_p99, most), min(wait_mean, most)
    others = rate * step * prompt
    own_p50 = _own_prefill(phys, workload, max(running, 1.0), budget, prompt, others)
    own_p99 = _own_prefill(phys, workload, max(running, 1.0), budget, workload.prompt_p99, others)
    tokens_p99 = min(
        _arrival_tokens_quantile(rate * step, workload, TAIL_PROBABILITY) + wait_p99 * rate * prompt, budget
    )
    tokens_p50 = min(_arrival_tokens_quantile(rate * step, workload, 0.5) + wait_p50 * rate * prompt, budget)
    itl_p99 = _decode_step(phys, max(running, 1.0), workload, tokens_p99, tokens_p99 / prompt)
    itl_p50 = _decode_step(phys, max(running, 1.0), workload, tokens_p50, tokens_p50 / prompt)
    return LoadPrediction(
        rate_rps=rate,
        batch=running,
        ttft_p50_ms=(path + slot_wait + wait_p50 + own_p50 + step / 2.0) * 1e3,
        ttft_p99_ms=(path + slot_wait + wait_p99 + own_p99 + step) * 1e3,
        itl_p50_ms=itl_p50 * 1e3,
        itl_p99_ms=max(itl_p99, itl_p50) * 1e3,
        prefill_utilization=rho,
        step_ms=step * 1e3,
        ttft_mean_ms=(path + slot_wait + wait_mean + own_p50 + step / 2.0) * 1e3,
        itl_mean_ms=step * 1e3,
    )


def _decode_load(phys: _Physics, workload: RequestSizes, rate: float) -> LoadPrediction | None:
    """Decode-only replica: sequences arrive with their KV already computed; no prefill interference."""
    steady = _steady_batch(phys, workload, rate, with_prefill=False)
    if steady is None:
        return None
    batch, step = steady
    # Batch membership varies (Poisson arrivals, output lengths): p99 step at the p99 of a Poisson batch.
    batch_p99 = batch + Z_P99 * math.sqrt(max(batch, 0.0))
    limit = _batch_limit(
        phys, workload.prompt_tokens, workload.output_tokens, phys.engine.reserves_full_sequence
    )
    step_p99 = _decode_step(phys, max(min(batch_p99, limit), 1.0), workload, 0.0, 0.0)
    admit_p50, admit_p99 = _admission_wait(limit, batch, workload.output_tokens * step)
    if math.isinf(admit_p99):
        return None
    return LoadPrediction(
        rate_rps=rate,
        batch=batch,
        ttft_p50_ms=(admit_p50 + step) * 1e3,
        ttft_p99_ms=(admit_p99 + step_p99) * 1e3,
        itl_p50_ms=step * 1e3,
        itl_p99_ms=step_p99 * 1e3,
        prefill_utilization=0.0,
        step_ms=step * 1e3,
        tpot_p99_ms=_tpot_p99(phys, workload, rate, batch, step, 0.0, limit) * 1e3,
    )


def kv_transfer_s(phys: _Physics, prompt_tokens: float) -> float:
    """Shipping one prompt's KV cache from a prefill replica to a decode replica over RDMA."""
    total_bytes = prompt_tokens * phys.kv_bytes_per_token * phys.tp
    return KV_TRANSFER_LATENCY_S + total_bytes / (KV_TRANSFER_BYTES_PER_S_PER_DEVICE * phys.tp)


def _prefill_load(phys: _Physics, workload: RequestSizes, rate: float) -> LoadPrediction | None:
    """Prefill-only replica: prompts batched up to the token budget, M/G/1 on prompt tokens, + KV transfer."""
    chunk = float(phys.engine.prefill_chunk_tokens or max(workload.prompt_p99, 1.0))
    prompts_per_batch = max(chunk / workload.prompt_tokens, 1.0)
    batch_attn = prefill_attention_flops(phys.model, 1.0, prompts_per_batch) * workload.prompt_second_moment
    batch_s = step_time_s(phys, 0.0, 0.0, prompts_per_batch * workload.prompt_tokens, batch_attn)
    service_rate_tok = prompts_per_batch * workload.prompt_tokens / batch_s
    mean_service = workload.prompt_tokens / service_rate_tok
    tail = _queue_tail(rate, mean_service, workload.prompt_second_moment / service_rate_tok**2)
    if tail is None:
        return None
    wait_p50, wait_p99, rho = tail
    alone_p99 = max(_prefill_alone_s(phys, workload.prompt_p99), workload.prompt_p99 / service_rate_tok)
    alone_p50 = max(_prefill_alone_s(phys, workload.prompt_tokens), mean_service)
    path = perf.SERVING_PATH_FIXED_S
    ttft_p50 = path + wait_p50 + alone_p50 + kv_transfer_s(phys, workload.prompt_tokens)
    ttft_p99 = path + wait_p99 + alone_p99 + kv_transfer_s(phys, workload.prompt_p99)
    return LoadPrediction(
        rate_rps=rate,
        batch=prompts_per_batch,
        ttft_p50_ms=ttft_p50 * 1e3,
        ttft_p99_ms=ttft_p99 * 1e3,
        itl_p50_ms=0.0,
        itl_p99_ms=0.0,
        prefill_utilization=rho,
        step_ms=batch_s * 1e3,
    )


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
    return _max_rate_cached(
        config, workload, slo, itl_is_tpot, efficiency, prefill_chunk_tokens, choose_prefill_chunk
    )


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


def prefill_chunk_candidates(engine: EngineTraits) -> tuple[int, ...]:
    """Budgets the model tries for an engine, its default first (empty when the engine does not chunk)."""
    default = engine.prefill_chunk_tokens
    if default is None:
        return ()
    smaller = sorted((c for c in PREFILL_CHUNK_CANDIDATES if c < default), reverse=True)
    return (default, *smaller)


def _with_chunk(phys: _Physics, chunk_tokens: int) -> _Physics:
    """The same replica run with a different chunked-prefill budget."""
    if chunk_tokens == phys.engine.prefill_chunk_tokens:
        return phys
    return dataclasses.replace(
        phys, engine=dataclasses.replace(phys.engine, prefill_chunk_tokens=chunk_tokens)
    )


@functools.lru_cache(maxsize=65536)
def _max_rate_cached(
    config: ReplicaConfig,
    workload: RequestSizes,
    slo: LatencySlo,
    itl_is_tpot: bool,
    efficiency: perf_efficiency.Efficiency | None,
    prefill_chunk_tokens: int | None = None,
    choose_prefill_chunk: bool = True,
) -> RatePrediction:
    """See max_rate_under_slo (memoized: the solver asks the same question for many pools)."""
    reason = infeasibility(config)
    if reason is not None:
        return _zero(reason)
    phys = _physics(config, efficiency)
    context = workload.prompt_p99 + workload.output_p99
    if context > phys.model.max_context_tokens:
        return _zero(
            f"a {context:.0f}-token sequence exceeds the {phys.model.max_context_tokens}-token context of "
            f"{phys.model.id}"
        )
    if config.role != "prefill" and phys.kv_capacity_tokens < context:
        return _zero(
            f"a {context:.0f}-token sequence needs more KV than the {phys.kv_capacity_tokens:.0f} tokens "
            f"{phys.model.id} leaves on {phys.acc.id} x{phys.tp}"
        )
    if prefill_chunk_tokens is not None:
        budgets: tuple[int | None, ...] = (prefill_chunk_tokens,)
    elif choose_prefill_chunk and config.role != "decode":
        budgets = prefill_chunk_candidates(phys.engine) or (None,)
    else:
        budgets = (None,)
    # The engine default is searched in full; another budget only needs to beat the best so far, so it is
    # tested there first and searched above it only when it meets the SLO there. The highest rate wins (the
    # larger budget on a tie): no margin, so a looser SLO never serves less.
    best: RatePrediction | None = None
    for chunk in budgets:
        candidate = phys if chunk is None else _with_chunk(phys, chunk)
        floor = 0.0 if best is None else best.max_rps
        found = _search_rate(config, candidate, workload, slo, itl_is_tpot, floor)
        if best is None or (found is not None and found.max_rps > best.max_rps):
            best = found
    assert best is not None, "the first budget is searched from zero and always answers"
    return best


def _search_rate(
    config: ReplicaConfig,
    phys: _Physics,
    workload: RequestSizes,
    slo: LatencySlo,
    itl_is_tpot: bool,
    floor_rps: float,
) -> RatePrediction | None:
    """Bisection for the highest SLO-meeting rate of one physical replica.

    With `floor_rps` > 0, None unless the replica meets the SLO at that rate (the search then starts
    there); with 0, an answer always (max_rps 0.0 and the reason when even a vanishing rate misses).
    """

    def meets(load: LoadPrediction | None) -> bool:
        if load is None:
            return False
        ttft_ok = config.role == "decode" or load.ttft_p99_ms <= slo.ttft_p99_ms
        itl_ms = load.tpot_p99_ms if itl_is_tpot else load.itl_p99_ms
        itl_ok = config.role == "prefill" or itl_ms <= slo.itl_p99_ms
        return ttft_ok and itl_ok

    def load_at(rate: float) -> LoadPrediction | None:
        if config.role == "prefill":
            return _prefill_load(phys, workload, rate)
        if config.role == "decode":
            return _decode_load(phys, workload, rate)
        return _aggregated_load(phys, workload, rate)

    # Upper bracket: the rate at which the replica could not keep up even with unlimited latency.
    if config.role == "prefill":
        # Prompts/s if every iteration were a full prefill batch.
        ceiling = (
            1.0
            / _prefill_alone_s(phys, workload.prompt_tokens)
            * max((phys.engine.prefill_chunk_tokens or workload.prompt_tokens) / workload.prompt_tokens, 1.0)
        )
    else:
        limit = _batch_limit(
            phys, workload.prompt_tokens, workload.output_tokens, phys.engine.reserves_full_sequence
        )
        step = _decode_step(phys, max(limit, 1.0), workload, 0.0, 0.0)
        ceiling = max(limit, 1.0) / step / workload.output_tokens
    if floor_rps > 0.0:
        if floor_rps >= ceiling:
            return None
        low_rate = floor_rps
        low = load_at(low_rate)
        if not meets(low):
            return None
    else:
        low_rate = ceiling * 1e-6
        low = load_at(low_rate)
        if not meets(low):
            return _zero(_why_not(config, slo, low))
    lo, hi = low_rate, ceiling
    best = low
    for _ in range(RATE_SEARCH_STEPS):
        if hi - lo <= RATE_RELATIVE_TOLERANCE * lo:
            break
        mid = 0.5 * (lo + hi)
        load = load_at(mid)
        if meets(load):
            lo, best = mid, load
        else:
            hi = mid
    assert best is not None
    binding = _binding(config, slo, load_at(hi))
    return RatePrediction(
        max_rps=lo,
        ttft_p99_ms=best.ttft_p99_ms,
        itl_p99_ms=best.itl_p99_ms,
        max_batch=max(1, round(best.batch)),
        output_tokens_per_s=lo * workload.output_tokens if config.role != "prefill" else 0.0,
        reason=binding,
        ttft_p50_ms=best.ttft_p50_ms,
        itl_p50_ms=best.itl_p50_ms,
        prefill_chunk_tokens=phys.engine.prefill_chunk_tokens if config.role != "decode" else None,
    )


def _zero(reason: str) -> RatePrediction:
    """An infeasible answer: no rate meets the SLO (or nothing fits)."""
    return RatePrediction(
        max_rps=0.0, ttft_p99_ms=0.0, itl_p99_ms=0.0, max_batch=0, output_tokens_per_s=0.0, reason=reason
    )


def _why_not(config: ReplicaConfig, slo: LatencySlo, load: LoadPrediction | None) -> str:
    """Explain why even a vanishing rate misses the SLO."""
    if load is None:
        return "the replica cannot hold even one request of this size"
    parts = []
    if config.role != "decode" and load.ttft_p99_ms > slo.ttft_p99_ms:
        parts.append(f"TTFT p99 {load.ttft_p99_ms:.0f} ms > {slo.ttft_p99_ms:.0f} ms at zero load")
    if config.role != "prefill" and load.itl_p99_ms > slo.itl_p99_ms:
        parts.append(f"ITL p99 {load.itl_p99_ms:.1f} ms > {slo.itl_p99_ms:.1f} ms at zero load")
    return "; ".join(parts) or "SLO not met at zero load"


def _binding(config: ReplicaConfig, slo: LatencySlo, above: LoadPrediction | None) -> str:
    """Which limit stops a higher rate: the first SLO exceeded just above the maximum, or saturation."""
    if above is None:
        return "saturated: memory or prefill capacity binds before the SLO"
    if config.role != "decode" and above.ttft_p99_ms > slo.ttft_p99_ms:
        return "ttft_p99 binds"
    if config.role != "prefill" and above.itl_p99_ms > slo.itl_p99_ms:
        return "itl_p99 binds"
    return "saturated: memory or prefill capacity binds before the SLO"


# --- cost ------------------------------------------------------------------------------------------------


def dollars_per_million_output_tokens(
    price_per_device_hour: float, devices: int, output_tokens_per_s: float
) -> float:
    """$ per 1M output tokens of a replica of `devices` devices producing `output_tokens_per_s` (inf at 0)."""
    if output_tokens_per_s <= 0.0:
        return math.inf
    return price_per_device_hour * devices / 3600.0 / output_tokens_per_s * 1e6
