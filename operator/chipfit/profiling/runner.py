"""Load generation: a concurrency sweep (closed loop) or Poisson arrivals at fixed rates (open loop).

Each load point runs a warm-up (requests started in it are not measured), then a measured window;
requests started inside the window are measured to completion, none are started after it. A run stops
early when a point breaks the SLO by more than a margin (normal end of a sweep) or when too many requests
fail (then the profile is marked partial, with the reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Final

import httpx
import numpy as np

from chipfit.profiling import client, sizes

# Requests a point may fail before it is cut short when its error rate is already beyond the limit.
EARLY_ABORT_MIN_ERRORS: Final = 8
# Prompts used to learn the endpoint's tokens per word (the slope between two sizes; the intercept is the
# chat template's own tokens).
PROBE_WORDS: Final = (32, 96)
# Most connections httpx keeps open (above the largest concurrency a CPU or single GPU replica serves).
MAX_CONNECTIONS: Final = 1024


class ProfilingError(RuntimeError):
    """The run cannot start; the message is one line naming the cause."""


@dataclasses.dataclass(frozen=True)
class LoadPoint:
    """One load level: `concurrency` requests kept in flight, or Poisson arrivals at `rate_rps`."""

    concurrency: int | None = None
    rate_rps: float | None = None

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate_rps is None):
            raise ValueError("a load point is either a concurrency or a rate")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate_rps is not None and not (math.isfinite(self.rate_rps) and self.rate_rps > 0):
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate_rps}")

    @property
    def label(self) -> str:
        return (
            f"concurrency {self.concurrency}" if self.concurrency is not None else f"{self.rate_rps:g} req/s"
        )


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What to measure and how."""

    base_url: str
    api: client.Api
    sizes: sizes.SizeSource
    points: tuple[LoadPoint, ...]
    duration_s: float = 20.0
    warmup_s: float = 5.0
    timeout_s: float = 60.0
    model: str | None = None
    ignore_eos: bool = True
    seed: int = 0
    # Stop the sweep at the first point whose p99 exceeds an objective by more than `slo_margin`.
    ttft_slo_ms: float | None = None
    itl_slo_ms: float | None = None
    slo_margin: float = 0.5
    # Stop (partial profile) when more than this fraction of a point's requests fail.
    max_error_rate: float = 0.05
    # Open-loop runs never hold more than this many requests in flight (bounded memory); arrivals beyond it
    # are counted as errors ("client in-flight cap").
    max_in_flight: int = 1024


