"""Operator metrics: served over real HTTP on loopback, parsed as Prometheus text, names/labels/values."""

from __future__ import annotations

import collections.abc
import math
import re
from typing import Any

import httpx
import pytest
from prometheus_client import parser
from prometheus_client.samples import Sample

import chipfit
from chipfit import metrics

LOOPBACK = "127.0.0.1"
# Prometheus metric and label name grammar (https://prometheus.io/docs/concepts/data_model/).
METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# Base-unit suffixes a chipfit gauge or histogram name may end in (Prometheus naming practice).
UNIT_SUFFIXES = ("_seconds", "_dollars_per_hour", "_dollars_per_device_hour", "_devices", "_replicas",
                 "_ratio", "_per_second", "_output_tokens", "_info", "_status")  # fmt: skip
BOUNDED_LABELS = {
    "namespace",
    "service",
    "role",
    "accelerator",
    "pool",
    "kind",
    "error",
    "status",
    "version",
    "le",
}


def _plan(**overrides: object) -> metrics.ServicePlan:
    """A two-role disaggregated plan for default/chat, overridable per field."""
    fields: dict[str, object] = {
        "namespace": "default",
        "service": "chat",
        "predicted_cost_dollars_per_hour": 12.5,
        "predicted_cost_dollars_per_million_output_tokens": 0.84,
        "predicted_ttft_p99_ms": 420.0,
        "predicted_itl_p99_ms": 38.0,
        "slo_ttft_p99_ms": 500.0,
        "slo_itl_p99_ms": 50.0,
        "workload_requests_per_second": 20.0,
        "workload_output_tokens_per_second": 4200.0,
        "predicted_capacity_requests_per_second": 24.0,
        "placements": (
            metrics.PlannedRole("prefill", "h100", "h100-od", 2, 8.0, 4200.0),
            metrics.PlannedRole("decode", "l40s", "l40s-spot", 3, 4.5, 4200.0),
        ),
    }
    fields.update(overrides)
    return metrics.ServicePlan(**fields)  # type: ignore[arg-type]


@pytest.fixture
def served() -> collections.abc.Iterator[tuple[metrics.OperatorMetrics, str]]:
    """Metrics on a dedicated registry, served on a free loopback port for the test's duration."""
    m = metrics.OperatorMetrics()
    server = metrics.start_metrics_server(0, m.registry, addr=LOOPBACK)
    try:
        yield m, f"http://{LOOPBACK}:{server.port}/metrics"
    finally:
        server.shutdown()


def _scrape(url: str) -> dict[str, list[Sample]]:
    """GET /metrics over HTTP and parse it; samples grouped by sample name."""
    response = httpx.get(url, timeout=10.0)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    by_name: dict[str, list[Sample]] = collections.defaultdict(list)
    for family in parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            by_name[sample.name].append(sample)
    return by_name


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def _has(samples: dict[str, list[Sample]], name: str, **labels: str) -> bool:
    """Whether any sample of `name` carries `labels`."""
    return any(labels.items() <= s.labels.items() for s in samples.get(name, []))


