"""Every dashboard PromQL query, evaluated by a real Prometheus server scraping a real operator.

tests/unit/test_chart_dashboards.py checks the queries' metric names; this checks that Prometheus (the
Debian package, installed by e2e/install-prometheus.sh) accepts every query and that the core cost and
latency panels show the example fleet's plan. The operator plans examples/ on the e2e control plane.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest
import yaml

from .conftest import COMMAND_TIMEOUT_S, REPO_DIR, SETTLE_TIMEOUT_S, Cluster, unavailable
from .test_helm_install import (
    EXAMPLES_DIR,
    LOOPBACK,
    _example_docs,
    _free_port,
    _plan_exported,
    _scrape,
    exists,
)

pytestmark = pytest.mark.e2e

DASHBOARDS_DIR: Final = REPO_DIR / "charts" / "chipfit" / "dashboards"
DASHBOARD_FILES: Final = sorted(DASHBOARDS_DIR.glob("*.json"))
DASHBOARD_UNIT_TEST: Final = REPO_DIR / "tests" / "unit" / "test_chart_dashboards.py"
PROMETHEUS_BIN: Final = shutil.which("prometheus") or "/usr/bin/prometheus"
JOB: Final = "chipfit-operator"
# Scrape every second so the test waits seconds, not the default minute, for samples.
SCRAPE_INTERVAL: Final = "1s"
# Bound on one HTTP call to Prometheus or the operator.
HTTP_TIMEOUT_S: Final = 5.0
# Bound on Prometheus opening its TSDB and serving /-/ready (a second or two; the bound is for a broken run).
READY_TIMEOUT_S: Final = 60.0
POLL_INTERVAL_S: Final = 0.5
# Grafana's built-in interval variables (https://grafana.com/docs/grafana/latest/dashboards/variables/
# add-template-variables/#global-variables), set to a window that holds many 1 s scrapes.
GRAFANA_BUILTINS: Final = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1m",
    "__interval_ms": "60000",
    "__range_s": "60",
    "__range_ms": "60000",
}
# What Grafana sends for a multi-value variable with "All" selected and no custom allValue is the
# alternation of every value; `.*` selects the same series.
ALL_VALUES_REGEX: Final = ".*"
GRAFANA_VAR_RE: Final = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
# Panels (dashboard file, panel title) that must show data for the example fleet: the fleet's $/h, the
# per-service $/h and the per-service predicted latencies against their SLOs.
CORE_PANELS: Final = (
    ("chipfit-fleet-cost.json", "Fleet cost"),
    ("chipfit-fleet-cost.json", "Cost per hour by service"),
    ("chipfit-fleet-cost.json", "Cost per hour by chip"),
    ("chipfit-fleet-cost.json", "Pool capacity cost"),
    ("chipfit-services.json", "TTFT p99: predicted vs SLO"),
    ("chipfit-services.json", "ITL p99: predicted vs SLO"),
    ("chipfit-services.json", "TTFT p99 as a share of its SLO"),
    ("chipfit-pools.json", "Devices: capacity"),
    ("chipfit-operator.json", "Operator replicas up"),
)


def _dashboard_unit_test() -> types.ModuleType:
    """tests/unit/test_chart_dashboards.py, for its query extractor (the same queries it checks by name)."""
    spec = importlib.util.spec_from_file_location("chipfit_unit_test_chart_dashboards", DASHBOARD_UNIT_TEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prometheus_available() -> None:
    """Fail on CI, skip locally, when the Prometheus binary is not installed."""
    if not os.access(PROMETHEUS_BIN, os.X_OK):
        unavailable(f"{PROMETHEUS_BIN} not found: run e2e/install-prometheus.sh (tests/run.sh does)")


def _stop(process: subprocess.Popen[Any]) -> None:
    """TERM, then KILL after a bound: no process is left behind."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait(what: str, probe: Any, timeout_s: float, log_path: pathlib.Path) -> Any:
    """Poll probe() until truthy; fail after timeout_s with the log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = "\n".join(log_path.read_text().splitlines()[-30:])
            pytest.fail(
                f"timed out after {timeout_s:.0f} s waiting for {what}; log tail:\n{tail}", pytrace=False
            )
        time.sleep(POLL_INTERVAL_S)


@pytest.fixture
def planned_operator(
    cluster: Cluster, crds_applied: list[str], namespace: str, tmp_path: pathlib.Path
) -> Iterator[dict[str, Any]]:
    """`chipfit operator` (standalone, admin kubeconfig), the example fleet planned; stopped afterwards."""
    _prometheus_available()  # before starting anything
    pools = {doc["metadata"]["name"] for doc in _example_docs("10-fleet.yaml", "AcceleratorPool")}
    created_pools = {pool for pool in pools if not exists(cluster, "acceleratorpool", pool)}
    services = [
        {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
        for doc in _example_docs("20-services.yaml", "InferenceService")
    ]
    assert services
    health_port, metrics_port = _free_port(), _free_port()
    log_path = tmp_path / "operator.log"
    operator: subprocess.Popen[Any] | None = None
    try:
        cluster.kubectl("apply", "-f", str(EXAMPLES_DIR / "10-fleet.yaml"))
        cluster.apply_objects(services)
        with log_path.open("w") as log:
            operator = subprocess.Popen(
                [
                    sys.executable, "-m", "chipfit.cli", "operator", "--standalone",
                    "--kubeconfig", str(cluster.kubeconfig),
                    f"--liveness=http://{LOOPBACK}:{health_port}/healthz",
                    f"--metrics-port={metrics_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # kopf's own login reads KUBECONFIG (the kubernetes client fixes its default at import).
                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
            )  # fmt: skip
        metrics_url = f"http://{LOOPBACK}:{metrics_port}/metrics"

        def planned() -> dict[str, list[Any]]:
            assert operator is not None
            if operator.poll() is not None:
                pytest.fail(f"the operator exited: {log_path.read_text()[-2000:]}", pytrace=False)
            samples = _scrape(metrics_url)
            return samples if _plan_exported(samples, namespace, len(services), pools) else {}

        _wait("the operator to plan every example service and pool", planned, SETTLE_TIMEOUT_S, log_path)
        yield {
            "metrics_port": metrics_port,
            "namespace": namespace,
            "services": {doc["metadata"]["name"] for doc in services},
            "pools": pools,
            "log_path": log_path,
        }
    finally:
        if operator is not None:
            _stop(operator)
        cluster.kubectl("delete", "inferenceservices", "--all", "-n", namespace, "--timeout=60s", check=False)
        for pool in sorted(created_pools):
            cluster.kubectl("delete", "acceleratorpool", pool, "--ignore-not-found", check=False)


@pytest.fixture
def prometheus(planned_operator: dict[str, Any], tmp_path: pathlib.Path) -> Iterator[str]:
    """A real Prometheus server on a free loopback port scraping the operator; its base URL. Stopped after."""
    port = _free_port()
    config_path = tmp_path / "prometheus.yml"
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": [f"{LOOPBACK}:{planned_operator['metrics_port']}"]}],
            }
        ],
    }
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"http://{LOOPBACK}:{port}"
    try:

        def ready() -> bool:
            if server.poll() is not None:
                pytest.fail(f"prometheus exited: {log_path.read_text()[-2000:]}", pytrace=False)
            try:
                return httpx.get(f"{url}/-/ready", timeout=HTTP_TIMEOUT_S).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("prometheus /-/ready", ready, READY_TIMEOUT_S, log_path)
        yield url
    finally:
        _stop(server)


def _api(url: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
    """GET a Prometheus HTTP API endpoint; the parsed body (status "success" or "error" with the reason)."""
    response = httpx.get(f"{url}{path}", params=params, timeout=HTTP_TIMEOUT_S)
    body: dict[str, Any] = response.json()
    return body


def _substitute(expr: str, variables: dict[str, str], where: str) -> str:
    """Replace Grafana template variables ($x, ${x}, ${x:fmt}, [[x]]) with concrete PromQL text."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            pytest.fail(f"{where}: unknown Grafana variable ${name} in {expr!r}", pytrace=False)
        return variables[name]

    return GRAFANA_VAR_RE.sub(value, expr)


