"""Grafana dashboards: valid JSON, every query names only series the operator really exports."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any, Final

import pytest

from chipfit import engines, metrics

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS_DIR: Final = REPO_DIR / "charts" / "chipfit" / "dashboards"
DASHBOARD_FILES: Final = sorted(DASHBOARDS_DIR.glob("*.json"))

# PromQL words that look like metric names but are not (https://prometheus.io/docs/prometheus/latest/
# querying/operators/ and .../functions/): binary set operators, modifiers and the `bool` keyword.
PROMQL_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
     "inf", "nan", "atan2"}
)  # fmt: skip
# Grouping clauses whose parenthesised arguments are label names, not series.
LABEL_LIST_RE: Final = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
MATCHERS_RE: Final = re.compile(r"\{[^}]*\}")
RANGE_RE: Final = re.compile(r"\[[^\]]*\]")
GRAFANA_VAR_RE: Final = re.compile(r"\$(\{[^}]*\}|\w+)")
IDENT_RE: Final = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
# Grafana's templating helpers (label_values(metric, label), ...): the metric is their first argument.
GRAFANA_LABEL_VALUES_RE: Final = re.compile(r"label_values\(\s*([^,)]+)\s*(?:,\s*\w+\s*)?\)")


def metric_names_in(expr: str) -> set[str]:
    """Series names a PromQL expression selects (functions, keywords, labels and literals left out)."""
    grafana = GRAFANA_LABEL_VALUES_RE.fullmatch(expr.strip())
    if grafana:
        expr = grafana.group(1)
    expr = GRAFANA_VAR_RE.sub("1", STRING_RE.sub('""', expr))
    expr = LABEL_LIST_RE.sub(" ", MATCHERS_RE.sub(" ", RANGE_RE.sub(" ", expr)))
    names: set[str] = set()
    for match in IDENT_RE.finditer(expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        # Numbers in scientific notation (1e6) start with a digit and never match; hex does not occur.
        names.add(word)
    return names


def _queries(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """(location, expr) of every panel target and every templating query in a dashboard."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield where, node["expr"]
        if node.get("type") == "query" and "definition" in node:
            yield f"{where}.definition", node["definition"]
        for key, value in node.items():
            yield from _queries(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _queries(item, f"{where}[{index}]")


def _load(path: pathlib.Path) -> dict[str, Any]:
    """Parse one dashboard file."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


EXPORTED: Final = metrics.exported_series_names(metrics.OperatorMetrics().registry)
# Engine series the dashboards may read: declared in chipfit.engines, found in a real engine's /metrics by
# tests/engine/test_rendered_vllm_serves.py.
ENGINE_SERIES: Final = engines.VLLM_METRICS


def test_the_extractor_finds_metrics_and_only_metrics() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, kind) "
        '(rate(chipfit_reconcile_duration_seconds_bucket{kind=~"$k"}[$__rate_interval]))) '
        "/ on(pool) group_left (accelerator) chipfit_pool_price_dollars_per_device_hour "
        "* 1e6 > bool 3 and time() - chipfit_solver_last_run_timestamp_seconds offset 5m"
    )
    assert metric_names_in(expr) == {
        "chipfit_reconcile_duration_seconds_bucket",
        "chipfit_pool_price_dollars_per_device_hour",
        "chipfit_solver_last_run_timestamp_seconds",
    }
    assert metric_names_in('label_values(chipfit_pool_capacity_devices{x="y"}, pool)') == {
        "chipfit_pool_capacity_devices"
    }
    # A misspelt name is found (so the test below can fail on it).
    assert metric_names_in("sum(chipfit_reconcile_total)") == {"chipfit_reconcile_total"}
    assert "chipfit_reconcile_total" not in EXPORTED


def test_exported_names_include_counter_and_histogram_suffixes() -> None:
    assert "chipfit_reconciles_total" in EXPORTED
    assert "chipfit_reconciles" not in EXPORTED  # counters are exposed only with _total
    assert {"chipfit_solver_runtime_seconds_bucket", "chipfit_solver_runtime_seconds_sum"} <= EXPORTED
    assert "chipfit_solver_runtime_seconds" not in EXPORTED


def test_there_are_the_four_dashboards() -> None:
    assert [p.name for p in DASHBOARD_FILES] == [
        "chipfit-fleet-cost.json",
        "chipfit-operator.json",
        "chipfit-pools.json",
        "chipfit-services.json",
    ]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_query_uses_only_exported_metrics(path: pathlib.Path) -> None:
    dashboard = _load(path)
    queries = list(_queries(dashboard, path.name))
    assert queries, f"{path.name}: no queries"
    for where, expr in queries:
        names = metric_names_in(expr)
        assert names, f"{where}: query {expr!r} selects no chipfit series"
        unknown = names - EXPORTED - ENGINE_SERIES
        assert not unknown, (
            f"{where}: {sorted(unknown)} not exported by chipfit.metrics nor in engines.VLLM_METRICS"
        )


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_structure(path: pathlib.Path) -> None:
    dashboard = _load(path)
    assert dashboard["uid"] == path.stem, "uid must be stable and match the file name"
    assert dashboard["title"].startswith("chipfit / ")
    assert "chipfit" in dashboard["tags"]
    # A datasource variable, so the dashboard works with any Prometheus data source name.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no queries"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: off the 24-column grid"


def test_dashboards_cover_what_a_platform_team_asks() -> None:
    """Fleet cost by service and chip, $/1M tokens, pool use, predicted vs SLO, changes, operator health."""
    used = set()
    for path in DASHBOARD_FILES:
        for _, expr in _queries(_load(path), path.name):
            used |= metric_names_in(expr)
    assert {
        "chipfit_service_predicted_cost_dollars_per_hour",
        "chipfit_service_placement_cost_dollars_per_hour",
        "chipfit_service_predicted_cost_dollars_per_million_output_tokens",
        "chipfit_pool_allocated_devices",
        "chipfit_pool_capacity_devices",
        "chipfit_service_predicted_ttft_p99_seconds",
        "chipfit_service_slo_ttft_p99_seconds",
        "chipfit_service_predicted_itl_p99_seconds",
        "chipfit_service_slo_itl_p99_seconds",
        "chipfit_placement_changes_total",
        "chipfit_autoscale_decisions_total",
        "chipfit_reconciles_total",
        "chipfit_reconcile_errors_total",
        "chipfit_reconcile_duration_seconds_bucket",
        "chipfit_solver_runtime_seconds_bucket",
        "chipfit_solver_last_status",
    } <= used
    # What the engines measure, next to what the plan predicted (what autoscaling acts on).
    assert used >= ENGINE_SERIES