@dataclasses.dataclass(frozen=True)
class Percentiles:
    """Mean and percentiles of one latency, milliseconds."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles | None:
        if not seconds:
            return None
        values = np.asarray(seconds, dtype=float) * 1e3
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(float(values.mean()), float(p50), float(p90), float(p99))


@dataclasses.dataclass(frozen=True)
class PointStats:
    """What one load point measured (warm-up excluded)."""

    load: LoadPoint
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    mean_in_flight: float
    prompt_tokens: float
    output_tokens: float
    ttft: Percentiles | None
    itl: Percentiles | None
    # Sum and count of TTFT and of inter-token gaps, seconds: compared with the engine's histograms.
    ttft_sum_s: float
    itl_sum_s: float
    itl_count: int
    first_error: str | None
    window_start_s: float
    window_end_s: float

    @property
    def ok_requests(self) -> int:
        return self.requests - self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0


@dataclasses.dataclass
class RunResult:
    """A profiling run: the endpoint, the measured points and why it ended."""

    base_url: str
    api: client.Api
    model: str
    engine_version: str | None
    sizes: sizes.SizeSource
    started_at: str
    points: list[PointStats] = dataclasses.field(default_factory=list)
    # Set when the run stopped on errors: the profile is then partial.
    partial_reason: str | None = None
    # Set when the sweep ended at an SLO (a normal end).
    stopped_reason: str | None = None
    tokens_per_word: float = 1.0
    template_tokens: float = 0.0


ProgressFn = Callable[[LoadPoint, float, int, int], None]


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _words_for(tokens: int, tokens_per_word: float, template_tokens: float) -> int:
    return max(1, round((tokens - template_tokens) / tokens_per_word))


async def _calibrate_words(
    http: httpx.AsyncClient, options: RunOptions, model: str, clock_zero: float
) -> tuple[float, float]:
    """Tokens per prompt word and the fixed tokens every prompt adds (chat template), from usage."""
    rng = random.Random(options.seed + 7919)
    counts = []
    for words in PROBE_WORDS:
        body = client.request_body(
            options.api, model, client.prompt_text(rng, words), 1, ignore_eos=options.ignore_eos
        )
        result = await client.stream_request(
            http, options.base_url, options.api, body, clock_zero, options.timeout_s
        )
        if result.error is not None:
            raise ProfilingError(
                f"{options.base_url}{client.PATHS[options.api]}: first request failed: {result.error}"
            )
        if result.prompt_tokens is None:
            raise ProfilingError(
                f"{options.base_url}{client.PATHS[options.api]}: the server reports no usage "
                "(stream_options.include_usage), so tokens cannot be counted"
            )
        counts.append(result.prompt_tokens)
    slope = (counts[1] - counts[0]) / (PROBE_WORDS[1] - PROBE_WORDS[0])
    if slope <= 0:
        raise ProfilingError(
            f"{options.base_url}: prompt token counts do not grow with the prompt ({counts})"
        )
    return slope, max(0.0, counts[0] - slope * PROBE_WORDS[0])


async def _run_point(
    http: httpx.AsyncClient,
    options: RunOptions,
    model: str,
    load: LoadPoint,
    rng: random.Random,
    words: tuple[float, float],
    clock_zero: float,
    progress: ProgressFn | None,
) -> PointStats:
    """Warm up, then measure one load level."""
    point_start = time.perf_counter() - clock_zero
    window_start = point_start + options.warmup_s
    window_end = window_start + options.duration_s
    measured: list[client.RequestResult] = []
    in_flight: set[asyncio.Task[client.RequestResult]] = set()
    abort = asyncio.Event()
    errors = 0

    def now() -> float:
        return time.perf_counter() - clock_zero

    def make_body() -> dict[str, object]:
        size = options.sizes.sample(rng)
        text = client.prompt_text(rng, _words_for(size.prompt_tokens, *words))
        return client.request_body(
            options.api, model, text, size.output_tokens, ignore_eos=options.ignore_eos
        )

    async def one() -> client.RequestResult:
        body = make_body()
        started = now()
        try:
            async with asyncio.timeout(options.timeout_s):
                return await client.stream_request(
                    http, options.base_url, options.api, body, clock_zero, options.timeout_s
                )
        except TimeoutError:
            return client.RequestResult(
                start_s=started, end_s=now(), error=f"timed out after {options.timeout_s:g} s"
            )

    def record(result: client.RequestResult) -> None:
        nonlocal errors
        if result.start_s < window_start:
            return
        measured.append(result)
        if not result.ok:
            errors += 1
            if errors >= EARLY_ABORT_MIN_ERRORS and errors / len(measured) > options.max_error_rate:
                abort.set()
        if progress is not None:
            progress(
                load,
                min(1.0, max(0.0, (now() - point_start) / (window_end - point_start))),
                len(measured),
                errors,
            )

    def done(task: asyncio.Task[client.RequestResult]) -> None:
        in_flight.discard(task)
        record(task.result())

    async def closed_worker() -> None:
        while now() < window_end and not abort.is_set():
            result = await one()
            record(result)
            if not result.ok and result.error and result.error.startswith("cannot connect"):
                # A refused connection returns at once: do not spin.
                await asyncio.sleep(0.05)

    if load.concurrency is not None:
        workers = [asyncio.create_task(closed_worker()) for _ in range(load.concurrency)]
        ticker = asyncio.create_task(
            _tick(load, point_start, window_end, now, progress, measured, lambda: errors, abort)
        )
        await asyncio.gather(*workers)
        ticker.cancel()
    else:
        assert load.rate_rps is not None
        arrival = now()
        while not abort.is_set():
            arrival += rng.expovariate(load.rate_rps)
            if arrival >= window_end:
                break
            delay = arrival - now()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(abort.wait(), timeout=delay)
                if abort.is_set():
                    break
            if len(in_flight) >= options.max_in_flight:
                record(
                    client.RequestResult(
                        start_s=arrival,
                        end_s=arrival,
                        error=f"client in-flight cap {options.max_in_flight} reached",
                    )
                )
                continue
            task = asyncio.create_task(one())
            in_flight.add(task)
            task.add_done_callback(done)
            if progress is not None:
                progress(
                    load, min(1.0, (now() - point_start) / (window_end - point_start)), len(measured), errors
                )
        if in_flight:
            await asyncio.gather(*in_flight)
    return _stats(load, measured, window_start, min(window_end, max([now(), window_start + 1e-3])))


async def _tick(
    load: LoadPoint,
    point_start: float,
    window_end: float,
    now: Callable[[], float],
    progress: ProgressFn | None,
    measured: list[client.RequestResult],
    errors: Callable[[], int],
    abort: asyncio.Event,
) -> None:
    """Move the progress bar with time, not only with completions (long requests)."""
    if progress is None:
        return
    while not abort.is_set():
        progress(load, min(1.0, (now() - point_start) / (window_end - point_start)), len(measured), errors())
        await asyncio.sleep(0.25)


def _stats(load: LoadPoint, measured: list[client.RequestResult], start: float, end: float) -> PointStats:
    """Aggregate one point's requests."""
    ok = [r for r in measured if r.ok]
    duration = max(end - start, 1e-3)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [gap for r in ok for gap in r.itls_s]
    in_flight = sum(max(0.0, min(r.end_s, end) - max(r.start_s, start)) for r in measured) / duration
    first_error = next((r.error for r in measured if r.error is not None), None)
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    outputs = [r.output_tokens for r in ok]
    return PointStats(
        load=load,
        requests=len(measured),
        errors=len(measured) - len(ok),
        duration_s=duration,
        requests_per_s=len(ok) / duration,
        output_tokens_per_s=sum(outputs) / duration,
        mean_in_flight=in_flight,
        prompt_tokens=sum(prompts) / len(prompts) if prompts else 0.0,
        output_tokens=sum(outputs) / len(outputs) if outputs else 0.0,
        ttft=Percentiles.of(ttfts),
        itl=Percentiles.of(gaps),
        ttft_sum_s=float(sum(ttfts)),
        itl_sum_s=float(sum(gaps)),
        itl_count=len(gaps),
        first_error=first_error,
        window_start_s=start,
        window_end_s=end,
    )


