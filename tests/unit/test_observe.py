"""chipfit.observe: the engine metric table against /metrics text, the PromQL, and reading the results."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chipfit import observe
from chipfit.api import v1alpha1
from placement import workload

METRICS = Path(__file__).resolve().parents[1] / "data" / "metrics"
SIGNALS = (
    "requests",
    "prompt_tokens",
    "output_tokens",
    "ttft_seconds",
    "itl_seconds",
    "running",
    "waiting",
    "kv_usage",
)


def _families(engine: str) -> dict[str, str]:
    """Metric family name -> type in the engine's /metrics text (counters keep their _total name too)."""
    text = (METRICS / f"{engine}.txt").read_text()
    out = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = family.type
        if family.type == "counter":
            out[family.name + "_total"] = family.type
    return out


def test_every_engine_of_the_api_has_a_table():
    engines = typing.get_args(v1alpha1.Engine)
    assert engines
    for engine in engines:
        assert observe.metrics_for(engine).requests


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tgi", "trtllm"])
def test_every_mapped_signal_exists_in_the_engines_metrics_text(engine: str):
    """tests/data/metrics/vllm.txt is the /metrics of a real vLLM 0.32.0 CPU engine after 4 requests;
    the others are written from each engine's metric reference (named in the file)."""
    families = _families(engine)
    table = observe.ENGINE_METRICS[engine]
    for signal in SIGNALS:
        names = getattr(table, signal)
        if not names:
            continue
        assert any(n in families for n in names), f"{engine}.{signal}: none of {names} in {engine}.txt"


def test_vllm_histograms_are_histograms_in_the_real_engine_text():
    families = _families("vllm")
    table = observe.ENGINE_METRICS["vllm"]
    for names in (table.prompt_tokens, table.output_tokens, table.ttft_seconds, table.itl_seconds[:1]):
        assert families[names[0]] == "histogram"
    assert families[table.kv_usage[0]] == "gauge"


def test_queries_select_the_role_and_match_every_alternative_name():
    table = observe.ENGINE_METRICS["vllm"]
    sel = observe.selector("ml", "chat", "prefill")
    q = observe.queries(table, sel)
    assert 'chipfit_io_role="prefill"' in q.rate and 'namespace="ml"' in q.rate
    assert "vllm:inter_token_latency_seconds_bucket|vllm:time_per_output_token_seconds_bucket" in (
        q.itl_p99 or ""
    )
    assert q.ttft_p99 is not None and q.ttft_p99.startswith("histogram_quantile(0.99")
    trt = observe.queries(observe.ENGINE_METRICS["trtllm"], sel)
    assert 'request_type="waiting"' in (trt.waiting or "")
    assert observe.queries(observe.ENGINE_METRICS["tgi"], sel).kv_usage is None


def _vector(value: float) -> list[dict[str, Any]]:
    return [{"metric": {}, "value": [0, str(value)]}]


def test_read_role_and_observation_from_prometheus_answers():
    table = observe.ENGINE_METRICS["vllm"]
    q = observe.queries(table, observe.selector("ml", "chat", "aggregated"))
    answers = {
        q.rate: _vector(4.0),
        q.ttft_p99: _vector(0.5),
        q.itl_p99: _vector(0.02),
        q.kv_usage: _vector(0.3),
        q.waiting: _vector(2.0),
        q.prompt_buckets: [
            {"metric": {"le": "100"}, "value": [0, "1.0"]},
            {"metric": {"le": "+Inf"}, "value": [0, "2.0"]},
        ],
        q.output_buckets: [{"metric": {"le": "+Inf"}, "value": [0, "2.0"]}],
    }

    def query(promql: str) -> list[dict[str, Any]]:
        return answers.get(promql, [])

    role = observe.read_role(query, q)
    assert role.requests_per_second == 4.0
    assert role.ttft_p99_ms == pytest.approx(500.0)
    assert role.itl_p99_ms == pytest.approx(20.0)
    assert role.prompt_histogram == ([100.0, math.inf], [1.0, 2.0])
    wl = workload.from_samples(4.0, [50, 500], [10, 10])
    obs = observe.observation({"aggregated": role}, wl)
    assert obs.requests_per_second == 4.0 and not obs.missing
    assert obs.waiting == 2.0 and obs.kv_usage == 0.3
    assert obs.bucket_share is not None and sum(obs.bucket_share) == pytest.approx(1.0)


def test_prometheus_down_is_a_missing_observation_not_an_exception():
    q = observe.queries(observe.ENGINE_METRICS["vllm"], observe.selector("ml", "chat", None))

    def down(promql: str) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    role = observe.read_role(down, q)
    assert role.requests_per_second is None and "connection refused" in (role.error or "")
    wl = workload.from_samples(1.0, [50], [10])
    assert observe.observation({"aggregated": role}, wl).missing


def test_nan_rates_are_missing():
    assert observe._scalar([{"metric": {}, "value": [0, "NaN"]}]) is None


def test_an_engine_without_a_table_is_named():
    with pytest.raises(observe.ObserveError, match=r"spec\.engine"):
        observe.metrics_for("nope")


@pytest.mark.parametrize(
    ("window", "seconds"), [("1m", 60.0), ("20s", 20.0), ("1m30s", 90.0), ("500ms", 0.5)]
)
def test_rate_windows_are_prometheus_durations(window, seconds):
    assert observe.window_seconds(window) == seconds


@pytest.mark.parametrize("bad", ["20", "20 s", "1.5m", "", "m"])
def test_a_bad_rate_window_is_refused_saying_why(bad):
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        observe.check_window(bad)
