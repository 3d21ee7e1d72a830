"""The engine release a service names is the release its pods run: the image follows spec.engineVersion.

The plan prices a service at the release it names (placement.engine_version); these tests check that the
renderer deploys that release, and that where no image of it can be named (registries that tag by date:
placement.catalog.LOCKED_RELEASES) the planner, `chipfit validate` and the renderer all refuse the same
chips, with the field and the reason.
"""

from __future__ import annotations

import pytest

from chipfit import engines, render, validation
from chipfit.api import v1alpha1
from placement import candidates
from placement.solver import inputs
from tests.unit.chipfit_builders import POOLS, SERVICES, placement
from tests.unit.test_solve_candidates import oracle_from, spec

SIZING = engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=64)


@pytest.mark.parametrize(
    ("engine", "vendor", "version", "image"),
    [
        ("vllm", "nvidia", None, engines.VLLM_CUDA_IMAGE),
        ("vllm", "nvidia", "0.32", engines.VLLM_CUDA_IMAGE),
        ("vllm", "nvidia", "v0.32.0", engines.VLLM_CUDA_IMAGE),
        ("vllm", "nvidia", "0.31", "vllm/vllm-openai:v0.31.0"),
        ("vllm", "nvidia", "0.30.1", "vllm/vllm-openai:v0.30.1"),
        ("trtllm", "nvidia", "0.17", "nvcr.io/nvidia/tensorrt-llm/release:0.17.0"),
        ("trtllm", "nvidia", "1.0", engines.TRTLLM_IMAGE),
        ("tgi", "amd", "3.2.0", "ghcr.io/huggingface/text-generation-inference:3.2.0-rocm"),
        ("sglang", "nvidia", "0.5.3", "lmsysorg/sglang:v0.5.3"),
        # A locked line deploys its own release (any patch of it prices the same).
        ("vllm", "amd", "0.10", engines.VLLM_ROCM_IMAGE),
        ("vllm", "amd", "0.10.2", engines.VLLM_ROCM_IMAGE),
    ],
)
def test_the_image_runs_the_release_the_service_names(
    engine: str, vendor: str, version: str | None, image: str
) -> None:
    assert engines.image_for(engine, vendor, version) == image


@pytest.mark.parametrize(("engine", "vendor"), [("vllm", "amd"), ("neuron", "aws"), ("sglang", "amd")])
def test_a_line_tagged_by_date_refuses_another_release(engine: str, vendor: str) -> None:
    with pytest.raises(engines.UnsupportedReleaseError, match=r"spec\.overrides\.image"):
        engines.image_for(engine, vendor, "0.31")


def test_the_planner_leaves_out_the_chips_that_cannot_run_the_release() -> None:
    pools = (inputs.Pool("nv", "h100", 8, 1, 5.0), inputs.Pool("amd", "mi300x", 8, 1, 4.0))
    oracle, _ = oracle_from({("h100", 1): (10.0, 5.0), ("mi300x", 1): (12.0, 6.0)})

    def pools_of(service: candidates.ServiceSpec) -> set[str]:
        return {c.pool for c in candidates.build([service], pools, oracle=oracle).problem.candidates}

    assert pools_of(spec()) == {"nv", "amd"}
    assert pools_of(spec(engine_version="0.10.1")) == {"nv", "amd"}
    assert pools_of(spec(engine_version="0.31")) == {"nv"}
    # Its own image runs what it names on any chip.
    assert pools_of(spec(engine_version="0.31", own_image=True)) == {"nv", "amd"}
    only_amd = candidates.build([spec(engine_version="0.31")], pools[1:], oracle=oracle)
    assert "cannot be deployed on amd chips" in only_amd.excluded["ns/svc"]


def _service(
    version: str | None, image: str | None = None, allowed: list[str] | None = None
) -> v1alpha1.InferenceService:
    service = SERVICES["rag-70b"].model_copy(deep=True)
    service.spec.engine_version = version
    service.spec.overrides = v1alpha1.EngineOverrides(image=image) if image else None
    if allowed is not None:
        service.spec.placement = v1alpha1.PlacementConstraints(allowed_accelerators=allowed)
    return service


def test_validate_refuses_a_release_no_allowed_chip_can_run() -> None:
    errors = validation.service_problems(_service("0.31", allowed=["mi300x"]))
    assert [(e.field, "spec.overrides.image" in e.reason) for e in errors] == [("spec.engineVersion", True)]
    assert (
        validation.service_problems(
            _service("0.31", image="registry.local/vllm:0.31-rocm", allowed=["mi300x"])
        )
        == []
    )
    assert validation.service_problems(_service("0.31", allowed=["mi300x", "h100"])) == []


def test_the_deployment_runs_the_priced_release_or_says_why_not() -> None:
    nvidia = render.render_deployment(
        _service("0.31"), placement("aggregated", "h100-p5"), POOLS["h100-p5"], SIZING
    )
    assert nvidia["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.31.0"
    with pytest.raises(
        render.RenderError, match=r"spec\.engineVersion: vllm 0\.31 cannot be deployed on amd"
    ):
        render.render_deployment(
            _service("0.31"), placement("aggregated", "mi300x-nd"), POOLS["mi300x-nd"], SIZING
        )
    own = render.render_deployment(
        _service("0.31", image="registry.local/vllm:0.31-rocm"),
        placement("aggregated", "mi300x-nd"),
        POOLS["mi300x-nd"],
        SIZING,
    )
    assert own["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/vllm:0.31-rocm"