def test_service_plan_is_scraped_in_base_units(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    m.record_plan(_plan())
    assert m.record_ready_replicas("default", "chat", "decode", "l40s", "l40s-spot", 2)
    s = _scrape(url)
    svc = {"namespace": "default", "service": "chat"}
    assert _value(s, "chipfit_service_predicted_cost_dollars_per_hour", **svc) == 12.5
    assert _value(s, "chipfit_service_predicted_cost_dollars_per_million_output_tokens", **svc) == 0.84
    # Milliseconds in, seconds out.
    assert _value(s, "chipfit_service_predicted_ttft_p99_seconds", **svc) == pytest.approx(0.42)
    assert _value(s, "chipfit_service_predicted_itl_p99_seconds", **svc) == pytest.approx(0.038)
    assert _value(s, "chipfit_service_slo_ttft_p99_seconds", **svc) == pytest.approx(0.5)
    assert _value(s, "chipfit_service_slo_itl_p99_seconds", **svc) == pytest.approx(0.05)
    assert _value(s, "chipfit_service_workload_requests_per_second", **svc) == 20.0
    assert _value(s, "chipfit_service_workload_output_tokens_per_second", **svc) == 4200.0
    assert _value(s, "chipfit_service_predicted_capacity_requests_per_second", **svc) == 24.0
    prefill = {**svc, "role": "prefill", "accelerator": "h100", "pool": "h100-od"}
    decode = {**svc, "role": "decode", "accelerator": "l40s", "pool": "l40s-spot"}
    assert _value(s, "chipfit_service_desired_replicas", **prefill) == 2
    assert _value(s, "chipfit_service_desired_replicas", **decode) == 3
    assert _value(s, "chipfit_service_ready_replicas", **prefill) == 0
    assert _value(s, "chipfit_service_ready_replicas", **decode) == 2
    assert _value(s, "chipfit_service_placement_cost_dollars_per_hour", **prefill) == 8.0
    assert _value(s, "chipfit_service_placement_output_tokens_per_second", **decode) == 4200.0


def test_replan_drops_series_of_placements_no_longer_planned(
    served: tuple[metrics.OperatorMetrics, str],
) -> None:
    m, url = served
    m.record_plan(_plan())
    moved = (metrics.PlannedRole("aggregated", "h200", "h200-od", 1, 10.0, 4200.0),)
    m.record_plan(_plan(placements=moved, predicted_cost_dollars_per_hour=10.0))
    s = _scrape(url)
    assert not _has(s, "chipfit_service_desired_replicas", role="prefill")
    assert not _has(s, "chipfit_service_ready_replicas", role="decode")
    assert not _has(s, "chipfit_service_placement_cost_dollars_per_hour", pool="l40s-spot")
    assert _value(s, "chipfit_service_desired_replicas", role="aggregated", accelerator="h200") == 1
    assert _value(s, "chipfit_service_predicted_cost_dollars_per_hour", service="chat") == 10.0
    # A draining Deployment of the old plan must not bring its series back.
    assert not m.record_ready_replicas("default", "chat", "prefill", "h100", "h100-od", 1)
    assert not _has(_scrape(url), "chipfit_service_ready_replicas", role="prefill")


def test_forget_service_removes_all_of_its_series(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    m.record_plan(_plan())
    m.record_plan(_plan(service="code"))
    m.record_placement_change("default", "chat", "decode")
    m.forget_service("default", "chat")
    s = _scrape(url)
    for name, samples in s.items():
        if name.startswith(("chipfit_service_", "chipfit_placement_changes")):
            assert all(sample.labels.get("service") != "chat" for sample in samples), name
    assert _value(s, "chipfit_service_predicted_cost_dollars_per_hour", service="code") == 12.5


def test_pool_devices_free_and_cost(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    m.record_pool(metrics.PoolUsage("h100-od", "h100", 16, 10, 3.5))
    m.record_pool(metrics.PoolUsage("l4-spot", "l4", 4, 6, 0.3))  # over-allocated after nodes vanished
    s = _scrape(url)
    h100 = {"pool": "h100-od", "accelerator": "h100"}
    assert _value(s, "chipfit_pool_capacity_devices", **h100) == 16
    assert _value(s, "chipfit_pool_allocated_devices", **h100) == 10
    assert _value(s, "chipfit_pool_free_devices", **h100) == 6
    assert _value(s, "chipfit_pool_price_dollars_per_device_hour", **h100) == 3.5
    assert _value(s, "chipfit_pool_cost_dollars_per_hour", **h100) == pytest.approx(56.0)
    assert _value(s, "chipfit_pool_free_devices", pool="l4-spot") == 0
    # The pool's chip changed: no series may linger under the old accelerator label.
    m.record_pool(metrics.PoolUsage("h100-od", "h200", 8, 0, 4.0))
    m.forget_pool("l4-spot")
    s = _scrape(url)
    assert not _has(s, "chipfit_pool_capacity_devices", accelerator="h100")
    assert not _has(s, "chipfit_pool_cost_dollars_per_hour", pool="l4-spot")
    assert _value(s, "chipfit_pool_capacity_devices", pool="h100-od", accelerator="h200") == 8


def test_solver_and_reconcile_counters_and_histograms(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    t0 = 1.7e9
    m.observe_solve(0.3, "optimal", gap_ratio=0.0, objective_dollars_per_hour=41.0, timestamp_seconds=t0)
    m.observe_solve(
        12.0, "feasible", gap_ratio=0.02, objective_dollars_per_hour=40.0, timestamp_seconds=t0 + 60
    )
    m.observe_reconcile("inferenceservice", 0.02)
    m.observe_reconcile("inferenceservice", 0.7, error="permanent")
    m.observe_reconcile("fleet", 1.5, error="temporary")
    m.record_placement_change("default", "chat", "decode")
    m.record_placement_change("default", "chat", "decode")
    s = _scrape(url)
    assert _value(s, "chipfit_solver_runs_total", status="optimal") == 1
    assert _value(s, "chipfit_solver_runs_total", status="feasible") == 1
    assert _value(s, "chipfit_solver_runs_total", status="infeasible") == 0  # pre-initialised
    assert _value(s, "chipfit_solver_last_status", status="feasible") == 1
    assert _value(s, "chipfit_solver_last_status", status="optimal") == 0
    assert _value(s, "chipfit_solver_gap_ratio") == 0.02
    assert _value(s, "chipfit_solver_objective_dollars_per_hour") == 40.0
    assert _value(s, "chipfit_solver_last_run_timestamp_seconds") == t0 + 60
    assert _value(s, "chipfit_solver_runtime_seconds_count") == 2
    assert _value(s, "chipfit_solver_runtime_seconds_sum") == pytest.approx(12.3)
    assert _value(s, "chipfit_solver_runtime_seconds_bucket", le="0.5") == 1
    assert _value(s, "chipfit_solver_runtime_seconds_bucket", le="+Inf") == 2
    assert _value(s, "chipfit_reconciles_total", kind="inferenceservice") == 2
    assert _value(s, "chipfit_reconciles_total", kind="fleet") == 1
    assert _value(s, "chipfit_reconcile_errors_total", kind="inferenceservice", error="permanent") == 1
    assert _value(s, "chipfit_reconcile_errors_total", kind="inferenceservice", error="temporary") == 0
    assert _value(s, "chipfit_reconcile_errors_total", kind="fleet", error="temporary") == 1
    assert _value(s, "chipfit_reconcile_duration_seconds_count", kind="inferenceservice") == 2
    assert _value(s, "chipfit_reconcile_duration_seconds_bucket", kind="inferenceservice", le="0.025") == 1
    assert _value(s, "chipfit_placement_changes_total", service="chat", role="decode") == 2
    assert _value(s, "chipfit_build_info", version=chipfit.__version__) == 1


def test_names_follow_prometheus_conventions(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    m.record_plan(_plan())
    m.record_pool(metrics.PoolUsage("h100-od", "h100", 16, 10, 3.5))
    m.record_placement_change("default", "chat", "decode")
    response = httpx.get(url, timeout=10.0)
    families = list(parser.text_string_to_metric_families(response.text))
    names = {f.name for f in families}
    assert names, "nothing exported"
    for family in families:
        if family.name.endswith("_created"):
            continue  # the client library's creation timestamps of counters and histograms
        assert METRIC_NAME_RE.match(family.name) and family.name.startswith("chipfit_"), family.name
        assert family.documentation, f"{family.name}: no HELP text"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        else:
            # _total is reserved for counters; every other series names its unit.
            assert not family.name.endswith("_total"), family.name
            assert family.name.endswith(UNIT_SUFFIXES), f"{family.name}: no unit suffix"
        for sample in family.samples:
            assert set(sample.labels) <= BOUNDED_LABELS, f"{sample.name}: unbounded label {sample.labels}"
            assert not math.isnan(sample.value), sample.name
    assert metrics.exported_series_names(m.registry) >= {
        s.name for f in families for s in f.samples if not s.name.endswith("_created")
    }


def test_dedicated_registry_is_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    m = metrics.OperatorMetrics()
    assert m.registry is not REGISTRY
    # Two instances in one process (tests, a restarted handler) must not collide on names.
    metrics.OperatorMetrics()


# Typed Any so the type checker lets the test hand the code what a careless caller would.
BAD_ROLE: Any = "mixed"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.observe_solve(1.0, "done"), "status: 'done' is not one of optimal"),
        (lambda m: m.observe_solve(-1.0, "optimal"), "runtime_seconds: must be >= 0"),
        (lambda m: m.observe_reconcile("pod", 0.1), "kind: 'pod' is not one of"),
        (lambda m: m.observe_reconcile("node", 0.1, error="oops"), "error: 'oops'"),
        (lambda m: m.record_pool(metrics.PoolUsage("p", "h100", -1, 0, 1.0)), "devices_total: must be >= 0"),
        (lambda m: m.record_pool(metrics.PoolUsage("", "h100", 1, 0, 1.0)), "pool: must be a non-empty name"),
        (lambda m: m.record_plan(_plan(slo_ttft_p99_ms=-5.0)), "slo_ttft_p99_ms: must be >= 0"),
        (
            lambda m: m.record_plan(
                _plan(placements=(metrics.PlannedRole(BAD_ROLE, "h100", "p", 1, 1.0, 1.0),))
            ),
            "placements[0].role: 'mixed'",
        ),
        (
            lambda m: m.record_plan(_plan(placements=(_plan().placements[0], _plan().placements[0]))),
            "placements[1]: duplicate role/accelerator/pool",
        ),
        (lambda m: metrics.start_metrics_server(70000, m.registry), "port: must be 0..65535"),
    ],
)
def test_bad_input_is_one_clear_line(
    call: collections.abc.Callable[[metrics.OperatorMetrics], object], message: str
) -> None:
    m = metrics.OperatorMetrics()
    with pytest.raises(ValueError) as excinfo:
        call(m)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_forget_plan_leaves_only_operator_series(served: tuple[metrics.OperatorMetrics, str]) -> None:
    m, url = served
    m.record_plan(_plan())
    m.record_pool(metrics.PoolUsage("h100-od", "h100", 16, 10, 3.5))
    m.forget_plan()
    s = _scrape(url)
    assert not any(name.startswith(("chipfit_service_", "chipfit_pool_")) for name in s)
    assert _has(s, "chipfit_build_info")
