"""Performance model: hand-computed values, physics invariants (plain and hypothesis), the contract API."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from placement import catalog, perf, perf_efficiency
from tests.unit.perf_fixtures import IDEAL

H100 = catalog.get_accelerator("h100")
MODELS = sorted(catalog.MODELS)
FULL_CHIPS = sorted(a for a in catalog.ACCELERATORS if "/" not in a)


def config(
    model: str = "llama-3.1-8b",
    chip: str | catalog.Accelerator = "h100",
    precision: str = "fp8",
    tp: int = 1,
    role: str = "aggregated",
    engine: str = "trtllm",
) -> perf.ReplicaConfig:
    """A replica configuration with test defaults (TensorRT-LLM, fp8, one H100)."""
    return perf.ReplicaConfig(model, chip, precision, tp, role=role, engine=engine)


# --- hand-computed values -------------------------------------------------------------------------------


def test_kv_bytes_per_token_known_values() -> None:
    # 2 (K and V) x layers x kv_heads x head_dim x bytes.
    assert perf.kv_bytes_per_token(catalog.get_model("llama-3.1-70b"), "bf16") == 2 * 80 * 8 * 128 * 2
    assert perf.kv_bytes_per_token(catalog.get_model("llama-3.1-70b"), "fp8") == 2 * 80 * 8 * 128 * 1
    # Llama-2-7B has no GQA: 32 KV heads, 4x the KV of Llama-3.1-8B.
    assert perf.kv_bytes_per_token(catalog.get_model("llama-2-7b"), "bf16") == 2 * 32 * 32 * 128 * 2
    assert perf.kv_bytes_per_token(catalog.get_model("llama-3.1-8b"), "bf16") == 2 * 32 * 8 * 128 * 2
    # More devices than KV heads replicate heads: tp 16 holds 16 heads' worth.
    assert perf.kv_bytes_per_token(catalog.get_model("llama-3.1-70b"), "bf16", tp=16) == 2 * 80 * 16 * 128 * 2


def test_weight_bytes_known_values() -> None:
    model = catalog.get_model("llama-3.1-8b")
    assert perf.weight_bytes(model, "bf16") == model.total_params * 2
    # fp8 quantizes the body; embeddings and output head stay 16-bit.
    body = model.total_params - model.embedding_params
    assert perf.weight_bytes(model, "fp8") == body * 1 + model.embedding_params * 2


def test_fp8_body_takes_half_the_bytes_of_bf16() -> None:
    for model_id in MODELS:
        model = catalog.get_model(model_id)
        embeddings = model.embedding_params * 2
        bf16_body = perf.weight_bytes(model, "bf16") - embeddings
        fp8_body = perf.weight_bytes(model, "fp8") - embeddings
        assert fp8_body == pytest.approx(bf16_body / 2)
        assert (
            perf.weight_bytes(model, "int4")
            < perf.weight_bytes(model, "int8")
            < perf.weight_bytes(model, "bf16")
        )


def test_single_token_decode_step_is_weights_over_bandwidth() -> None:
    # Llama-3.1-8B fp8 at batch 1, no context: the step streams the body (1 B/param) and the 16-bit output
    # head once; that is 8,030,261,248 bytes (body 6,979,588,096 + head 2 x 525,336,576) over 3.35 TB/s.
    phys = perf._physics(config(), IDEAL)
    assert phys.dense_weight_bytes == 8_030_261_248
    step_s = perf.step_time_s(phys, decode_tokens=1, decode_context_tokens=0, prefill_tokens=0,
                              prefill_attention_flops=0)  # fmt: skip
    flops_s = 2 * (6_979_588_096 + 525_336_576) / 1979e12
    assert step_s == pytest.approx(8_030_261_248 / 3.35e12 + 0.0 * flops_s, rel=1e-9)
    assert step_s * 1e3 == pytest.approx(2.397, abs=0.001)


def test_prefill_is_compute_bound_with_attention_term() -> None:
    # 8192 prompt tokens on an ideal H100 at fp8: linear FLOPs 2 x body x tokens + head once, attention
    # 2 L^2 d per layer at the 16-bit peak.
    model = catalog.get_model("llama-3.1-8b")
    phys = perf._physics(config(), IDEAL)
    tokens = 8192
    attention = perf.prefill_attention_flops(model, tokens)
    assert attention == 2 * 32 * 4096 * tokens**2
    step_s = perf.step_time_s(phys, 0, 0, tokens, attention)
    body = model.total_params - model.embedding_params
    expected = 2 * (body * tokens + model.vocab_size * model.hidden_size) / 1979e12 + attention / 989e12
    assert step_s == pytest.approx(expected, rel=1e-9)


def test_moe_reads_only_touched_experts_at_batch_one() -> None:
    mixtral = catalog.get_model("mixtral-8x7b")
    phys = perf._physics(config("mixtral-8x7b"), IDEAL)
    one = perf.step_time_s(phys, 1, 0, 0, 0)
    # Batch 1 touches 2 of 8 experts: far less than streaming all 46.7B parameters.
    all_weights_s = perf.weight_bytes(mixtral, "fp8") / 3.35e12
    assert one < 0.45 * all_weights_s
    # A large batch touches every expert.
    many = perf.step_time_s(phys, 512, 0, 0, 0)
    assert many > 0.9 * (phys.dense_weight_bytes + 8 * phys.expert_weight_bytes) / 3.35e12


# --- invariants -----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    bandwidth_tb=st.floats(0.2, 10.0),
    factor=st.floats(1.0, 4.0),
    batch=st.integers(1, 512),
    context=st.integers(0, 8192),
)
def test_more_bandwidth_never_slows_decode(
    bandwidth_tb: float, factor: float, batch: int, context: int
) -> None:
    slow = dataclasses.replace(H100, id="slow", mem_bandwidth_bytes_per_s=bandwidth_tb * 1e12)
    fast = dataclasses.replace(H100, id="fast", mem_bandwidth_bytes_per_s=bandwidth_tb * 1e12 * factor)
    step_slow = perf.step_time_s(perf._physics(config(chip=slow), None), batch, batch * context, 0, 0)
    step_fast = perf.step_time_s(perf._physics(config(chip=fast), None), batch, batch * context, 0, 0)
    assert step_fast <= step_slow


@settings(max_examples=30, deadline=None)
@given(memory_gib=st.integers(20, 200), extra_gib=st.integers(1, 100), prompt=st.integers(16, 8192))
def test_larger_memory_admits_a_larger_batch(memory_gib: int, extra_gib: int, prompt: int) -> None:
    small = dataclasses.replace(H100, id="small", memory_bytes=memory_gib * catalog.GIB)
    large = dataclasses.replace(H100, id="large", memory_bytes=(memory_gib + extra_gib) * catalog.GIB)
    assert perf.max_batch(config(chip=large), prompt, 256) >= perf.max_batch(config(chip=small), prompt, 256)


@pytest.mark.parametrize("model_id", ["llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b"])
@pytest.mark.parametrize("batch", [1, 64, 1024])
def test_tensor_parallel_speedup_is_sublinear(model_id: str, batch: int) -> None:
    # One iteration at a fixed batch: tp devices never make it tp times faster (communication, replicated
    # work), though it does get faster.
    steps = {}
    for tp in (1, 2, 4, 8):
        phys = perf._physics(config(model_id, chip="h200", tp=tp), None)
        steps[tp] = perf.step_time_s(phys, batch, batch * 1024, 0, 0)
    for tp in (2, 4, 8):
        assert steps[tp] < steps[1]
        assert steps[1] / steps[tp] < tp


@pytest.mark.parametrize("mig_id", sorted(a for a in catalog.ACCELERATORS if "/" in a))
def test_a_mig_slice_is_never_faster_than_its_parent(mig_id: str) -> None:
    mig = catalog.get_accelerator(mig_id)
    assert mig.parent is not None
    slo = perf.LatencySlo(ttft_p99_ms=2000, itl_p99_ms=100)
    for model_id in ("llama-3.1-8b", "mistral-7b", "llama-2-7b"):
        for precision in ("fp8", "int4"):
            sliced = config(model_id, chip=mig_id, precision=precision, engine="vllm")
            whole = config(model_id, chip=mig.parent, precision=precision, engine="vllm")
            if perf.infeasibility(sliced) is not None:
                continue
            assert perf.offline_throughput(sliced, 512, 128).output_tokens_per_s <= (
                perf.offline_throughput(whole, 512, 128).output_tokens_per_s
            )
            assert perf.max_rate_under_slo(sliced, 512, 128, slo).max_rps <= (
                perf.max_rate_under_slo(whole, 512, 128, slo).max_rps * (1 + 1e-6)
            )


@settings(max_examples=60, deadline=None)
@given(
    model_id=st.sampled_from(MODELS),
    chip=st.sampled_from(FULL_CHIPS),
    precision=st.sampled_from(catalog.PRECISIONS),
    tp=st.sampled_from((1, 2, 4, 8)),
    engine=st.sampled_from(("vllm", "trtllm", "sglang", "tgi", "neuron")),
    prompt=st.integers(1, 16000),
    output=st.integers(1, 4000),
)
def test_never_above_the_compute_or_bandwidth_roofline(
    model_id: str, chip: str, precision: str, tp: int, engine: str, prompt: int, output: int
) -> None:
    cfg = config(model_id, chip, precision, tp, engine=engine)
    if perf.infeasibility(cfg) is not None:
        return
    try:
        result = perf.offline_throughput(cfg, prompt, output)
    except perf.InvalidConfigError:
        return
    model, acc = catalog.get_model(model_id), catalog.get_accelerator(chip)
    # Compute roofline: every output token costs 2 x active body params x (1 + prompt/output) FLOPs.
    body_active = model.active_params - model.embedding_params
    flops_per_output = 2.0 * body_active * (1.0 + prompt / output)
    peak = acc.peak_flops_per_s(precision) * tp
    assert result.output_tokens_per_s <= peak / flops_per_output
    # Bandwidth roofline: each iteration streams at least the output head over the replica's bandwidth.
    head_bytes = model.vocab_size * model.hidden_size * 2.0
    assert result.step_ms / 1e3 >= head_bytes / (acc.mem_bandwidth_bytes_per_s * tp)


@settings(max_examples=25, deadline=None)
@given(
    ttft_ms=st.floats(50, 5000),
    itl_ms=st.floats(5, 300),
    looser=st.floats(1.0, 3.0),
    prompt=st.integers(16, 4000),
    output=st.integers(8, 1000),
)
# The counterexample of the former 1% margin on leaving the default chunk: the tight SLO left it for
# 1024 tokens (3.8391 req/s), the looser one stopped at 1536 (3.8366 req/s), 1024 no longer 1% better.
@example(ttft_ms=730.0, itl_ms=93.0, looser=1.125, prompt=1237, output=816)
def test_a_looser_slo_never_lowers_the_rate(
    ttft_ms: float, itl_ms: float, looser: float, prompt: int, output: int
) -> None:
    cfg = config("llama-3.1-8b", "l40s", "fp8", engine="vllm")
    tight = perf.max_rate_under_slo(cfg, prompt, output, perf.LatencySlo(ttft_ms, itl_ms))
    loose = perf.max_rate_under_slo(cfg, prompt, output, perf.LatencySlo(ttft_ms * looser, itl_ms * looser))
    assert loose.max_rps >= tight.max_rps * (1 - 1e-6)


def test_latency_grows_with_load_and_the_replica_saturates() -> None:
    cfg = config("llama-3.1-8b", "h100", "fp8", engine="vllm")
    workload = perf.RequestSizes(1000, 200, prompt_tokens_p99=3000, output_tokens_p99=600)
    previous = None
    for rate in (0.5, 2, 5, 10, 20):
        load = perf.latency_at_rate(cfg, workload, rate)
        assert load is not None
        if previous is not None:
            assert load.ttft_p99_ms >= previous.ttft_p99_ms
            assert load.itl_p50_ms >= previous.itl_p50_ms
        assert load.ttft_p99_ms >= load.ttft_p50_ms and load.itl_p99_ms >= load.itl_p50_ms
        previous = load
    offline = perf.offline_throughput(cfg, 1000, 200)
    assert perf.latency_at_rate(cfg, workload, offline.requests_per_s * 3) is None


def test_longer_tails_cost_latency() -> None:
    cfg = config("llama-3.1-8b", "h100", "fp8", engine="vllm")
    fixed = perf.latency_at_rate(cfg, perf.RequestSizes(1000, 200), 8)
    spread = perf.latency_at_rate(cfg, perf.RequestSizes(1000, 200, prompt_tokens_p99=4000), 8)
    assert fixed is not None and spread is not None
    assert spread.ttft_p99_ms > fixed.ttft_p99_ms


# --- the contract API -----------------------------------------------------------------------------------


def test_max_rate_under_slo_contract_fields() -> None:
    cfg = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1)
    assert cfg.role == "aggregated" and cfg.engine == "vllm"
    result = perf.max_rate_under_slo(cfg, 1000, 200, perf.LatencySlo(ttft_p99_ms=1000, itl_p99_ms=50))
    assert result.max_rps > 0
    assert result.ttft_p99_ms <= 1000 and result.itl_p99_ms <= 50
    assert result.max_batch >= 1
    assert result.output_tokens_per_s == pytest.approx(result.max_rps * 200)
    assert result.reason is not None and "binds" in result.reason
    # The rate meets the SLO and a notably higher one does not.
    workload = perf.RequestSizes(1000, 200)
    above = perf.latency_at_rate(cfg, workload, result.max_rps * 1.05)
    assert above is None or above.ttft_p99_ms > 1000 or above.itl_p99_ms > 50


def test_infeasible_configurations_return_zero_with_a_reason() -> None:
    slo = perf.LatencySlo(1000, 50)
    cases = {
        "needs": perf.ReplicaConfig("llama-3.1-405b", "l4", "bf16", 1),
        "does not support": perf.ReplicaConfig("llama-3.1-8b", "a100-80gb", "fp8", 1),
        "does not run on": perf.ReplicaConfig("llama-3.1-8b", "mi300x", "bf16", 1, engine="trtllm"),
        "exceeds": perf.ReplicaConfig("llama-3.1-8b", "h100/1g.10gb", "int4", 2),
    }
    for fragment, cfg in cases.items():
        result = perf.max_rate_under_slo(cfg, 100, 100, slo)
        assert result.max_rps == 0.0 and result.reason is not None and fragment in result.reason


def test_unmeetable_slo_returns_zero_with_the_latency_that_misses() -> None:
    result = perf.max_rate_under_slo(
        config("llama-3.1-70b", "h100", "fp8"), 100, 100, perf.LatencySlo(1000, 1.0)
    )
    assert result.max_rps == 0.0 and result.reason is not None and "ITL p99" in result.reason


def test_malformed_input_raises_naming_the_field() -> None:
    with pytest.raises(catalog.UnknownIdError, match="unknown model"):
        perf.max_rate_under_slo(
            perf.ReplicaConfig("nope", "h100", "fp8", 1), 10, 10, perf.LatencySlo(100, 10)
        )
    with pytest.raises(perf.InvalidConfigError, match="unknown precision"):
        perf.max_rate_under_slo(
            perf.ReplicaConfig("llama-3.1-8b", "h100", "fp4", 1), 10, 10, perf.LatencySlo(100, 10)
        )
    with pytest.raises(perf.InvalidConfigError, match="unknown role"):
        perf.max_rate_under_slo(config(role="both"), 10, 10, perf.LatencySlo(100, 10))
    with pytest.raises(ValueError, match=r"slo\.itl_p99_ms"):
        perf.LatencySlo(100, -1)
    with pytest.raises(ValueError, match="prompt_tokens"):
        perf.max_rate_under_slo(config(), 0, 10, perf.LatencySlo(100, 10))


def test_disaggregated_roles() -> None:
    slo = perf.LatencySlo(ttft_p99_ms=1500, itl_p99_ms=40)
    prefill = perf.max_rate_under_slo(
        config("llama-3.1-70b", "h100", "fp8", 2, role="prefill"), 2000, 300, slo
    )
    decode = perf.max_rate_under_slo(config("llama-3.1-70b", "h100", "fp8", 2, role="decode"), 2000, 300, slo)
    both = perf.max_rate_under_slo(config("llama-3.1-70b", "h100", "fp8", 2), 2000, 300, slo)
    assert prefill.max_rps > 0 and decode.max_rps > 0 and both.max_rps > 0
    assert prefill.ttft_p99_ms <= 1500 and decode.itl_p99_ms <= 40
    # A replica doing only one phase serves more of that phase than one doing both.
    assert prefill.max_rps > both.max_rps and decode.max_rps > both.max_rps


def test_kv_transfer_is_part_of_a_prefill_replicas_ttft() -> None:
    phys = perf._physics(config("llama-3.1-70b", "h100", "bf16", 4, role="prefill"), None)
    transfer = perf.kv_transfer_s(phys, 8000)
    expected = perf.KV_TRANSFER_LATENCY_S + 8000 * 2 * 80 * 8 * 128 * 2 / (
        perf.KV_TRANSFER_BYTES_PER_S_PER_DEVICE * 4
    )
    assert transfer == pytest.approx(expected)
    load = perf.latency_at_rate(
        config("llama-3.1-70b", "h100", "bf16", 4, role="prefill"), perf.RequestSizes(8000, 1), 0.01
    )
    assert load is not None and load.ttft_p99_ms / 1e3 > transfer


def test_beam_search_costs_throughput() -> None:
    cfg = config("llama-3.1-8b", "h100", "fp8")
    assert perf.offline_throughput(cfg, 800, 70, beam_width=4).output_tokens_per_s < (
        perf.offline_throughput(cfg, 800, 70).output_tokens_per_s
    )


def test_cost_per_million_output_tokens() -> None:
    # $3.60/h for 2 devices producing 1000 tokens/s: $7.20/h / 3.6M tokens/h = $2 per 1M.
    assert perf.dollars_per_million_output_tokens(3.6, 2, 1000.0) == pytest.approx(2.0)
    assert math.isinf(perf.dollars_per_million_output_tokens(3.6, 2, 0.0))


def test_efficiencies_are_physical_fractions() -> None:
    for eff in perf_efficiency.EFFICIENCIES.values():
        for name in ("bandwidth", "compute_16bit", "compute_8bit", "interconnect", "moe"):
            assert 0.0 < getattr(eff, name) <= 1.0
    with pytest.raises(ValueError, match="bandwidth"):
        dataclasses.replace(IDEAL, bandwidth=1.2)


def test_sequences_longer_than_the_model_context_are_refused() -> None:
    # Llama-2 has a 4096-token context.
    cfg = config("llama-2-7b", "h100", "fp8")
    result = perf.max_rate_under_slo(cfg, 4000, 200, perf.LatencySlo(5000, 100))
    assert result.max_rps == 0.0 and result.reason is not None and "context" in result.reason
    with pytest.raises(perf.InvalidConfigError, match="context"):
        perf.offline_throughput(cfg, 4000, 200)


def test_zero_rate_has_no_queueing() -> None:
    load = perf.latency_at_rate(config(), perf.RequestSizes(500, 100), 0.0)
    assert load is not None and load.prefill_utilization == 0.0 and load.batch == 0.0


@settings(max_examples=60, deadline=None)
@given(
    model_id=st.sampled_from(MODELS),
    chip=st.sampled_from(sorted(catalog.ACCELERATORS)),
    precision=st.sampled_from(catalog.PRECISIONS),
    tp=st.sampled_from((1, 2, 4, 8)),
    role=st.sampled_from(catalog.ROLES),
    prompt=st.integers(1, 8000),
    output=st.integers(1, 2000),
    spread=st.floats(1.0, 4.0),
    ttft_ms=st.floats(100, 10000),
    itl_ms=st.floats(10, 300),
)
def test_the_rate_returned_meets_the_slo_it_was_asked_for(
    model_id: str,
    chip: str,
    precision: str,
    tp: int,
    role: str,
    prompt: int,
    output: int,
    spread: float,
    ttft_ms: float,
    itl_ms: float,
) -> None:
    cfg = config(model_id, chip, precision, tp, role=role, engine="vllm")
    slo = perf.LatencySlo(ttft_ms, itl_ms)
    result = perf.max_rate_under_slo(
        cfg, prompt, output, slo, prompt_tokens_p99=prompt * spread, output_tokens_p99=output * spread
    )
    assert result.max_rps >= 0.0 and result.reason
    if result.max_rps == 0.0:
        return
    # The prediction holds at the chunked-prefill budget it chose.
    load = perf.latency_at_rate(
        cfg,
        perf.RequestSizes(prompt, output, prompt * spread, output * spread),
        result.max_rps,
        prefill_chunk_tokens=result.prefill_chunk_tokens,
    )
    assert load is not None
    if role != "decode":
        assert load.ttft_p99_ms <= ttft_ms * (1 + 1e-6)
    if role != "prefill":
        assert load.itl_p99_ms <= itl_ms * (1 + 1e-6)


def test_every_engine_and_vendor_pair_has_efficiency_factors() -> None:
    for engine, vendors in catalog.ENGINE_VENDORS.items():
        for vendor in vendors:
            eff = perf_efficiency.EFFICIENCIES[(vendor, engine)]
            assert eff.source


def test_admission_wait_known_values() -> None:
    # One slot (M/M/1) at half load, 1 s hold: P(wait) = 0.5, wait ~ exp(rate 1/s - 0.5/s) beyond that:
    # p99 = ln(0.5 / 0.01) / 0.5 s, p50 = 0 (half the requests never wait).
    p50, p99 = perf._admission_wait(1, 0.5, 1.0)
    assert p50 == 0.0 and p99 == pytest.approx(math.log(50) / 0.5)
    # Two slots at offered load 1 (Erlang C = 1/3): p99 = ln((1/3) / 0.01) / (2 - 1).
    assert perf._admission_wait(2, 1.0, 1.0)[1] == pytest.approx(math.log(100 / 3))
    # Many slots far from full: nobody waits; at or beyond capacity: unstable.
    assert perf._admission_wait(1000, 500, 10.0) == (0.0, 0.0)
    assert math.isinf(perf._admission_wait(10, 10, 1.0)[1])