def _dashboard_variables(dashboard: dict[str, Any], namespace: str) -> dict[str, str]:
    """Values for the dashboard's own variables (namespace = this test's; the others all values)."""
    variables = dict(GRAFANA_BUILTINS)
    for variable in dashboard["templating"]["list"]:
        name = variable["name"]
        variables[name] = namespace if name == "namespace" else ALL_VALUES_REGEX
    return variables


def test_prometheus_evaluates_every_dashboard_query(
    planned_operator: dict[str, Any], prometheus: str
) -> None:
    """Prometheus scrapes the operator; every dashboard query is valid PromQL there (status success), the
    template variables list the example fleet, and the core cost and latency panels show its plan."""
    namespace = planned_operator["namespace"]
    unit = _dashboard_unit_test()

    def target_up() -> bool:
        targets = _api(prometheus, "/api/v1/targets", {"state": "active"})["data"]["activeTargets"]
        return any(t["labels"].get("job") == JOB and t["health"] == "up" for t in targets)

    _wait(f"the {JOB} target to be up", target_up, READY_TIMEOUT_S, planned_operator["log_path"])

    # Every service's cost is in Prometheus (one scrape after the plan): then all planned series are.
    def scraped() -> bool:
        query = f'chipfit_service_predicted_cost_dollars_per_hour{{namespace="{namespace}"}}'
        result = _api(prometheus, "/api/v1/query", {"query": query})["data"]["result"]
        return len(result) == len(planned_operator["services"])

    _wait("the plan's series in Prometheus", scraped, READY_TIMEOUT_S, planned_operator["log_path"])

    evaluated = 0
    results: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    queries: dict[tuple[str, str], list[str]] = {}
    assert DASHBOARD_FILES
    for path in DASHBOARD_FILES:
        dashboard = unit._load(path)
        variables = _dashboard_variables(dashboard, namespace)
        for panel in dashboard["panels"]:
            for where, expr in unit._queries(panel, f"{path.name}:{panel['title']}"):
                query = _substitute(expr, variables, where)
                body = _api(prometheus, "/api/v1/query", {"query": query})
                assert body["status"] == "success", f"{where}: {query!r}: {body.get('error')}"
                results.setdefault((path.name, panel["title"]), []).append(body["data"]["result"])
                queries.setdefault((path.name, panel["title"]), []).append(query)
                evaluated += 1
        # Template variables: Grafana's label_values(selector, label) is the label values API.
        for variable in dashboard["templating"]["list"]:
            if variable.get("type") != "query":
                continue
            for where, expr in unit._queries(variable, f"{path.name}:${variable['name']}"):
                match = unit.GRAFANA_LABEL_VALUES_RE.fullmatch(expr.strip())
                assert match, f"{where}: {expr!r} is not label_values(selector, label)"
                label = re.fullmatch(r"label_values\(.*,\s*(\w+)\s*\)", expr.strip())
                assert label, f"{where}: {expr!r} names no label"
                selector = _substitute(match.group(1), variables, where)
                body = _api(prometheus, f"/api/v1/label/{label.group(1)}/values", {"match[]": selector})
                assert body["status"] == "success", f"{where}: {selector!r}: {body.get('error')}"
                expected = {
                    "namespace": {namespace},
                    "service": planned_operator["services"],
                    "pool": planned_operator["pools"],
                }[label.group(1)]
                assert expected <= set(body["data"]), f"{where}: {body['data']} lacks {sorted(expected)}"
                evaluated += 1
    assert evaluated >= len(DASHBOARD_FILES)

    for panel in CORE_PANELS:
        assert panel in results, f"{panel}: no such panel (renamed? update CORE_PANELS)"
        for result in results[panel]:
            assert result, f"{panel}: empty result for the example fleet"

    ttft, slo = results[("chipfit-services.json", "TTFT p99: predicted vs SLO")]
    assert {r["metric"]["service"] for r in slo} == planned_operator["services"]
    share = results[("chipfit-services.json", "TTFT p99 as a share of its SLO")][0]
    assert all(float(r["value"][1]) > 0 for r in share + ttft), share

    # The values Prometheus returns are the operator's: per-service $/h and predicted TTFT. Compared with a
    # fresh scrape, retried: the operator may re-plan (node heartbeats) between a scrape and a query.
    metrics_url = f"http://{LOOPBACK}:{planned_operator['metrics_port']}/metrics"
    compared = (
        (
            ("chipfit-fleet-cost.json", "Cost per hour by service"),
            "chipfit_service_predicted_cost_dollars_per_hour",
        ),
        (
            ("chipfit-services.json", "TTFT p99: predicted vs SLO"),
            "chipfit_service_predicted_ttft_p99_seconds",
        ),
    )
    mismatches: list[str] = []

    def same_values() -> bool:
        mismatches.clear()
        samples = _scrape(metrics_url)
        for panel, metric in compared:
            scraped_values = {
                s.labels["service"]: s.value
                for s in samples.get(metric, [])
                if s.labels["namespace"] == namespace
            }
            result = _api(prometheus, "/api/v1/query", {"query": queries[panel][0]})["data"]["result"]
            queried = {r["metric"]["service"]: float(r["value"][1]) for r in result}
            if queried.keys() != planned_operator["services"] or queried != pytest.approx(scraped_values):
                mismatches.append(f"{panel}: prometheus {queried}, operator {scraped_values}")
        return not mismatches

    try:
        _wait(
            "Prometheus to return the operator's values",
            same_values,
            READY_TIMEOUT_S,
            planned_operator["log_path"],
        )
    except pytest.fail.Exception as failure:
        pytest.fail(f"{failure}\n" + "\n".join(mismatches), pytrace=False)
