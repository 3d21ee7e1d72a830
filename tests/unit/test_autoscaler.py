"""chipfit.autoscaler: one tick on the examples fleet with Prometheus answers faked, absent or failing."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from chipfit import autoscaler, planning, validation
from chipfit.api import v1alpha1

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def fleet() -> tuple[list[v1alpha1.InferenceService], list[v1alpha1.AcceleratorPool]]:
    loaded = validation.load_and_validate([EXAMPLES])
    assert not loaded.problems
    chat = [s for s in loaded.services if s.metadata.name == "chat-8b"]
    assert chat, "examples/ must keep the chat-8b service"
    return chat, list(loaded.pools)


def _answer(rate: float) -> Any:
    def query(promql: str) -> list[dict[str, Any]]:
        if promql.startswith('sum(rate({__name__=~"vllm:request_success_total"'):
            return [{"metric": {}, "value": [0, str(rate)]}]
        if "time_to_first_token_seconds_bucket" in promql and promql.startswith("histogram_quantile"):
            return [{"metric": {}, "value": [0, "0.2"]}]
        return []

    return query


def test_without_prometheus_every_service_says_so_and_nothing_changes(fleet):
    services, pools = fleet
    reports = autoscaler.Autoscaler().tick(services, pools, [], None, 0.0)
    assert len(reports) == len(services)
    for r in reports:
        assert r.outcome is None
        assert r.condition[:2] == (False, "NoPrometheus")


def test_a_rate_above_the_spec_scales_up_with_an_event_and_status(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    spec_rps = services[0].spec.workload.requests_per_second
    [low] = scaler.tick(services, pools, [], _answer(spec_rps), 0.0)
    [high] = scaler.tick(services, pools, [], _answer(spec_rps * 20), 30.0)
    assert low.outcome is not None and high.outcome is not None
    replicas_low = sum(p.replicas for p in low.outcome.placements)
    replicas_high = sum(p.replicas for p in high.outcome.placements)
    assert replicas_high > replicas_low
    assert high.event is not None and high.event[1] in ("ScaledUp", "ScaledMove")
    assert high.status is not None and high.status.observed_requests_per_second == pytest.approx(
        spec_rps * 20
    )
    assert high.status.observed_ttft_p99_ms == pytest.approx(200.0)
    # What the autoscaler hands the fleet worker renders as the planner's outcomes do (each placement
    # carries the engine settings it was priced with; without them the renderer refuses).
    from chipfit import render

    service = services[0].model_copy(
        update={"metadata": services[0].metadata.model_copy(update={"uid": "uid-1"})}
    )
    rendered = render.render_planned(service, high.outcome.placements, {p.metadata.name: p for p in pools})
    assert any(o["kind"] == "Deployment" for o in rendered)
    assert all(p.engine_config is not None for p in high.outcome.placements)
    assert high.status.dollars_per_hour and high.status.dollars_per_hour > 0
    assert high.condition[0] is True
    sid = planning.service_id(services[0])
    assert scaler.outcomes[sid] == high.outcome


def test_prometheus_down_holds_and_says_why(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    [first] = scaler.tick(services, pools, [], _answer(5.0), 0.0)

    def down(promql: str) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    [held] = scaler.tick(services, pools, [], down, 30.0)
    assert held.condition[:2] == (False, "MetricsUnavailable")
    assert "connection refused" in held.condition[2]
    assert held.status is not None and held.status.last_decision == "hold"
    assert held.outcome is not None and first.outcome is not None
    assert sum(p.replicas for p in held.outcome.placements) == sum(
        p.replicas for p in first.outcome.placements
    )


def test_missing_metrics_before_anything_runs_leave_the_spec_sized_plan(fleet):
    """A new service's first tick comes before its pods exist: no metrics, no replicas. Holding "nothing"
    would override the planner's spec-sized plan with zero replicas (found by the e2e test)."""
    services, pools = fleet
    fresh = [s.model_copy(update={"status": None}) for s in services]
    [report] = autoscaler.Autoscaler().tick(fresh, pools, [], _answer_nothing, 0.0)
    assert report.outcome is None
    assert report.condition[:2] == (False, "MetricsMissing")


