"""Pods run exactly the engine configuration the plan priced (chunk, sequence cap, max model length).

Every example service is planned with every engine; for each placed configuration the Deployment the
operator renders must carry, in the engine's own flags, the settings of the candidate whose capacity the
solver bought, and that capacity must be what the performance model gives at those settings for every
request-size bucket (one Deployment runs one chunk, so every bucket is priced at the same one).
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from chipfit import handlers, planning, render
from chipfit.api import v1alpha1
from placement import catalog, perf
from placement.solver import inputs
from tests.unit.chipfit_builders import POOLS, SERVICES

ENGINES = ("vllm", "sglang", "trtllm", "tgi", "neuron")
# Each engine's documented options for (chunked-prefill budget, sequence cap, max model length): `vllm
# serve` (vLLM also on Neuron), SGLang server arguments, trtllm-serve, TGI's launcher; TGI on inf2 is
# configured by optimum-neuron's environment variables and does not chunk.
FLAGS = {
    "vllm": ("--max-num-batched-tokens", "--max-num-seqs", "--max-model-len"),
    "neuron": ("--max-num-batched-tokens", "--max-num-seqs", "--max-model-len"),
    "sglang": ("--chunked-prefill-size", "--max-running-requests", "--context-length"),
    "trtllm": ("--max_num_tokens", "--max_batch_size", "--max_seq_len"),
    "tgi": ("--max-batch-prefill-tokens", "--max-concurrent-requests", "--max-total-tokens"),
}
TGI_NEURON_ENV = (None, "MAX_BATCH_SIZE", "MAX_TOTAL_TOKENS")


def _pools(engine: str) -> list[v1alpha1.AcceleratorPool]:
    """The example pools, without inf2 for vLLM: the performance model prices vLLM on inf2 in roles and
    precisions its Neuron launch refuses (disaggregated, fp8), a validate/plan/operator mismatch tracked
    apart from this test (issue 14, point 2)."""
    return [p for p in POOLS.values() if not (engine == "vllm" and p.spec.accelerator == "inf2")]


def _services(engine: str) -> list[v1alpha1.InferenceService]:
    """The example services run by `engine` (aggregated where the engine cannot split prefill/decode)."""
    out = []
    for service in SERVICES.values():
        copy = service.model_copy(deep=True)
        copy.spec.engine = engine  # type: ignore[assignment]
        if engine in ("tgi", "neuron"):
            copy.spec.serving = "aggregated"
        if engine == "neuron":
            copy.spec.precisions = [p for p in copy.spec.precisions if p in ("bf16", "fp16", "int8")] or [
                "bf16"
            ]
        if engine in ("tgi", "neuron") and copy.spec.placement is not None:
            copy.spec.placement.allowed_accelerators = None
        # Not every example fits every engine's chips (neuron: inf2 only): no replica floors.
        copy.spec.replicas = None
        out.append(copy)
    return out


def _flag_values(container: dict[str, Any], names: tuple[str | None, ...], env: bool) -> list[int | None]:
    """The integer values of the named options (flags `--name=value`, or environment variables)."""
    if env:
        variables = {e["name"]: e.get("value") for e in container.get("env", [])}
        return [int(variables[n]) if n is not None and variables.get(n) is not None else None for n in names]
    tokens = list(container.get("args", []))
    if container.get("command", [])[:2] == ["/bin/sh", "-c"]:
        # A launch wrapped in a shell script (TensorRT-LLM's disaggregated workers): the script's words.
        tokens = shlex.split(tokens[0])
    args = dict(a.split("=", 1) for a in tokens if a.startswith("--") and "=" in a)
    return [int(args[n]) if n is not None and n in args else None for n in names]


def _priced_rate(service: v1alpha1.InferenceService, cand: inputs.Candidate, k: int) -> float:
    """The performance model's capacity for bucket k at the candidate's own engine settings."""
    spec = planning.to_spec(service)
    bucket = spec.workload.buckets[k]
    chunk = cand.engine_config.prefill_chunk_tokens
    config = perf.ReplicaConfig(spec.model, cand.accelerator, cand.precision, cand.tp, cand.role, spec.engine)
    return perf.max_rate_under_slo(
        config,
        max(1.0, bucket.prompt_mean),
        max(1.0, bucket.output_mean_tokens or bucket.output_tokens),
        perf.LatencySlo(spec.ttft_p99_ms, spec.itl_p99_ms),
        prompt_tokens_p99=max(float(bucket.prompt_tokens), bucket.prompt_mean, 1.0),
        output_tokens_p99=max(float(bucket.output_tokens), bucket.output_mean_tokens, 1.0),
        prefill_chunk_tokens=chunk,
        choose_prefill_chunk=False,
    ).max_rps


@pytest.mark.parametrize("engine", ENGINES)
def test_rendered_engine_flags_are_the_priced_configuration(engine: str) -> None:
    services = _services(engine)
    by_id = {planning.service_id(s): s for s in services}
    # Without trust headroom: the candidate's capacity is then exactly the model's at its configuration
    # (headroom only scales it, see test_declared_chips).
    fleet = planning.plan_fleet(services, _pools(engine), with_baseline=False, headroom=False)
    priced = {c.key: c for c in fleet.candidates.problem.candidates}
    checked = 0
    for allocation in fleet.plan.services:
        service = by_id[allocation.service]
        outcome = handlers.outcome_of(allocation)
        for assignment in allocation.assignments:
            if assignment.replicas <= 0:
                continue
            cand = priced[
                inputs.CandidateKey(
                    assignment.service, assignment.role, assignment.pool, assignment.precision, assignment.tp
                )
            ]
            assert assignment.engine_config == cand.engine_config
            # Every bucket the candidate serves was priced at this one configuration.
            for k, rate in enumerate(cand.max_rps_per_bucket):
                if rate > 0.0 and cand.source == "perf":
                    assert _priced_rate(service, cand, k) == pytest.approx(rate, rel=1e-4), k
        sizings = {render.placement_key(p): render.sizing(service, p) for p in outcome.placements}
        objects = render.render_all(service, list(outcome.placements), POOLS, sizings)
        deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
        for placed in outcome.placements:
            cand = priced[
                inputs.CandidateKey(
                    allocation.service, placed.role, placed.pool, placed.precision, placed.tensor_parallel
                )
            ]
            name = render.deployment_name(service.metadata.name, *render.placement_key(placed))
            container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
            vendor = catalog.get_accelerator(placed.accelerator).vendor
            on_env = engine == "tgi" and vendor == "aws"
            names = TGI_NEURON_ENV if on_env else FLAGS[engine]
            expected = cand.engine_config
            got = _flag_values(container, names, on_env)
            assert got[1:] == [expected.max_num_seqs, expected.max_model_len], (allocation.service, placed)
            if names[0] is not None:
                assert got[0] == expected.prefill_chunk_tokens, (allocation.service, placed)
            if engine in ("vllm", "neuron") and got[0] is not None:
                # vLLM refuses max_num_seqs above max_num_batched_tokens.
                assert got[1] is not None and got[1] <= got[0]
            checked += 1
    assert checked > 0


def test_a_placement_without_a_priced_configuration_is_not_rendered() -> None:
    chat = SERVICES["chat-8b"]
    bare = v1alpha1.RolePlacement(
        role="aggregated", pool="h100-p5", accelerator="h100", precision="fp8", tensor_parallel=1, replicas=1
    )
    with pytest.raises(render.RenderError, match=r"status\.placement: chat-8b: .*no engine configuration"):
        render.sizing(chat, bare)


def test_sequence_cap_is_the_slot_count_priced_not_the_mean_batch() -> None:
    # At its SLO-bounded rate a replica runs a mean batch (Little's law); the admission queue the
    # performance model priced has the KV/engine slots as servers. Capping the engine at the mean batch
    # would make admission unstable exactly at the planned rate.
    service = SERVICES["code-complete"]
    fleet = planning.plan_fleet([service], list(POOLS.values()), with_baseline=False)
    spec = planning.to_spec(service)
    for cand in fleet.candidates.problem.candidates:
        config = perf.ReplicaConfig(
            spec.model, cand.accelerator, cand.precision, cand.tp, cand.role, spec.engine
        )
        slots = perf.max_batch(
            config,
            service.spec.workload.prompt_tokens.mean,
            service.spec.workload.output_tokens.mean,
            prefill_chunk_tokens=cand.engine_config.prefill_chunk_tokens,
        )
        assert cand.engine_config.max_num_seqs == slots
        mean_batch = perf.max_rate_under_slo(
            config,
            service.spec.workload.prompt_tokens.mean,
            service.spec.workload.output_tokens.mean,
            perf.LatencySlo(spec.ttft_p99_ms, spec.itl_p99_ms),
            prefill_chunk_tokens=cand.engine_config.prefill_chunk_tokens,
            choose_prefill_chunk=False,
        ).max_batch
        assert slots >= mean_batch


def test_max_model_len_is_the_workload_context() -> None:
    assert planning.max_model_len(SERVICES["chat-8b"]) == 8192  # spec.workload.maxContextTokens
    assert planning.max_model_len(SERVICES["batch-summarize"]) == 8000 + 1000  # prompt p99 + output p99
