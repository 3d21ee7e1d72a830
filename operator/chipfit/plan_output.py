"""`chipfit plan -o json|yaml`: the plan as a typed, documented, camelCase document.

These types are the contract of the machine-readable output: field names, units and rounding are chosen
here, not inherited from the solver's internals, and `schema()` (committed as
docs/plan-output.schema.json, checked fresh by a test) is generated from them. Add fields freely;
renaming or removing one is a breaking change of the CLI.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from chipfit import planning
from placement import baselines

API_VERSION: Final = "chipfit.io/v1alpha1"
KIND: Final = "FleetPlan"
# Rounding of the output: cents of a cent for money, 1/10 000 req/s, 0.1 ms; more digits are solver noise.
DOLLAR_DECIMALS: Final = 4
RATE_DECIMALS: Final = 4
MS_DECIMALS: Final = 1
SHARE_DECIMALS: Final = 4
SECONDS_DECIMALS: Final = 3


class _Out(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="forbid", frozen=True
    )


Dollars = Annotated[float, Field(ge=0, description="US dollars, rounded to 4 decimals.")]
Rate = Annotated[float, Field(ge=0, description="Requests per second, rounded to 4 decimals.")]
Ms = Annotated[float, Field(ge=0, description="Milliseconds, rounded to 0.1.")]


class Assignment(_Out):
    """Replicas of one service role in one configuration on one pool."""

    role: Literal["aggregated", "prefill", "decode"]
    pool: str
    accelerator: str
    precision: str
    tensor_parallel: Annotated[int, Field(ge=1)]
    replicas: Annotated[int, Field(ge=0)]
    engine: str
    dollars_per_hour: Dollars
    requests_per_second: Annotated[Rate, Field(description="Request rate routed to these replicas.")]
    utilization: Annotated[
        float, Field(ge=0, description="Share of the replicas' SLO-bounded capacity in use, 0-1.")
    ]
    ttft_p99_ms: Annotated[Ms | None, Field(description="Predicted p99 at SLO-bounded capacity.")] = None
    itl_p99_ms: Ms | None = None
    capacity_source: Annotated[
        str, Field(description="Where the capacity figure came from (model, profile, ...).")
    ]


class ServicePlan(_Out):
    """One InferenceService's part of the plan."""

    service: Annotated[str, Field(description="namespace/name")]
    mode: Literal["aggregated", "disaggregated", "none"]
    status: Annotated[
        Literal["served", "partial", "unserved"], Field(description="How much of the demand is served.")
    ]
    demand_requests_per_second: Rate
    served_requests_per_second: Rate
    dollars_per_hour: Dollars
    dollars_per_million_output_tokens: Dollars | None = None
    ttft_p99_ms: Ms | None = None
    itl_p99_ms: Ms | None = None
    reason: Annotated[str | None, Field(description="Why demand is unserved; null when served.")] = None
    assignments: list[Assignment]


class PoolUsage(_Out):
    """Devices one pool gives the plan."""

    pool: str
    accelerator: str
    devices_used: Annotated[int, Field(ge=0)]
    devices_total: Annotated[int, Field(ge=0)]
    dollars_per_hour: Dollars


class Baseline(_Out):
    """The cheapest plan using a single accelerator type, for comparison."""

    kind: Annotated[
        str,
        Field(
            description="baseline: fleet (one type for everything, in the pools as sized), per-service "
            "(each service its own type, in the pools), none (not computed or none fits); "
            "baselineSizedToOrder (pool sizes ignored): fleet-sized, per-service-sized or none."
        ),
    ]
    accelerator: str | None = None
    dollars_per_hour: Dollars | None = None
    dollars_per_hour_by_type: dict[str, Dollars | None]
    per_service: Annotated[dict[str, str], Field(description="per-service kind: the type of each service.")]
    savings: Annotated[
        float | None,
        Field(description="Share of the baseline's $/h the plan saves (0.25 = 25%); null without one."),
    ] = None


class RunnerUp(_Out):
    """A configuration the service did not get, and why."""

    accelerator: str
    pool: str
    tensor_parallel: int
    precision: str
    dollars_per_hour: Dollars | None = None
    misses: str | None = None


class Explanation(_Out):
    """Why a service landed where it did."""

    service: str
    summary: str
    runners_up: list[RunnerUp]


class Totals(_Out):
    """The fleet as a whole."""

    dollars_per_hour: Dollars
    demand_requests_per_second: Rate
    served_requests_per_second: Rate
    all_served: Annotated[bool, Field(description="Every service's demand served (exit code 0).")]


class Solver(_Out):
    """How the plan was found."""

    status: Literal["optimal", "feasible"]
    gap: Annotated[
        float | None, Field(ge=0, description="Relative gap to the solver's bound, 0-1; null: no bound.")
    ]
    bound_source: Annotated[
        str,
        Field(
            description=(
                "What bounds the gap: milp, full-lp, restricted-milp, per-service, dantzig-wolfe, "
                "lagrangian or none."
            )
        ),
    ]
    seconds: Annotated[float, Field(ge=0)]
    stages: Annotated[int, Field(ge=0)]


