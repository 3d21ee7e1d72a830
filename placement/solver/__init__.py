"""The fleet placement solver. Entry point: `solve.solve(inputs.FleetProblem(...)) -> allocation.Plan`.

- inputs:      what a solve takes (pools, candidates, service demand, options), its errors and validation;
- allocation:  what a solve returns (assignments, service and pool allocations, Plan) and `assemble`, the
               one place a Plan is made (MILP, decomposition and placement.baselines all use it);
- colgen:      pruning of useless/dominated candidates and column generation with the full LP bound;
- formulation: the MILP in matrix form (`build`), every constraint block commented with its math;
- highs:       one HiGHS run through scipy.optimize.milp, with its status checked;
- stages:      the whole-fleet MILP with lexicographic priority stages, and `decode` into a Plan;
- decompose:   per-service decomposition with pool pricing for large fleets;
- solve:       the dispatch between them (derating, decomposition, column generation, MILP).
"""
