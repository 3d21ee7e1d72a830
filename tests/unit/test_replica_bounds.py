"""FleetProblem.replica_bounds: a configuration's own least and most replicas, held by the MILP.

The operator's repair uses them to keep what a capacity loss did not touch at the counts it runs
(planning.pin); here the solver's side: validation names the field, and the bounds bind.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from placement.solver import decompose, inputs, solve


def _problem(**bounds: tuple[int, int | None]) -> inputs.FleetProblem:
    """One service of 2.5 req/s; a replica carries 1 req/s on the cheap pool p or the dear pool q."""
    return inputs.FleetProblem(
        services=(inputs.ServiceDemand("a", (2.5,)),),
        pools=(inputs.Pool("p", "l4", 4, 1, 1.0), inputs.Pool("q", "h100", 4, 1, 5.0)),
        candidates=tuple(
            inputs.Candidate("a", "aggregated", pool, acc, "bf16", 1, (1.0,), price)
            for pool, acc, price in (("p", "l4", 1.0), ("q", "h100", 5.0))
        ),
        replica_bounds={
            inputs.CandidateKey("a", "aggregated", pool, "bf16", 1): b for pool, b in bounds.items()
        },
    )


def _replicas(plan: object) -> dict[str, int]:
    (sp,) = plan.services  # type: ignore[attr-defined]
    return {a.pool: a.replicas for a in sp.assignments if a.replicas}


MILP = inputs.SolveOptions(method="milp")


def test_without_bounds_the_cheap_pool_takes_everything() -> None:
    assert _replicas(solve.solve(_problem(), MILP)) == {"p": 3}


def test_a_least_and_a_most_bind() -> None:
    # Two must stay on the dear pool: one more on the cheap pool carries the rest.
    assert _replicas(solve.solve(_problem(q=(2, 2)), MILP)) == {"p": 1, "q": 2}
    # At most two on the cheap pool: the rest goes to the dear one.
    assert _replicas(solve.solve(_problem(p=(0, 2)), MILP)) == {"p": 2, "q": 1}
    # A least above the traffic's need is still held (nothing is resized).
    assert _replicas(solve.solve(_problem(p=(4, None)), MILP)) == {"p": 4}


def test_a_least_beyond_the_pool_is_infeasible() -> None:
    with pytest.raises(inputs.InfeasibleError):
        solve.solve(_problem(p=(5, 5)), MILP)


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ((-1, None), "the least must be >= 0"),
        ((3, 2), "the most (2) is below the least (3)"),
    ],
)
def test_malformed_bounds_name_the_field(bounds: tuple[int, int | None], message: str) -> None:
    with pytest.raises(
        inputs.InvalidProblemError,
        match=r"replica_bounds\[.*\]: " + re.escape(message),
    ):
        solve.solve(_problem(p=bounds), MILP)


def test_a_least_on_no_candidate_is_refused() -> None:
    problem = _problem()
    ghost = inputs.CandidateKey("a", "aggregated", "p", "fp8", 1)
    with pytest.raises(inputs.InvalidProblemError, match=r"replica_bounds.*no candidate"):
        solve.solve(dataclasses.replace(problem, replica_bounds={ghost: (1, 1)}), MILP)


def test_bounds_keep_the_problem_out_of_the_decomposition() -> None:
    """The per-service decomposition does not know per-configuration bounds: it must not take them."""
    assert decompose.decomposable(_problem(), inputs.SolveOptions())
    assert not decompose.decomposable(_problem(q=(2, 2)), inputs.SolveOptions())
