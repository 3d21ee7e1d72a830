"""The fleet re-plan's fan-out: it reads the objects it manages from kopf's indexes (no LIST per service),
writes the services whose placement changed before the others, and leaves an unchanged fleet untouched.

The cluster here is a recorder: every API call the re-plan makes is kept in order, and a LIST of owned
objects fails the test (the index is there to replace it). The plan itself is the real one (Planner, MILP).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from chipfit import handlers, metrics, planning, render
from placement import candidates
from placement.solver import inputs, solve

NAMESPACE = "team"


class Store(list[Any]):
    """A kopf index store: the values one key holds."""


@dataclasses.dataclass
class RecordingCluster:
    """Applies, deletes, status patches and Events, in order; the objects applied are kept as live state."""

    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    objects: dict[tuple[str, str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def list_owned(self, namespace: str, selector: str) -> Any:
        raise AssertionError(f"the re-plan listed {selector} in {namespace} instead of reading the index")

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list pods", selector))
        return []

    def apply(self, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.calls.append(("apply", f"{obj['kind']}/{meta['name']}"))
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(dict(obj))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self.calls.append(("delete", f"{kind}/{name}"))
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def patch_status(self, kinds: Any, namespace: str | None, name: str, status: Mapping[str, Any]) -> None:
        self.calls.append(("status", f"{kinds[1]}/{name}"))
        merged = {**self.statuses.get(name, {}), **copy.deepcopy(dict(status))}
        self.statuses[name] = {k: v for k, v in merged.items() if v is not None}

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls.append(("event", f"{reason} {involved['metadata']['name']}"))


def _pool(name: str, accelerator: str, price: float) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "AcceleratorPool",
        "metadata": {"name": name, "generation": 1},
        "spec": {
            "accelerator": accelerator,
            "devicesPerNode": 8,
            "nodes": 1,
            "pricePerDeviceHour": price,
            "nodeSelector": {"chipfit.io/pool": name},
        },
    }


def _node(pool: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{pool}-0", "labels": {"chipfit.io/pool": pool}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _service(name: str, model: str, source: str, allowed: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "model": {"id": model, "source": source},
            "precisions": ["bf16"],
            "slo": {"ttftP99Ms": 3000, "itlP99Ms": 150},
            "workload": {
                "requestsPerSecond": 0.5,
                "promptTokens": {"mean": 500},
                "outputTokens": {"mean": 100},
                "maxContextTokens": 4096,
            },
            "replicas": {"min": 1, "max": 4},
            "placement": {"allowedPools": allowed, "spotAllowed": False},
        },
    }


@dataclasses.dataclass
class World:
    """Index contents the re-plan reads, rebuilt from what the recorder holds (as kopf's watches would)."""

    cluster: RecordingCluster
    services: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    nodes: list[dict[str, Any]]

    def indexes(self) -> dict[str, dict[Any, Store]]:
        services = []
        for body in self.services:
            live = copy.deepcopy(body)
            if body["metadata"]["name"] in self.cluster.statuses:
                live["status"] = copy.deepcopy(self.cluster.statuses[body["metadata"]["name"]])
            services.append(live)
        owned_deployments: dict[Any, Store] = {}
        owned_services: dict[Any, Store] = {}
        for (kind, namespace, _), obj in self.cluster.objects.items():
            body = copy.deepcopy(obj)
            if kind == "Deployment":
                # The kwok pods run: the Deployment is rolled out and ready.
                replicas = body["spec"]["replicas"]
                body["metadata"]["generation"] = 1
                body["status"] = {
                    "observedGeneration": 1,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                }
            target = owned_deployments if kind == "Deployment" else owned_services
            key = (namespace, body["metadata"]["labels"][render.LABEL_SERVICE])
            target.setdefault(key, Store()).append(body)

        def by_name(bodies: list[dict[str, Any]]) -> dict[Any, Store]:
            return {(b["metadata"].get("namespace"), b["metadata"]["name"]): Store([b]) for b in bodies}

        pools = [
            {
                **copy.deepcopy(p),
                "status": copy.deepcopy(self.cluster.statuses.get(p["metadata"]["name"], {})),
            }
            for p in self.pools
        ]
        return {
            "inferenceservice_index": by_name(services),
            "acceleratorpool_index": by_name(pools),
            "performanceprofile_index": {},
            "node_index": by_name(self.nodes),
            "owned_deployment_index": owned_deployments,
            "owned_service_index": owned_services,
        }


@pytest.fixture
def world() -> World:
    # "small" runs on the cheap L4 pool when it can, on the H100 pool otherwise; "wide" (a 70B model, on
    # several devices) only ever on the H100 pool.
    return World(
        cluster=RecordingCluster(),
        services=[
            _service("small", "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", ["l4", "h100"]),
            _service("wide", "llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", ["h100"]),
        ],
        pools=[_pool("l4", "l4", 0.81), _pool("h100", "h100", 6.0)],
        nodes=[_node("l4"), _node("h100")],
    )


def _replan(fleet: handlers.Fleet, world: World, *, full: bool = True) -> list[tuple[str, str]]:
    fleet.indexes = world.indexes()
    start = len(world.cluster.calls)
    view = fleet.view()
    assert view is not None and view.owned is not None
    fleet.replan(view, full=full)
    return world.cluster.calls[start:]


@pytest.mark.parametrize("full", [True, False], ids=["full", "repair"])
def test_replans_read_the_index_and_write_the_moved_service_first(world: World, full: bool) -> None:
    fleet = handlers.Fleet(cluster=world.cluster, metrics=metrics.OperatorMetrics())  # type: ignore[arg-type]
    first = _replan(fleet, world)
    assert ("status", "InferenceService/small") in first and ("status", "InferenceService/wide") in first
    pools = {
        name: {p["pool"] for p in world.cluster.statuses[name]["placement"]} for name in ("small", "wide")
    }
    assert pools == {"small": {"l4"}, "wide": {"h100"}}
    wide_replica_devices = max(p["tensorParallel"] for p in world.cluster.statuses["wide"]["placement"])
    assert wide_replica_devices > 1  # "wide" is the widest: before, it went first whatever changed

    # Everything the plan asked for runs now (the next re-plan says so: Ready), and a re-plan with nothing
    # changed makes no API call at all.
    assert {c for c in _replan(fleet, world) if c[0] != "status"} == set()
    assert _replan(fleet, world) == []

    # The L4 node is lost: "small" moves to the H100 pool. Its status is the first thing written.
    world.nodes = [n for n in world.nodes if n["metadata"]["name"] != "l4-0"]
    after = _replan(fleet, world, full=full)
    statuses = [target for call, target in after if call == "status" and target.startswith("Inference")]
    assert statuses and statuses[0] == "InferenceService/small"
    assert {p["pool"] for p in world.cluster.statuses["small"]["placement"]} == {"h100"}
    # The new placement is published before it is rolled out.
    applies = [i for i, c in enumerate(after) if c[0] == "apply" and c[1].startswith("Deployment/small-")]
    assert applies and after.index(("status", "InferenceService/small")) < applies[0]
    # "wide" did not move and nothing of it was written.
    assert not [c for c in after if c[1].endswith("/wide") or c[1].startswith("Deployment/wide")]
    assert not [c for c in after if "wide" in c[1]]


def test_a_capacity_change_pins_exactly_the_services_it_does_not_touch(world: World) -> None:
    fleet = handlers.Fleet(cluster=world.cluster, metrics=metrics.OperatorMetrics())  # type: ignore[arg-type]
    _replan(fleet, world)
    _replan(fleet, world)
    assert fleet.capacities is not None
    live = [handlers.parse_service(b) for b in _index_bodies(world, "inferenceservice_index")]
    same = dict(fleet.capacities)
    assert fleet.pinned_services(live, same) == {"team/small", "team/wide"}
    # The L4 pool lost its node: what runs there is placed anew, the rest stays.
    shrunk = {**same, "l4": dataclasses.replace(same["l4"], nodes_ready=0, devices_total=0)}
    assert fleet.pinned_services(live, shrunk) == {"team/wide"}
    gone = {name: c for name, c in same.items() if name != "h100"}
    assert fleet.pinned_services(live, gone) == {"team/small"}
    # More capacity moves nobody; a service whose spec changed since its status is never pinned.
    grown = {**same, "h100": dataclasses.replace(same["h100"], nodes_ready=2, devices_total=16)}
    assert fleet.pinned_services(live, grown) == {"team/small", "team/wide"}
    edited = [
        s.model_copy(update={"metadata": s.metadata.model_copy(update={"generation": 2})})
        if s.metadata.name == "wide"
        else s
        for s in live
    ]
    assert fleet.pinned_services(edited, same) == {"team/small"}
    # A fresh operator (no re-plan yet) pins nothing.
    fresh = handlers.Fleet(cluster=world.cluster, metrics=metrics.OperatorMetrics())  # type: ignore[arg-type]
    assert fresh.pinned_services(live, same) == frozenset()


def _index_bodies(world: World, name: str) -> list[dict[str, Any]]:
    return [body for store in world.indexes()[name].values() for body in store]


def test_pinning_offers_a_pinned_service_only_what_it_runs() -> None:
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("a", (1.0,)), inputs.ServiceDemand("b", (1.0,))),
        pools=(inputs.Pool("p", "l4", 8, 1, 1.0), inputs.Pool("q", "h100", 8, 1, 5.0)),
        candidates=tuple(
            inputs.Candidate(service, "aggregated", pool, acc, "bf16", 1, (1.0,), price)
            for service in ("a", "b")
            for pool, acc, price in (("p", "l4", 1.0), ("q", "h100", 5.0))
        ),
        current_replicas={inputs.CandidateKey("a", "aggregated", "q", "bf16", 1): 1},
    )
    cset = candidates.CandidateSet(problem=problem, specs={}, rejections=())
    pinned = planning.pin(cset, {"a", "b"})
    # "a" runs on q: only q is offered; "b" runs nothing yet: everything stays offered.
    assert sorted((c.service, c.pool) for c in pinned.problem.candidates) == [
        ("a", "q"),
        ("b", "p"),
        ("b", "q"),
    ]
    # "a" keeps its replica count too (its configuration's own bounds); "b" is sized by the solver as before.
    assert pinned.problem.replica_bounds == {inputs.CandidateKey("a", "aggregated", "q", "bf16", 1): (1, 1)}
    assert pinned.problem.services == problem.services
    assert planning.pin(cset, ()) is cset