def _answer_nothing(promql: str) -> list[dict[str, Any]]:
    return []


def test_drain_time_covers_the_longest_expected_request(fleet):
    from chipfit import render

    services, _ = fleet
    base = services[0]
    short = render.termination_grace_s(base)
    assert short >= render.TERMINATION_GRACE_S
    wl = base.spec.workload
    longer = base.model_copy(
        update={
            "spec": base.spec.model_copy(
                update={
                    "workload": wl.model_copy(
                        update={
                            "output_tokens": wl.output_tokens.model_copy(
                                update={"mean": 2000.0, "p99": 8000.0}
                            )
                        }
                    )
                }
            )
        }
    )
    # 8000 tokens at the ITL SLO, doubled: longer than the floor, never above the cap.
    expected = 2 * (base.spec.slo.ttft_p99_ms / 1000 + 8000 * base.spec.slo.itl_p99_ms / 1000)
    assert render.termination_grace_s(longer) == min(
        render.MAX_TERMINATION_GRACE_S, max(short, math.ceil(expected))
    )


def test_removed_replicas_wait_out_the_longest_request_before_sigterm(fleet):
    from chipfit import handlers, render

    services, pools = fleet
    solved = handlers.plan_outcomes(services, pools, [], planning.Planner())
    service = services[0].model_copy(
        update={"metadata": services[0].metadata.model_copy(update={"uid": "uid-1"})}
    )
    placements = solved.outcomes[planning.service_id(service)].placements
    by_name = {p.metadata.name: p for p in pools}
    deployments = [
        o for o in render.render_planned(service, placements, by_name)
        if o["kind"] == "Deployment" and o["metadata"]["labels"].get("chipfit.io/role") != "router"
    ]  # fmt: skip
    assert deployments
    longest = render.longest_request_s(service)
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        wait = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        # The wait covers the longest expected request and ends before the kubelet's SIGKILL.
        assert wait >= longest and wait >= render.PRE_STOP_MIN_S
        assert wait < pod["terminationGracePeriodSeconds"]