def _slo_broken(stats: PointStats, options: RunOptions) -> str | None:
    """Why the sweep should stop here (an objective exceeded by more than the margin), or None."""
    factor = 1.0 + options.slo_margin
    if (
        options.ttft_slo_ms is not None
        and stats.ttft is not None
        and stats.ttft.p99_ms > options.ttft_slo_ms * factor
    ):
        return (
            f"TTFT p99 {stats.ttft.p99_ms:.0f} ms at {stats.load.label} exceeds the "
            f"{options.ttft_slo_ms:g} ms "
            f"objective by more than {options.slo_margin:.0%}"
        )
    if (
        options.itl_slo_ms is not None
        and stats.itl is not None
        and stats.itl.p99_ms > options.itl_slo_ms * factor
    ):
        return (
            f"ITL p99 {stats.itl.p99_ms:.1f} ms at {stats.load.label} exceeds the {options.itl_slo_ms:g} ms "
            f"objective by more than {options.slo_margin:.0%}"
        )
    return None


async def run(options: RunOptions, progress: ProgressFn | None = None) -> RunResult:
    """Measure every load point in order; raises ProfilingError only when nothing could be measured."""
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=options.timeout_s) as http:
        try:
            model, version = await client.discover(http, options.base_url, min(options.timeout_s, 10.0))
        except client.EndpointError as error:
            raise ProfilingError(str(error)) from None
        model = options.model or model
        clock_zero = time.perf_counter()
        words = await _calibrate_words(http, options, model, clock_zero)
        result = RunResult(
            base_url=options.base_url,
            api=options.api,
            model=model,
            engine_version=version,
            sizes=options.sizes,
            started_at=_now_iso(),
            tokens_per_word=words[0],
            template_tokens=words[1],
        )
        rng = random.Random(options.seed)
        for load in options.points:
            stats = await _run_point(http, options, model, load, rng, words, clock_zero, progress)
            if stats.requests == 0:
                result.partial_reason = (
                    f"no request completed at {load.label} within {options.duration_s:g} s"
                )
                break
            if stats.error_rate > options.max_error_rate:
                if stats.ok_requests > 0:
                    result.points.append(stats)
                result.partial_reason = (
                    f"{stats.errors} of {stats.requests} requests failed at {load.label} "
                    f"(first: {stats.first_error})"
                )
                break
            result.points.append(stats)
            broken = _slo_broken(stats, options)
            if broken is not None:
                result.stopped_reason = broken
                break
        return result
