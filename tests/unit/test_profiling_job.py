"""In-cluster profiling renderers: the Job and Service of a ProfilingRun, the profile its result becomes."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from chipfit import cli, render, validation
from chipfit.api import v1alpha1
from chipfit.commands import profile as profile_cmd
from chipfit.profiling import job
from tests.unit.chipfit_builders import SERVICES, placement

KUBERNETES_VERSION = "1.33.0"
RUN_UID = "5b0f3f43-8a8c-4a7e-9d1e-6f2c9a1d0e77"


def _run(**load: object) -> v1alpha1.ProfilingRun:
    return v1alpha1.ProfilingRun.model_validate(
        {
            "metadata": {"name": "chat-8b-h100", "uid": RUN_UID, "generation": 1},
            "spec": {
                "service": {"namespace": "ml-serving", "name": "chat-8b"},
                "pool": "h100-p5",
                "load": {"concurrency": [1, 4, 16], "promptTokens": 512, "outputTokens": 128, **load},
            },
        }
    )


def _service() -> tuple[v1alpha1.InferenceService, v1alpha1.RolePlacement]:
    service = SERVICES["chat-8b"].model_copy(deep=True)
    placed = placement("aggregated", "h100-p5", tp=1, replicas=2, precision="fp8")
    placed.engine_config = v1alpha1.PricedEngineConfig(
        prefill_chunk_tokens=2048, max_num_seqs=64, max_model_len=8192
    )
    service.metadata.namespace = "ml-serving"
    service.status = v1alpha1.InferenceServiceStatus(placement=[placed])
    return service, placed


def test_job_is_a_strictly_valid_one_shot_job_without_api_access() -> None:
    run = _run()
    service, placed = _service()
    image = job.engine_image(service, placed)
    body = job.render_profiling_job(run, service, placed, "registry.example/chipfit:0.1.0", image)
    kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
    spec = body["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 3 * (5 + 30 + 120) + 300
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert container["image"] == "registry.example/chipfit:0.1.0"
    assert container["terminationMessagePath"] == job.TERMINATION_LOG
    assert body["metadata"]["ownerReferences"][0]["kind"] == "ProfilingRun"
    args = container["args"]
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--")}
    assert flag["--url"] == "http://profile-chat-8b-h100.ml-serving.svc:80"
    assert (flag["--accelerator"], flag["--precision"], flag["--tp"], flag["--engine"]) == (
        "h100",
        "fp8",
        "1",
        "vllm",
    )
    assert flag["--concurrency"] == "1,4,16" and flag["--engine-image"] == image
    assert flag["--model"] == "llama-3.1-8b"


def test_job_arguments_are_what_chipfit_profile_accepts() -> None:
    """The rendered command line parses with the real CLI parser (no flag the command does not know)."""
    service, placed = _service()
    body = job.render_profiling_job(_run(), service, placed, "chipfit:0.1.0", "vllm/vllm-openai:v0.32.0")
    args = body["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = cli.build_parser().parse_args(args)
    options = profile_cmd.options_from(parsed)
    assert [p.concurrency for p in options.points] == [1, 4, 16]
    assert options.base_url == "http://profile-chat-8b-h100.ml-serving.svc:80"


def test_service_selects_exactly_the_pools_deployment() -> None:
    service, placed = _service()
    svc = job.render_profiling_service(_run(), service, placed)
    kubernetes_validate.validate(svc, KUBERNETES_VERSION, strict=True)
    assert svc["spec"]["selector"] == render.selector_labels("chat-8b", "aggregated", "h100-p5", "fp8-tp1")


def test_a_pool_without_the_service_is_a_field_error() -> None:
    service, _ = _service()
    run = _run()
    run.spec.pool = "l4-g6"
    with pytest.raises(
        job.ProfilingError,
        match=r"spec.pool: .* no aggregated replicas on pool 'l4-g6' \(placed on: h100-p5\)",
    ):
        job.target_placement(run, service)


SPEC = {
    "model": "llama-3.1-8b",
    "accelerator": "h100",
    "precision": "fp8",
    "engine": "vllm",
    "engineVersion": "0.32.0",
    "engineImage": "vllm/vllm-openai:v0.32.0",
    "tensorParallel": 1,
    "source": {"description": "concurrency sweep", "measuredAt": "2026-11-29T07:00:00Z"},
    "points": [
        {"concurrency": 8, "promptTokens": 512, "outputTokens": 128, "requestsPerSecond": 4.0,
         "outputTokensPerSecond": 512.0, "ttftP99Ms": 90.0, "itlP99Ms": 20.0},
    ],
}  # fmt: skip


def test_result_becomes_a_valid_profile_owned_by_the_run_per_replica() -> None:
    message = json.dumps(SPEC, separators=(",", ":"))
    assert len(message) < profile_cmd.TERMINATION_MESSAGE_MAX_BYTES
    body = job.render_profile(_run(), message, replicas=2)
    assert validation.crd_errors("PerformanceProfile", body) == []
    assert body["metadata"]["ownerReferences"][0]["uid"] == RUN_UID
    point = body["spec"]["points"][0]
    # Two replicas shared the load: each served half the rate at half the concurrency.
    assert (point["concurrency"], point["requestsPerSecond"], point["outputTokensPerSecond"]) == (
        4,
        2.0,
        256.0,
    )
    assert body["spec"]["engineVersion"] == "0.32.0"


@pytest.mark.parametrize(
    ("message", "reason"), [("Killed", "not JSON"), ('{"model": "x"}', "not a valid profile")]
)
def test_a_result_that_is_not_a_profile_is_named(message: str, reason: str) -> None:
    with pytest.raises(job.ProfilingError, match=reason):
        job.render_profile(_run(), message, replicas=1)


def test_engine_change_offers_reprofiling_never_silently() -> None:
    run = _run()
    run.status = v1alpha1.ProfilingRunStatus(phase="Succeeded", engine_image="vllm/vllm-openai:v0.32.0")
    same = job.engine_changed_condition(run, "vllm/vllm-openai:v0.32.0", "2026-11-29T08:00:00Z")
    changed = job.engine_changed_condition(run, "vllm/vllm-openai:v0.33.0", "2026-11-29T08:00:00Z")
    assert same is not None and same.status == "True"
    assert changed is not None and changed.status == "False" and changed.reason == "EngineChanged"
    assert "create a new ProfilingRun" in changed.message
    assert job.engine_changed_condition(_run(), "x", "2026-11-29T08:00:00Z") is None


def test_profilingrun_crd_rejects_both_load_shapes() -> None:
    body = _run(requestsPerSecond=[1.0]).to_wire()
    errors = validation.crd_errors("ProfilingRun", body)
    assert [e.reason for e in errors] == ["set at most one of concurrency and requestsPerSecond"]
