"""Handler-side pure pieces: plan -> outcomes, node change detection, relaxed minimums, body parsing."""

from __future__ import annotations

from typing import Any

import pytest

from chipfit import handlers
from placement.solver import allocation
from tests.unit.chipfit_builders import SERVICES


def assignment(
    role: str, pool: str, accelerator: str, tp: int, replicas: int, rps: float, utilization: float
) -> allocation.Assignment:
    return allocation.Assignment(
        service="ml-serving/rag-70b",
        role=role,  # type: ignore[arg-type]
        pool=pool,
        accelerator=accelerator,
        precision="fp8",
        tp=tp,
        replicas=replicas,
        price_per_hour=1.0,
        bucket_rps=(rps,),
        utilization=utilization,
        ttft_p99_ms=None,
        itl_p99_ms=None,
        engine="vllm",
        source="model",
    )


def service_plan(*assignments: allocation.Assignment, status: str = "served") -> allocation.ServiceAllocation:
    return allocation.ServiceAllocation(
        service="ml-serving/rag-70b",
        mode="disaggregated",
        status=status,  # type: ignore[arg-type]
        assignments=assignments,
        price_per_hour=44.73612,
        demand_rps=2.0,
        served_rps=2.0,
        price_per_million_output_tokens=20.72751,
        ttft_p99_ms=2999.99999934,
        itl_p99_ms=73.248438,
        reason=None,
    )


def test_outcome_merges_assignments_and_rounds_predictions() -> None:
    sp = service_plan(
        assignment("prefill", "h100-p5", "h100", 4, 1, 1.0, 0.5),
        assignment("prefill", "h100-p5", "h100", 4, 1, 1.0, 0.5),
        assignment("decode", "h200-p5e", "h200", 1, 1, 2.0, 0.8),
        assignment("decode", "l4-g6", "l4", 1, 0, 0.0, 0.0),
    )
    outcome = handlers.outcome_of(sp)
    keys = [(p.role, p.pool, p.tensor_parallel, p.replicas) for p in outcome.placements]
    assert keys == [("decode", "h200-p5e", 1, 1), ("prefill", "h100-p5", 4, 2)]
    assert outcome.prediction is not None
    assert outcome.prediction.ttft_p99_ms == 3000.0 and outcome.prediction.itl_p99_ms == 73.2
    # Prefill sustains 2 / 0.5 = 4 req/s, decode 2 / 0.8 = 2.5: the split service does the smaller.
    assert outcome.prediction.max_requests_per_second == 2.5
    assert outcome.served == "served"
    # Metrics series per (role, chip, pool): the plan's $/h and the rate routed there.
    assert outcome.cost_dollars_per_hour[("prefill", "h100", "h100-p5")] == 2.0
    assert outcome.routed_requests_per_second[("decode", "h200", "h200-p5e")] == 2.0
    assert ("decode", "l4", "l4-g6") not in outcome.cost_dollars_per_hour


def node(
    name: str, ready: bool = True, gpus: str = "8", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {"pool": "a"}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": gpus},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            # kwok and kubelets bump heartbeat times constantly; they must not trigger re-plans.
            "heartbeat": name,
        },
    }


def fleet() -> handlers.Fleet:
    return handlers.Fleet(cluster=None, metrics=None)  # type: ignore[arg-type]


def test_only_capacity_relevant_node_changes_request_a_replan() -> None:
    f = fleet()
    assert f.node_changed(node("n1"), deleted=False)
    f.replan_requested = False
    heartbeat = node("n1")
    heartbeat["status"]["conditions"][0]["lastHeartbeatTime"] = "later"
    assert not f.node_changed(heartbeat, deleted=False)
    assert not f.replan_requested
    assert f.node_changed(node("n1", ready=False), deleted=False)
    assert f.node_changed(node("n1", gpus="4"), deleted=False)
    assert f.node_changed(node("n1", gpus="4", labels={"pool": "b"}), deleted=False)
    tainted = node("n1", gpus="4", labels={"pool": "b"})
    tainted["spec"]["taints"] = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]
    assert f.node_changed(tainted, deleted=False)
    assert f.node_changed(node("n1"), deleted=True)
    assert not f.node_changed(node("n1"), deleted=True)
    assert f.replan_requested


def test_relaxed_minimum_keeps_everything_else() -> None:
    chat = SERVICES["chat-8b"]
    relaxed = handlers._without_minimum(chat)
    assert relaxed.spec.replicas is not None and relaxed.spec.replicas.min == 0
    assert relaxed.spec.replicas.max == chat.spec.replicas.max  # type: ignore[union-attr]
    assert chat.spec.replicas is not None and chat.spec.replicas.min == 1  # the input is not mutated
    assert relaxed.spec.slo == chat.spec.slo


def test_parse_service_tolerates_unknown_status_fields() -> None:
    body = SERVICES["chat-8b"].model_dump(mode="json", by_alias=True, exclude_none=True)
    body["status"] = {"kopf": {"progress": {}}, "observedGeneration": 1}
    service = handlers.parse_service(body)
    assert service.metadata.name == "chat-8b"
    assert service.status is None


def test_invalid_spec_is_found_with_its_field() -> None:
    chat = SERVICES["chat-8b"].model_copy(deep=True)
    chat.spec.workload.max_context_tokens = 10_000_000
    problem = handlers.first_problem(chat, None)
    assert problem is not None and problem.field == "spec.workload.maxContextTokens"
    assert handlers.first_problem(SERVICES["chat-8b"], None) is None


def test_operator_command_rejects_a_missing_kubeconfig_in_one_line(tmp_path: Any, capsys: Any) -> None:
    from chipfit import cli

    missing = tmp_path / "nope.yaml"
    assert cli.main(["operator", "--standalone", "--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"--kubeconfig: no such file {missing}"]


def test_operator_command_rejects_a_broken_kubeconfig_in_one_line(
    tmp_path: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chipfit import cli

    # The command exports KUBECONFIG for kopf; monkeypatch restores the test process's value afterwards.
    monkeypatch.setenv("KUBECONFIG", "unused")
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    assert cli.main(["operator", "--standalone", "--kubeconfig", str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kubeconfig: ")