def test_a_pinned_service_split_over_two_configurations_keeps_each_count() -> None:
    """The repair keeps 2 replicas on the dear pool and 1 on the cheap one, though the cheapest plan for the
    service's rate is 3 on the cheap pool (and the solver, free, would shift them there)."""
    split = {"p": 1, "q": 2}
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("a", (2.5,), min_replicas=1), inputs.ServiceDemand("b", (1.0,))),
        pools=(inputs.Pool("p", "l4", 8, 1, 1.0), inputs.Pool("q", "h100", 8, 1, 5.0)),
        candidates=tuple(
            inputs.Candidate(service, "aggregated", pool, acc, "bf16", 1, (1.0,), price)
            for service in ("a", "b")
            for pool, acc, price in (("p", "l4", 1.0), ("q", "h100", 5.0))
        ),
        current_replicas={
            inputs.CandidateKey("a", "aggregated", pool, "bf16", 1): n for pool, n in split.items()
        },
    )
    cset = candidates.CandidateSet(problem=problem, specs={}, rejections=())
    free = solve.solve(problem, inputs.SolveOptions(method="milp"))
    assert _replicas(free, "a") == {"p": 3}  # what the solver does unpinned
    pinned = solve.solve(planning.pin(cset, {"a"}).problem, inputs.SolveOptions(method="milp"))
    assert _replicas(pinned, "a") == split
    assert _replicas(pinned, "b") == {"p": 1}  # the unpinned service is still placed, cheapest


