"""The one mapping from a rendered vLLM command line to this CPU: what it keeps, replaces and refuses."""

from __future__ import annotations

import pytest

from engine import cpu_equivalents

RENDERED = (
    "meta-llama/Llama-3.1-70B-Instruct",
    "--host=0.0.0.0",
    "--port=8000",
    "--served-model-name=llama-3.1-70b",
    "--tensor-parallel-size=8",
    "--dtype=bfloat16",
    "--max-model-len=32768",
    "--max-num-seqs=655",
    "--max-num-batched-tokens=1024",
    "--quantization=fp8",
    '--kv-transfer-config={"kv_connector":"NixlConnector","kv_role":"kv_both"}',
)


def test_limits_and_names_pass_through_and_chip_flags_are_mapped() -> None:
    args = cpu_equivalents.vllm_cpu_args(RENDERED, model_dir="/models/tiny", port=4321)
    assert args == (
        "/models/tiny",
        "--host=127.0.0.1",
        "--port=4321",
        "--served-model-name=llama-3.1-70b",
        "--tensor-parallel-size=1",
        "--dtype=bfloat16",
        "--max-model-len=32768",
        "--max-num-seqs=655",
        "--max-num-batched-tokens=1024",
        "--enforce-eager",
    )


def test_a_flag_the_mapping_does_not_know_passes_through() -> None:
    args = cpu_equivalents.vllm_cpu_args((*RENDERED[:2], "--new-flag=3"), model_dir="/m", port="{port}")
    assert "--new-flag=3" in args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--host=0.0.0.0",), "starts with the model"),
        (("model", "--enable-something"), "bare flags"),
    ],
)
def test_lines_it_cannot_map_are_refused(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cpu_equivalents.vllm_cpu_args(args, model_dir="/m", port=1)
