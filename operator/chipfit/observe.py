"""Live signals of each service from Prometheus (prometheus-api-client): one metric table per engine.

The engines name the same signals differently; ENGINE_METRICS maps each signal to the names each engine
exports (alternatives: names changed across versions, the first one present wins in PromQL via a
`__name__=~` match). Sources:

- vLLM: docs.vllm.ai/en/stable/usage/metrics/ (V1 engine; `vllm:kv_cache_usage_perc` replaced
  `vllm:gpu_cache_usage_perc`, `vllm:inter_token_latency_seconds` replaced
  `vllm:time_per_output_token_seconds`); checked against the /metrics text of a real vLLM CPU engine
  (tests/e2e, engine fixture).
- SGLang: docs.sglang.io/docs/references/production_metrics (`--enable-metrics`).
- TGI: huggingface.co/docs/text-generation-inference/reference/metrics. TGI has no TTFT histogram:
  queue time + the prefill batch's forward time is the nearest (`tgi_request_queue_duration`); the
  mean time per token stands in for ITL.
- TensorRT-LLM: `trtllm-serve` (tensorrt_llm/metrics/collector.py: trtllm_* histograms, no running/
  waiting gauges) and the Triton TensorRT-LLM backend (nv_trt_llm_request_metrics{request_type=...},
  nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}), github.com/triton-inference-server/
  tensorrtllm_backend docs/metrics.md.

Per role: the selector carries the role label, so a disaggregated service's prefill (TTFT) and decode
(ITL) pods are read apart. Prometheus I/O errors never raise out of `observe_service`: the observation's
rate is then None and placement.autoscale.decide holds the last decision.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from placement import autoscale, workload

# Prometheus' rate() window for the signals: the 1-minute rate of the dashboards and autoscaler guides.
DEFAULT_WINDOW = "1m"
# Label names a pod's labels get in Prometheus under the usual `labelmap` relabelling
# (__meta_kubernetes_pod_label_(.+)): "chipfit.io/service" -> "chipfit_io_service".
DEFAULT_SERVICE_LABEL = "chipfit_io_service"
DEFAULT_ROLE_LABEL = "chipfit_io_role"
DEFAULT_NAMESPACE_LABEL = "namespace"


_DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h))+$")


def check_window(window: str) -> str:
    """A Prometheus duration for rate() windows (e.g. 1m, 15s, 1m30s); ValueError saying why otherwise."""
    text = window.strip()
    if not _DURATION_RE.match(text):
        raise ValueError(f"{window!r} is not a Prometheus duration such as 15s, 1m or 1m30s")
    return text


_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def window_seconds(window: str) -> float:
    """Seconds of a Prometheus duration checked by check_window (1m30s -> 90.0)."""
    return sum(float(n) * _UNIT_S[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h)", check_window(window)))


@dataclass(frozen=True)
class EngineMetrics:
    """Where one engine exports each signal (alternative names, newest first; None: not exported)."""

    engine: str
    # Counter of finished requests: its rate is the request rate.
    requests: tuple[str, ...]
    prompt_tokens: tuple[str, ...] = ()  # histogram
    output_tokens: tuple[str, ...] = ()  # histogram
    ttft_seconds: tuple[str, ...] = ()  # histogram
    itl_seconds: tuple[str, ...] = ()  # histogram
    running: tuple[str, ...] = ()  # gauge
    waiting: tuple[str, ...] = ()  # gauge
    kv_usage: tuple[str, ...] = ()  # gauge, 0..1
    # Extra label matchers some gauges need (Triton packs several series into one name).
    matchers: Mapping[str, str] = field(default_factory=dict)
    source: str = ""


ENGINE_METRICS: Mapping[str, EngineMetrics] = {
    "vllm": EngineMetrics(
        engine="vllm",
        requests=("vllm:request_success_total",),
        prompt_tokens=("vllm:request_prompt_tokens",),
        output_tokens=("vllm:request_generation_tokens",),
        ttft_seconds=("vllm:time_to_first_token_seconds",),
        itl_seconds=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        source="https://docs.vllm.ai/en/stable/usage/metrics/",
    ),
    "sglang": EngineMetrics(
        engine="sglang",
        requests=("sglang:num_requests_total",),
        prompt_tokens=("sglang:prompt_tokens_histogram",),
        output_tokens=("sglang:generation_tokens_histogram",),
        ttft_seconds=("sglang:time_to_first_token_seconds",),
        itl_seconds=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        kv_usage=("sglang:token_usage",),
        source="https://docs.sglang.io/docs/references/production_metrics",
    ),
    "tgi": EngineMetrics(
        engine="tgi",
        requests=("tgi_request_success", "tgi_request_count"),
        prompt_tokens=("tgi_request_input_length",),
        output_tokens=("tgi_request_generated_tokens",),
        ttft_seconds=("tgi_request_queue_duration",),
        itl_seconds=("tgi_request_mean_time_per_token_duration",),
        running=("tgi_batch_current_size",),
        waiting=("tgi_queue_size",),
        source="https://huggingface.co/docs/text-generation-inference/reference/metrics",
    ),
    "trtllm": EngineMetrics(
        engine="trtllm",
        requests=("trtllm_request_success_total", "nv_inference_request_success"),
        ttft_seconds=("trtllm_time_to_first_token_seconds",),
        itl_seconds=("trtllm_time_per_output_token_seconds",),
        running=("nv_trt_llm_request_metrics",),
        waiting=("nv_trt_llm_request_metrics",),
        kv_usage=("nv_trt_llm_kv_cache_block_metrics", "trtllm_kv_cache_utilization"),
        matchers={
            "running": 'request_type="active"',
            "waiting": 'request_type="waiting"',
            "kv_usage": 'kv_cache_block_type="fraction"',
        },
        source="tensorrt_llm/metrics/collector.py; tensorrtllm_backend docs/metrics.md",
    ),
}


class ObserveError(ValueError):
    """The engine has no metric table; the message names it."""


def metrics_for(engine: str) -> EngineMetrics:
    """The table for an engine (neuron runs vLLM's server and metrics)."""
    table = ENGINE_METRICS.get("vllm" if engine == "neuron" else engine)
    if table is None:
        raise ObserveError(f"spec.engine: no Prometheus metric table for engine {engine!r}")
    return table


def selector(
    namespace: str,
    service: str,
    role: str | None,
    *,
    service_label: str = DEFAULT_SERVICE_LABEL,
    role_label: str = DEFAULT_ROLE_LABEL,
    namespace_label: str = DEFAULT_NAMESPACE_LABEL,
) -> str:
    """Label matchers of one service's (role's) engine pods."""
    parts = [f'{namespace_label}="{namespace}"', f'{service_label}="{service}"']
    if role is not None:
        parts.append(f'{role_label}="{role}"')
    return ", ".join(parts)


def _names(names: Sequence[str], suffix: str = "") -> str:
    return "|".join(n + suffix for n in names)


def _series(names: Sequence[str], sel: str, suffix: str = "", extra: str | None = None) -> str:
    matchers = [f'__name__=~"{_names(names, suffix)}"', sel] + ([extra] if extra else [])
    return "{" + ", ".join(m for m in matchers if m) + "}"


@dataclass(frozen=True)
class Queries:
    """PromQL for one service role's signals (None: the engine does not export it)."""

    rate: str
    ttft_p99: str | None
    ttft_mean: str | None
    itl_p99: str | None
    itl_mean: str | None
    running: str | None
    waiting: str | None
    kv_usage: str | None
    prompt_buckets: str | None
    output_buckets: str | None
    ttft_buckets: str | None
    output_tokens_rate: str | None


def queries(table: EngineMetrics, sel: str, window: str = DEFAULT_WINDOW) -> Queries:
    """The PromQL the observer runs, one per signal."""

    def p99(names: Sequence[str]) -> str | None:
        if not names:
            return None
        return f"histogram_quantile(0.99, sum by (le) (rate({_series(names, sel, '_bucket')}[{window}])))"

    def mean(names: Sequence[str]) -> str | None:
        if not names:
            return None
        return (
            f"sum(rate({_series(names, sel, '_sum')}[{window}])) / "
            f"sum(rate({_series(names, sel, '_count')}[{window}]))"
        )

    def gauge(names: Sequence[str], signal: str, how: str) -> str | None:
        if not names:
            return None
        return f"{how}({_series(names, sel, '', table.matchers.get(signal))})"

    def buckets(names: Sequence[str]) -> str | None:
        if not names:
            return None
        return f"sum by (le) (rate({_series(names, sel, '_bucket')}[{window}]))"

    return Queries(
        rate=f"sum(rate({_series(table.requests, sel)}[{window}]))",
        ttft_p99=p99(table.ttft_seconds),
        ttft_mean=mean(table.ttft_seconds),
        itl_p99=p99(table.itl_seconds),
        itl_mean=mean(table.itl_seconds),
        running=gauge(table.running, "running", "sum"),
        waiting=gauge(table.waiting, "waiting", "sum"),
        kv_usage=gauge(table.kv_usage, "kv_usage", "avg"),
        prompt_buckets=buckets(table.prompt_tokens),
        output_buckets=buckets(table.output_tokens),
        ttft_buckets=buckets(table.ttft_seconds),
        output_tokens_rate=(
            f"sum(rate({_series(table.output_tokens, sel, '_sum')}[{window}]))"
            if table.output_tokens
            else None
        ),
    )


# query(promql) -> the instant vector as prometheus-api-client returns it: [{"metric": {...}, "value":
# [ts, "v"]}, ...]. Raises on I/O errors.
QueryFn = Callable[[str], list[dict[str, Any]]]


def _scalar(result: list[dict[str, Any]]) -> float | None:
    """The first sample's value, None when absent or not a finite number (NaN from 0/0 rates)."""
    if not result:
        return None
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _histogram(result: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(le, cumulative rate) sorted by le, from a `sum by (le)` vector."""
    points = []
    for sample in result:
        try:
            points.append((float(sample["metric"]["le"]), float(sample["value"][1])))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
    points.sort()
    return [p[0] for p in points], [p[1] for p in points]


@dataclass(frozen=True)
class RoleSignals:
    """What one role's pods report over the window (None: missing)."""

    requests_per_second: float | None
    ttft_p99_ms: float | None = None
    ttft_mean_ms: float | None = None
    itl_p99_ms: float | None = None
    itl_mean_ms: float | None = None
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    prompt_histogram: tuple[list[float], list[float]] = ([], [])
    output_histogram: tuple[list[float], list[float]] = ([], [])
    ttft_histogram: tuple[list[float], list[float]] = ([], [])
    output_tokens_per_second: float | None = None
    error: str | None = None

    def ttft_within(self, slo_ms: float) -> float | None:
        """Share of the window's requests whose TTFT was within `slo_ms` (from the histogram)."""
        le, cumulative = self.ttft_histogram
        if not cumulative or cumulative[-1] <= 0.0:
            return None
        return autoscale.cdf_at(le, cumulative, slo_ms / 1000.0)


def read_role(query: QueryFn, q: Queries) -> RoleSignals:
    """Run one role's queries; an I/O error yields a rate of None and the error text."""

    def one(promql: str | None) -> float | None:
        return _scalar(query(promql)) if promql else None

    def ms(promql: str | None) -> float | None:
        value = one(promql)
        return None if value is None else value * 1000.0

    try:
        return RoleSignals(
            requests_per_second=one(q.rate),
            ttft_p99_ms=ms(q.ttft_p99),
            ttft_mean_ms=ms(q.ttft_mean),
            itl_p99_ms=ms(q.itl_p99),
            itl_mean_ms=ms(q.itl_mean),
            running=one(q.running),
            waiting=one(q.waiting),
            kv_usage=one(q.kv_usage),
            prompt_histogram=_histogram(query(q.prompt_buckets)) if q.prompt_buckets else ([], []),
            output_histogram=_histogram(query(q.output_buckets)) if q.output_buckets else ([], []),
            ttft_histogram=_histogram(query(q.ttft_buckets)) if q.ttft_buckets else ([], []),
            output_tokens_per_second=one(q.output_tokens_rate),
        )
    except Exception as error:
        return RoleSignals(None, error=f"{type(error).__name__}: {error}"[:300])


# The activator's series (chipfit.activator): the demand of a service as its gateway sees it, which is
# the only demand there is while the service has no replica (no engine exports anything then).
GATEWAY_REQUESTS = "chipfit_activator_requests_total"
GATEWAY_PENDING = "chipfit_activator_pending_requests"
GATEWAY_COLD_START = "chipfit_activator_last_cold_start_seconds"
# Unlabelled gauge every activator exports (the services it tracks): Prometheus has it while an activator
# is scraped. A shared activator makes a service's series on its first request, so with an activator up
# and no series of a service, no request for it has come: a zero rate, not missing data.
GATEWAY_SERVICES = "chipfit_activator_services"
GATEWAY_NAMESPACE_LABEL = "inference_namespace"
GATEWAY_SERVICE_LABEL = "inference_service"


@dataclass(frozen=True)
class GatewaySignals:
    """What the activator in front of one service reports (None: no activator series)."""

    requests_per_second: float | None = None
    pending: float | None = None
    cold_start_s: float | None = None
    error: str | None = None


def gateway_queries(namespace: str, service: str, window: str = DEFAULT_WINDOW) -> tuple[str, str, str, str]:
    """PromQL of (request rate, held requests, last cold start, activators up) at the service's
    activator."""
    sel = f'{GATEWAY_NAMESPACE_LABEL}="{namespace}", {GATEWAY_SERVICE_LABEL}="{service}"'
    return (
        f"sum(rate({GATEWAY_REQUESTS}{{{sel}}}[{window}]))",
        f"sum({GATEWAY_PENDING}{{{sel}}})",
        f"max({GATEWAY_COLD_START}{{{sel}}})",
        f"count({GATEWAY_SERVICES})",
    )


def read_gateway(query: QueryFn, queries_: tuple[str, str, str, str]) -> GatewaySignals:
    """Run the activator's queries; an I/O error is reported, never raised. With an activator up but no
    series of this service (no request for it since the activator started), the rate is zero."""
    try:
        rate, pending, cold, up = (_scalar(query(q)) for q in queries_)
    except Exception as error:
        return GatewaySignals(error=f"{type(error).__name__}: {error}"[:300])
    if rate is None and pending is None and up:
        rate, pending = 0.0, 0.0
    return GatewaySignals(rate, pending, cold if cold else None)


def with_gateway(obs: autoscale.Observation, gateway: GatewaySignals) -> autoscale.Observation:
    """The engines' observation with the activator's demand: requests it counted are demand even when no
    engine served them (zero replicas), and the requests it holds are waiting ones."""
    if gateway.requests_per_second is None and gateway.pending is None:
        return obs
    engines = None if obs.missing else obs.requests_per_second
    rates = [r for r in (engines, gateway.requests_per_second) if r is not None]
    waiting = [w for w in (obs.waiting, gateway.pending) if w is not None]
    return dataclasses.replace(
        obs,
        requests_per_second=max(rates) if rates else None,
        waiting=sum(waiting) if waiting else None,
    )


def observation(roles: Mapping[str, RoleSignals], wl: workload.BucketedWorkload) -> autoscale.Observation:
    """One service's observation from its roles: rate and TTFT from the front (aggregated or prefill)
    role, ITL from decode when it exists, queue and KV summed / averaged over roles."""
    front = roles.get("aggregated") or roles.get("prefill")
    back = roles.get("decode") or front
    if front is None or back is None:
        return autoscale.Observation(requests_per_second=None)
    share = autoscale.bucket_share(
        [
            (b.prompt_lo_tokens, b.prompt_hi_tokens, b.output_lo_tokens, b.output_hi_tokens)
            for b in wl.buckets
        ],
        (front.prompt_histogram[0], front.prompt_histogram[1]),
        (back.output_histogram[0], back.output_histogram[1]),
    )
    waiting = [r.waiting for r in roles.values() if r.waiting is not None]
    running = [r.running for r in roles.values() if r.running is not None]
    kv = [r.kv_usage for r in roles.values() if r.kv_usage is not None]
    return autoscale.Observation(
        requests_per_second=front.requests_per_second,
        bucket_share=share,
        ttft_p99_ms=front.ttft_p99_ms,
        itl_p99_ms=back.itl_p99_ms,
        waiting=sum(waiting) if waiting else None,
        running=sum(running) if running else None,
        kv_usage=max(kv) if kv else None,
    )


def prometheus_query(url: str, timeout_s: float = 5.0) -> QueryFn:
    """A QueryFn on a Prometheus server through prometheus-api-client."""
    from prometheus_api_client import PrometheusConnect

    client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout_s)

    def run(promql: str) -> list[dict[str, Any]]:
        result = client.custom_query(promql)
        return list(result) if isinstance(result, list) else []

    return run