class FleetPlan(_Out):
    """`chipfit plan -o json|yaml`."""

    api_version: Literal["chipfit.io/v1alpha1"] = API_VERSION
    kind: Literal["FleetPlan"] = KIND
    totals: Totals
    solver: Solver
    services: list[ServicePlan]
    pools: list[PoolUsage]
    baseline: Annotated[
        Baseline,
        Field(description="Headline comparison: single-type plans under the plan's own pool capacity."),
    ]
    baseline_sized_to_order: Annotated[
        Baseline, Field(description="The same with pool sizes ignored (a single-type fleet sized to order).")
    ]
    explanations: list[Explanation]


def _r(value: float | None, digits: int) -> float | None:
    """Rounded; None for None, NaN and infinities (JSON has none of them)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def _d(value: float, digits: int) -> float:
    out = _r(value, digits)
    return 0.0 if out is None else out


def from_result(result: planning.FleetPlan) -> FleetPlan:
    """The typed output of a solved fleet plan."""
    plan = result.plan
    services = [
        ServicePlan(
            service=sp.service,
            mode=sp.mode,
            status=sp.status,
            demand_requests_per_second=_d(sp.demand_rps, RATE_DECIMALS),
            served_requests_per_second=_d(sp.served_rps, RATE_DECIMALS),
            dollars_per_hour=_d(sp.price_per_hour, DOLLAR_DECIMALS),
            dollars_per_million_output_tokens=_r(sp.price_per_million_output_tokens, DOLLAR_DECIMALS),
            ttft_p99_ms=_r(sp.ttft_p99_ms, MS_DECIMALS),
            itl_p99_ms=_r(sp.itl_p99_ms, MS_DECIMALS),
            reason=sp.reason,
            assignments=[
                Assignment(
                    role=a.role,
                    pool=a.pool,
                    accelerator=a.accelerator,
                    precision=a.precision,
                    tensor_parallel=a.tp,
                    replicas=a.replicas,
                    engine=a.engine,
                    dollars_per_hour=_d(a.price_per_hour, DOLLAR_DECIMALS),
                    requests_per_second=_d(sum(a.bucket_rps), RATE_DECIMALS),
                    utilization=_d(a.utilization, SHARE_DECIMALS),
                    ttft_p99_ms=_r(a.ttft_p99_ms, MS_DECIMALS),
                    itl_p99_ms=_r(a.itl_p99_ms, MS_DECIMALS),
                    capacity_source=a.source,
                )
                for a in sp.assignments
            ],
        )
        for sp in plan.services
    ]
    baseline = _baseline(result.single_type, result.single_type_kind, result.savings_vs_single_type)
    sized = _baseline(
        result.single_type_sized, result.single_type_sized_kind, result.savings_vs_single_type_sized
    )
    demand = sum(s.demand_rps for s in plan.services)
    served = sum(s.served_rps for s in plan.services)
    return FleetPlan(
        totals=Totals(
            dollars_per_hour=_d(plan.price_per_hour, DOLLAR_DECIMALS),
            demand_requests_per_second=_d(demand, RATE_DECIMALS),
            served_requests_per_second=_d(served, RATE_DECIMALS),
            all_served=all(s.status == "served" for s in plan.services),
        ),
        solver=Solver(
            status=plan.status,
            gap=_r(plan.gap, SHARE_DECIMALS),
            bound_source=plan.bound_source,
            seconds=_d(plan.solve_seconds, SECONDS_DECIMALS),
            stages=plan.stages,
        ),
        services=services,
        pools=[
            PoolUsage(
                pool=p.pool,
                accelerator=p.accelerator,
                devices_used=p.devices_used,
                devices_total=p.devices_total,
                dollars_per_hour=_d(p.price_per_hour, DOLLAR_DECIMALS),
            )
            for p in plan.pools
        ],
        baseline=baseline,
        baseline_sized_to_order=sized,
        explanations=[
            Explanation(
                service=e.service,
                summary=e.summary,
                runners_up=[
                    RunnerUp(
                        accelerator=r.accelerator,
                        pool=r.pool,
                        tensor_parallel=r.tp,
                        precision=r.precision,
                        dollars_per_hour=_r(r.price_per_hour, DOLLAR_DECIMALS),
                        misses=r.misses,
                    )
                    for r in e.runners_up
                ],
            )
            for e in result.explanations
        ],
    )


def _baseline(single: baselines.SingleTypeResult, kind: str, savings: float | None) -> Baseline:
    return Baseline(
        kind=kind,
        accelerator=single.accelerator,
        dollars_per_hour=_r(single.plan.price_per_hour, DOLLAR_DECIMALS) if single.plan else None,
        dollars_per_hour_by_type={
            k: _r(v, DOLLAR_DECIMALS) for k, v in sorted(single.price_per_hour_by_type.items())
        },
        per_service=dict(sorted(single.per_service.items())),
        savings=_r(savings, SHARE_DECIMALS),
    )


def to_data(output: FleetPlan) -> dict[str, Any]:
    """Plain JSON data with camelCase keys (nulls kept: every documented field is always present)."""
    return output.model_dump(mode="json", by_alias=True)


def schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the output, generated from the types."""
    out = FleetPlan.model_json_schema(by_alias=True, mode="serialization")
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["$id"] = "https://chipfit.io/schemas/plan-output.schema.json"
    return out


def schema_json() -> str:
    """The schema as committed in docs/plan-output.schema.json."""
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(schema_json(), end="")
