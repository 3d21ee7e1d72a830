"""`chipfit profile`: measure an OpenAI-compatible endpoint and write a PerformanceProfile.

    chipfit profile --url http://127.0.0.1:8000 --accelerator h100 --precision fp8 \\
        --concurrency 1,4,16,64 --prompt-tokens 512 --output-tokens 128 -o profile.yaml --plot profile.html

Exit codes: 0 measured every point (or stopped at the SLO), 1 partial profile written (the run stopped on
errors: the reason is printed and recorded in spec.partialReason), 2 nothing measured or unusable input.
The work is in chipfit.profiling.command, imported when the command runs (`chipfit --help` stays light).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, Final

EXIT_PARTIAL: Final = 1
EXIT_USAGE: Final = 2
# The kubelet keeps at most 4096 bytes of a container's termination message.
TERMINATION_MESSAGE_MAX_BYTES: Final = 4096


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure an OpenAI-compatible endpoint (streaming) and write a PerformanceProfile",
        description="Load one serving endpoint with streaming completions or chat requests, at a sweep of "
        "concurrencies or at fixed Poisson rates, and record per point the achieved request rate, output "
        "tokens/s, TTFT and inter-token latency (mean, p50, p90, p99) and errors, warm-up excluded. Writes a "
        "PerformanceProfile (YAML), prints a table, and with --plot writes a latency-vs-load HTML page.",
    )
    parser.add_argument("--url", required=True, help="endpoint base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api", choices=("completions", "chat"), default="completions")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help="comma-separated concurrency sweep (default 1,2,4,8,16)")
    load.add_argument("--rate", help="comma-separated Poisson arrival rates, requests/s")
    parser.add_argument("--prompt-tokens", type=float, default=256, help="mean prompt tokens (default 256)")
    parser.add_argument("--output-tokens", type=float, default=64, help="mean output tokens (default 64)")
    parser.add_argument("--prompt-tokens-p99", type=float, help="p99 prompt tokens: log-normal sizes")
    parser.add_argument("--output-tokens-p99", type=float, help="p99 output tokens: log-normal sizes")
    parser.add_argument(
        "--trace",
        type=pathlib.Path,
        help="sample sizes from a trace: Azure LLM inference CSV or Mooncake JSON lines",
    )
    parser.add_argument("--max-context", type=int, help="clip prompt + output to the served model's context")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds per point (default 20)"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per point, not measured")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds one request may take (default 60)"
    )
    parser.add_argument(
        "--ttft-p99-ms", type=float, help="stop the sweep once TTFT p99 exceeds this x (1+margin)"
    )
    parser.add_argument(
        "--itl-p99-ms", type=float, help="stop the sweep once ITL p99 exceeds this x (1+margin)"
    )
    parser.add_argument(
        "--slo-margin", type=float, default=0.5, help="SLO margin before stopping (default 0.5)"
    )
    parser.add_argument(
        "--max-error-rate", type=float, default=0.05, help="stop (partial profile) above this error fraction"
    )
    parser.add_argument(
        "--model", help="catalog model id to record (default: the served model's name, with --architecture)"
    )
    parser.add_argument("--served-model", help="model name sent in requests (default: the endpoint's first)")
    parser.add_argument(
        "--architecture",
        help="ModelArchitecture for a model outside the catalog: a YAML/JSON file, a Hugging Face "
        "config.json, or inline JSON",
    )
    parser.add_argument("--accelerator", required=True, help="chip the endpoint runs on (h100, l4, ...)")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp8", "int8", "int4"))
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree of the replica")
    parser.add_argument("--engine", default="vllm", choices=("vllm", "sglang", "trtllm", "tgi", "neuron"))
    parser.add_argument("--engine-image", help="engine container image, recorded in the profile")
    parser.add_argument("--engine-version", help="engine version (default: the endpoint's /version)")
    parser.add_argument("--name", help="metadata.name of the profile (default: from model, chip, ...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sizes, prompts and arrivals")
    parser.add_argument("--no-ignore-eos", action="store_true", help="do not send vLLM/SGLang ignore_eos")
    parser.add_argument(
        "-o", "--output", type=pathlib.Path, help="write the profile YAML here (default stdout)"
    )
    parser.add_argument("--plot", type=pathlib.Path, help="write a latency-vs-load HTML page here")
    parser.add_argument(
        "--termination-log",
        type=pathlib.Path,
        help="also write the profile's spec as compact JSON here (a Job's /dev/termination-log)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chipfit.profiling import command

    return command.run(args)


def options_from(args: argparse.Namespace) -> Any:
    """Run options from parsed arguments (chipfit.profiling.command.options_from)."""
    from chipfit.profiling import command

    return command.options_from(args)
