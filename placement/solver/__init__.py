"""The fleet placement solver: inputs, MILP formulation, column generation, priority stages, decomposition.

Entry point: `solve.solve(inputs.FleetProblem(...))` returns an `allocation.Plan` (docs/solver.md).
"""
