"""The host CPU as a "chip" declared by its measured specs, for profiles of vLLM's CPU backend.

Compute is the nominal peak of the cores (vector FMA width from the CPU flags at a nominal clock: a
measured GEMM on a machine shared with other work comes out anywhere between a fifth and a half of it, and
an efficiency must never have to exceed 1). Memory bandwidth is measured with a large array copy (read +
write bytes, STREAM's "copy"). The calibration fits what fraction of these the engine reaches, as it does
for a GPU's datasheet peaks.
"""

from __future__ import annotations

import os
import time
from typing import Final

import numpy as np

from placement import catalog, perf

HOST_CPU_ID: Final = "host-cpu"
# Matrix side of the GEMM probe and bytes of the copy probe: large enough to leave the caches.
GEMM_SIDE: Final = 768
COPY_BYTES: Final = 128 * 2**20
REPEATS: Final = 5


# Nominal clock of a server core under vector load (AMD EPYC Zen 4 base 2.4-3.1 GHz; Intel Xeon SPR 2.0-3.0).
NOMINAL_CLOCK_HZ: Final = 3.0e9
# 16-bit FLOPs per cycle per core: two FMA pipes x (vector bits / 32) lanes x 2 FLOPs; bf16 dot-product
# instructions (AVX512_BF16 VDPBF16PS, AMX) double the fp32 rate.
FLOPS_PER_CYCLE: Final = {"amx_bf16": 1024.0, "avx512_bf16": 128.0, "avx512f": 64.0, "avx2": 32.0}


def nominal_flops_per_s(flags: set[str] | None = None, cores: int | None = None) -> float:
    """Nominal 16-bit peak of this host's cores from /proc/cpuinfo flags."""
    if flags is None:
        flags = set()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                for line in info:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            flags = set()
    per_cycle = next((v for k, v in FLOPS_PER_CYCLE.items() if k in flags), 16.0)
    return float(cores or os.cpu_count() or 1) * NOMINAL_CLOCK_HZ * per_cycle


def measure_gemm_flops_per_s() -> float:
    """Best-of float32 matmul FLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_SIDE, GEMM_SIDE), dtype=np.float32)
    b = rng.standard_normal((GEMM_SIDE, GEMM_SIDE), dtype=np.float32)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * GEMM_SIDE**3 / best


def measure_copy_bytes_per_s() -> float:
    """Best-of array copy bandwidth (bytes read + written per second)."""
    src = np.ones(COPY_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2.0 * COPY_BYTES / best


def host_accelerator(
    kv_cache_bytes: float, flops_per_s: float | None = None, bytes_per_s: float | None = None
) -> catalog.Accelerator:
    """The host CPU as an Accelerator, memory sized so the engine's KV budget is `kv_cache_bytes`.

    vLLM's CPU backend takes its KV cache size as a flag (VLLM_CPU_KVCACHE_SPACE); the memory recorded
    here is what makes the performance model's vLLM budget (gpu_memory_utilization x memory - runtime
    reserve - weights) come out at that size for a tiny model.
    """
    flops = flops_per_s if flops_per_s is not None else nominal_flops_per_s()
    bandwidth = bytes_per_s if bytes_per_s is not None else measure_copy_bytes_per_s()
    fraction = perf.ENGINE_TRAITS["vllm"].memory_fraction
    memory = int((kv_cache_bytes + perf.RUNTIME_RESERVE_BYTES) / fraction)
    return catalog.Accelerator(
        id=HOST_CPU_ID,
        vendor="cpu",
        display_name=f"host CPU ({os.cpu_count()} threads, measured)",
        memory_bytes=memory,
        mem_bandwidth_bytes_per_s=bandwidth,
        dense_flops_per_s={"bf16": flops, "fp16": flops},
        interconnect_bytes_per_s=bandwidth,
        precisions=("bf16", "fp16"),
        resource_name="cpu",
        resource_units_per_device=1,
        product_label_key="kubernetes.io/arch",
        product_label="amd64",
        default_price_per_hour=0.0,
        price_source="not priced: test host",
        max_tp=1,
        sources=("nominal core peak from CPU flags; bandwidth measured by an array copy on this host",),
    )