def test_policy_settings_override_the_named_knobs_only():
    policy = autoscaler.policy_from_settings(["interval_s=3,scale_down_window_s=20", "startup_s=5"])
    assert (policy.interval_s, policy.scale_down_window_s, policy.startup_s) == (3.0, 20.0, 5.0)
    default = autoscaler.autoscale.Policy()
    assert policy.headroom == default.headroom and policy.idle_to_zero_s == default.idle_to_zero_s


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("intervl_s=3", "intervl_s: unknown knob"),
        ("interval_s=fast", "interval_s: 'fast' is not a number"),
        ("interval_s=0", "interval_s: must be > 0"),
        ("level_alpha=2", "level_alpha: must be in (0, 1]"),
        ("interval_s", "expected knob=value"),
    ],
)
def test_a_bad_policy_setting_is_refused_naming_the_knob(setting, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        autoscaler.policy_from_settings([setting])


def test_the_operator_refuses_bad_autoscaling_flags_before_starting(tmp_path):
    import subprocess
    import sys

    for flags, named in (
        (["--autoscaling-policy", "nope=1"], "--autoscaling-policy: nope: unknown knob"),
        (["--autoscaling-rate-window", "20 seconds"], "--autoscaling-rate-window: '20 seconds'"),
        (["--prometheus-url", "prom:9090"], "--prometheus-url: must start with http://"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "chipfit.cli", "operator", "--kubeconfig", str(tmp_path / "none"), *flags],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert named in result.stderr, result.stderr


def test_a_service_at_zero_comes_back_on_a_request_held_by_the_activator(fleet):
    services, pools = fleet
    base = services[0]
    at_zero = base.model_copy(
        update={
            "spec": base.spec.model_copy(
                update={"replicas": v1alpha1.Replicas(min=0, max=4, scale_to_zero=True)}
            ),
            "status": None,
        }
    )

    def query(promql: str) -> list[dict[str, Any]]:
        # No engine series (no replica); the activator counted a request and holds it.
        if promql.startswith("sum(rate(chipfit_activator_requests_total"):
            return [{"metric": {}, "value": [0, "0.05"]}]
        if promql.startswith("sum(chipfit_activator_pending_requests"):
            return [{"metric": {}, "value": [0, "1"]}]
        return []

    [report] = autoscaler.Autoscaler().tick([at_zero], pools, [], query, 0.0)
    assert report.outcome is not None and sum(p.replicas for p in report.outcome.placements) >= 1
    assert report.event is not None and report.event[1] == "ScaledUp"
    assert report.status is not None and report.status.pending_requests == 1.0
    # Without the activator's series the same service holds at zero (missing metrics never scale).
    [held] = autoscaler.Autoscaler().tick([at_zero], pools, [], _answer_nothing, 0.0)
    assert held.outcome is None and held.condition[1] == "MetricsMissing"


def test_metrics_missing_is_one_warning_when_they_go_and_one_event_when_they_return(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    scaler.tick(services, pools, [], _answer(5.0), 0.0)

    def down(promql: str) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    events = [r.event for t in (30.0, 60.0, 90.0) for r in scaler.tick(services, pools, [], down, t)]
    assert [e[1] for e in events if e is not None] == ["MetricsMissing"]
    # Back: held for one whole rate window first (a window over the gap reads low), then active.
    [warming] = scaler.tick(services, pools, [], _answer(0.01), 120.0)
    assert warming.condition[:2] == (False, "MetricsWarmingUp") and warming.event is None
    assert warming.status is not None and warming.status.last_decision == "hold"
    [back] = scaler.tick(services, pools, [], _answer(5.0), 120.0 + 61.0)
    assert back.condition[0] is True
    assert back.event is not None and back.event[1] in ("MetricsRestored", "ScaledUp", "ScaledDown")


def test_replicas_whose_nodes_vanished_are_lost_not_starting():
    from placement.solver import inputs

    def key(pool: str, tp: int = 1) -> Any:
        return inputs.CandidateKey("ml/chat", "aggregated", pool, "bf16", tp)

    spot = inputs.Pool("spot", "l4", devices_per_node=1, nodes=0, price_per_device_hour=0.3, spot=True)
    ondemand = inputs.Pool("ondemand", "l4", devices_per_node=4, nodes=1, price_per_device_hour=0.8)
    problem = inputs.FleetProblem(services=(), pools=(spot, ondemand), candidates=())
    current = {key("spot"): 2, key("ondemand"): 3, key("ondemand", 2): 1}
    starting = {key("spot"): 1, key("ondemand", 2): 1}
    have, pending, lost = autoscaler.fit_to_capacity(current, starting, problem)
    # The spot pool has no node left: both its replicas are lost. The on-demand node holds 4 devices:
    # the 3 ready tp1 replicas stay, the starting tp2 one cannot fit and is lost too.
    assert lost == {key("spot"): 2, key("ondemand", 2): 1}
    assert have == {key("ondemand"): 3} and pending == {}
    # With room, nothing is lost.
    roomy = inputs.FleetProblem(services=(), pools=(ondemand,), candidates=())
    assert autoscaler.fit_to_capacity({key("ondemand"): 4}, {}, roomy)[2] == {}


def test_lost_nodes_with_metrics_missing_hand_the_service_back_to_the_planner(fleet):
    services, pools = fleet
    scaler = autoscaler.Autoscaler()
    [first] = scaler.tick(services, pools, [], _answer(5.0), 0.0)
    assert first.outcome is not None and first.outcome.placements
    # The service runs what was decided; then the nodes of its pools vanish while Prometheus is down.
    running = services[0].model_copy(
        update={
            "status": v1alpha1.InferenceServiceStatus(
                placement=[
                    p.model_copy(update={"ready_replicas": p.replicas}) for p in first.outcome.placements
                ]
            )
        }
    )
    used = {p.pool for p in first.outcome.placements}
    gone = [
        p.model_copy(update={"spec": p.spec.model_copy(update={"nodes": 0})})
        if p.metadata.name in used
        else p
        for p in pools
    ]

    def down(promql: str) -> list[dict[str, Any]]:
        raise ConnectionError("connection refused")

    [report] = scaler.tick([running], gone, [], down, 30.0)
    assert report.release and report.outcome is None
    assert report.condition[:2] == (False, "CapacityLostWithoutMetrics")
    # With metrics present the same loss is re-placed by the autoscaler itself, off the vanished pools.
    [placed] = autoscaler.Autoscaler().tick([running], gone, [], _answer(5.0), 0.0)
    assert not placed.release and placed.outcome is not None
    assert placed.outcome.placements and not {p.pool for p in placed.outcome.placements} & used


class _StatusCluster:
    """Lists one service (as the API server returns it) and records status writes; 409 on demand."""

    def __init__(self, service: dict[str, Any], pools: list[dict[str, Any]]) -> None:
        self.service = service
        self.pools = pools
        self.writes: list[tuple[dict[str, Any], str | None]] = []
        self.conflict = False

    def list_inference_services(self) -> list[dict[str, Any]]:
        return [self.service]

    def list_pools(self) -> list[dict[str, Any]]:
        return self.pools

    def list_nodes(self) -> list[dict[str, Any]]:
        return []

    def list_profiles(self) -> list[dict[str, Any]]:
        return []

    def patch_status(
        self, kinds: Any, namespace: Any, name: str, status: Any, resource_version: Any = None
    ) -> None:
        from chipfit import kube

        if self.conflict:
            raise kube.ApiError("patch status", 409, "Conflict")
        self.writes.append((dict(status), resource_version))

    def post_event(self, *_: Any) -> None:
        pass


def test_status_writes_go_onto_the_version_read_and_only_when_something_changed(fleet):
    from chipfit import handlers, metrics

    services, pools = fleet
    body = services[0].model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["resourceVersion"] = "41"
    # What the fleet worker wrote last: Ready. The autoscaler must not put an older Ready back.
    ready = {"type": "Ready", "status": "True", "reason": "ReplicasReady", "message": "1/1 replicas ready",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    body["status"] = {"conditions": [ready]}
    cluster = _StatusCluster(
        body, [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in pools]
    )
    worker = handlers.Fleet(cluster=cluster, metrics=metrics.OperatorMetrics())  # type: ignore[arg-type]
    scaler = autoscaler.Autoscaler()
    autoscaler._apply_tick(scaler, worker, None, 0.0)
    ((written, version),) = cluster.writes
    assert version == "41"  # a precondition: the API server refuses it if the status moved since
    assert ready in written["conditions"] and any(c["type"] == "Autoscaling" for c in written["conditions"])
    # The next tick finds its own condition there: nothing to write.
    body["status"] = {"conditions": written["conditions"]}
    autoscaler._apply_tick(scaler, worker, None, 1.0)
    assert len(cluster.writes) == 1
    # Somebody wrote meanwhile (409): the tick leaves it for the next one instead of failing.
    body["status"] = {"conditions": [ready]}
    cluster.conflict = True
    autoscaler._apply_tick(scaler, worker, None, 2.0)
    assert len(cluster.writes) == 1


def test_decisions_solve_by_the_planners_rules(fleet):
    """One rule, one place: the autoscaler solves with its planner's SolveOptions (the operator gives it the
    fleet worker's), the policy setting only time, churn, surge and the on-demand floor. A planner that
    loads replicas to half their capacity makes the same observed rate need more replicas."""
    from placement.solver import inputs

    services, pools = fleet
    rate = services[0].spec.workload.requests_per_second * 20

    def replicas(scaler: autoscaler.Autoscaler) -> int:
        [report] = scaler.tick(services, pools, [], _answer(rate), 0.0)
        assert report.outcome is not None
        return sum(p.replicas for p in report.outcome.placements)

    default = replicas(autoscaler.Autoscaler())
    halved = replicas(
        autoscaler.Autoscaler(planner=planning.Planner(inputs.SolveOptions(max_utilization=0.5)))
    )
    assert halved >= 2 * default - 1 and halved > default, (default, halved)


def test_the_operator_gives_the_autoscaler_the_fleets_solve_rules():
    import argparse

    from chipfit import handlers
    from chipfit.commands import operator

    args = argparse.Namespace(
        prometheus_url="http://prometheus:9090", autoscaling_policy=[], autoscaling_rate_window=None
    )
    scaler = operator._autoscaler(args)
    assert scaler.planner.options == handlers.solve_options()