def test_pinning_leaves_counts_free_when_they_break_the_service_bounds() -> None:
    """Counts outside the service's own replica bounds (a role total above its ceiling) are not held."""
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("a", (1.0,), max_replicas=2),),
        pools=(inputs.Pool("p", "l4", 8, 1, 1.0), inputs.Pool("q", "h100", 8, 1, 5.0)),
        candidates=tuple(
            inputs.Candidate("a", "aggregated", pool, acc, "bf16", 1, (1.0,), price)
            for pool, acc, price in (("p", "l4", 1.0), ("q", "h100", 5.0))
        ),
        current_replicas={
            inputs.CandidateKey("a", "aggregated", "p", "bf16", 1): 2,
            inputs.CandidateKey("a", "aggregated", "q", "bf16", 1): 1,
        },
    )
    cset = candidates.CandidateSet(problem=problem, specs={}, rejections=())
    assert planning.pin(cset, {"a"}).problem.replica_bounds == {}


def _replicas(plan: Any, service: str) -> dict[str, int]:
    (sp,) = (sp for sp in plan.services if sp.service == service)
    return {a.pool: a.replicas for a in sp.assignments if a.replicas}


def test_a_repair_without_a_plan_in_its_short_limit_gets_the_whole_limit_before_a_fresh_solve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HiGHS's limit is wall time: on a loaded machine the repair's 5 s can pass with no incumbent. The repair
    is then tried again with the operator's whole limit (still pinned), not replaced by a fresh solve."""
    problem = inputs.FleetProblem(
        services=(inputs.ServiceDemand("a", (1.0,)), inputs.ServiceDemand("b", (1.0,))),
        pools=(inputs.Pool("p", "l4", 8, 1, 1.0), inputs.Pool("q", "h100", 8, 1, 5.0)),
        candidates=tuple(
            inputs.Candidate(service, "aggregated", pool, acc, "bf16", 1, (1.0,), price)
            for service in ("a", "b")
            for pool, acc, price in (("p", "l4", 1.0), ("q", "h100", 5.0))
        ),
        current_replicas={inputs.CandidateKey("a", "aggregated", "q", "bf16", 1): 1},
    )
    cset = candidates.CandidateSet(problem=problem, specs={}, rejections=())
    planner = planning.Planner(inputs.SolveOptions(time_limit_s=30.0))
    monkeypatch.setattr(planner, "build_inputs", lambda *_args: cset)
    monkeypatch.setattr(planning, "_finish", lambda _cset, plan, options, *_rest: (plan, options))
    real = solve.solve
    limits: list[float] = []

    def slow_machine(p: inputs.FleetProblem, options: inputs.SolveOptions) -> Any:
        limits.append(options.time_limit_s)
        if options.time_limit_s <= planning.REPAIR_TIME_LIMIT_S:
            raise inputs.SolverError("solver: HiGHS stopped without a solution (Time limit reached)")
        return real(p, options)

    monkeypatch.setattr(solve, "solve", slow_machine)
    plan, options = planner.plan([], [], pinned={"a"})
    assert limits == [planning.REPAIR_TIME_LIMIT_S, 30.0]
    assert options.method == "milp"
    assert _replicas(plan, "a") == {"q": 1}  # still the repair: "a" stays where it runs
    # Without a longer limit to give (the operator's own is as short), the error is the caller's to handle.
    short = planning.Planner(inputs.SolveOptions(time_limit_s=planning.REPAIR_TIME_LIMIT_S))
    monkeypatch.setattr(short, "build_inputs", lambda *_args: cset)
    with pytest.raises(inputs.SolverError):
        short.plan([], [], pinned={"a"})
