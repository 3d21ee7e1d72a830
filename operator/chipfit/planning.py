"""Typed API objects -> placement inputs -> a fleet plan. Pure (no I/O): the CLI and the operator share it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Final

from chipfit import rules
from chipfit.api import v1alpha1
from chipfit.profiling import calibrate
from placement import baselines, candidates, catalog, explain, perf, profile_fit, profiles, workload
from placement.solver import allocation, inputs, solve

logger = logging.getLogger("chipfit.operator")


class PlanningError(ValueError):
    """An object cannot be turned into a placement input; the message names the object and field."""


def service_id(service: v1alpha1.InferenceService) -> str:
    """`namespace/name`, the id a service has in the plan."""
    ns = service.metadata.namespace or "default"
    return f"{ns}/{service.metadata.name}"


def pool_accelerator(pool: v1alpha1.AcceleratorPool) -> catalog.Accelerator:
    """The chip a pool runs: its inline acceleratorSpec when given, else the catalog's entry for the id."""
    spec = pool.spec
    name = pool.metadata.name
    if spec.accelerator_spec is None:
        try:
            return catalog.get_accelerator(spec.accelerator)
        except catalog.UnknownIdError as error:
            raise PlanningError(f"AcceleratorPool {name}: spec.accelerator: {error}") from None
    parent_id = spec.accelerator.split("/", 1)[0]
    is_slice = parent_id != spec.accelerator
    try:
        parent = spec.accelerator_spec.to_catalog(parent_id, None if is_slice else spec.price_per_device_hour)
    except catalog.SpecError as error:
        raise PlanningError(f"AcceleratorPool {name}: spec.acceleratorSpec: {error}") from None
    try:
        return catalog.resolve_accelerator(spec.accelerator, parent)
    except catalog.UnknownIdError as error:
        raise PlanningError(f"AcceleratorPool {name}: spec.acceleratorSpec.partitions: {error}") from None


def fleet_accelerators(pools: Sequence[v1alpha1.AcceleratorPool]) -> dict[str, catalog.Accelerator]:
    """Chips the pools declare by their specs, by accelerator id (catalog chips are not listed).

    One id is one chip in a fleet: pools naming the same id must agree on its spec (a pool without a spec
    means the catalog's), else PlanningError names the pools.
    """
    declared: dict[str, tuple[str, catalog.Accelerator | None]] = {}
    for pool in sorted(pools, key=lambda p: p.metadata.name):
        chip = pool_accelerator(pool) if pool.spec.accelerator_spec is not None else None
        seen = declared.setdefault(pool.spec.accelerator, (pool.metadata.name, chip))
        if _physics(seen[1]) != _physics(chip):
            raise PlanningError(
                f"AcceleratorPool {pool.metadata.name}: spec.acceleratorSpec: differs from the "
                f"{pool.spec.accelerator} of pool {seen[0]}; one accelerator id is one chip in a fleet"
            )
    return {acc_id: chip for acc_id, (_, chip) in declared.items() if chip is not None}


def _physics(chip: catalog.Accelerator | None) -> tuple[object, ...] | None:
    """What the performance model reads of a chip (prices and label text aside)."""
    if chip is None:
        return None
    return (
        chip.vendor,
        chip.memory_bytes,
        chip.mem_bandwidth_bytes_per_s,
        tuple(sorted(chip.dense_flops_per_s.items())),
        chip.interconnect_bytes_per_s,
        chip.precisions,
        chip.max_tp,
    )


def to_pool(pool: v1alpha1.AcceleratorPool) -> inputs.Pool:
    """Planning capacity is nodes x devicesPerNode; price is the pool's override or the catalog default."""
    spec = pool.spec
    try:
        price = rules.price_per_device_hour(spec)
    except rules.RuleError as error:
        raise PlanningError(f"AcceleratorPool {pool.metadata.name}: {error}") from error
    return inputs.Pool(
        id=pool.metadata.name,
        accelerator=spec.accelerator,
        devices_per_node=spec.devices_per_node,
        nodes=spec.nodes,
        price_per_device_hour=price,
        spot=spec.spot,
    )


def _model(ref: v1alpha1.ModelRef) -> tuple[str, catalog.ModelArch | None]:
    """Model id for profiles and the performance model, plus the inline architecture if any.

    The source is resolved too: a model the engine could not load is not a model to price.
    """
    rules.model_source(ref)
    arch = rules.model_arch(ref)
    return arch.id, (None if ref.id is not None else arch)


def to_workload(wl: v1alpha1.Workload) -> workload.BucketedWorkload:
    """Lognormal prompt and output lengths from mean and p99 (no p99: every request is the mean)."""
    return workload.from_mean_p99(
        wl.requests_per_second,
        wl.prompt_tokens.mean,
        rules.tokens_p99(wl.prompt_tokens),
        wl.output_tokens.mean,
        rules.tokens_p99(wl.output_tokens),
        max_context_tokens=wl.max_context_tokens,
    )


def max_model_len(service: v1alpha1.InferenceService) -> int:
    """Longest prompt + output the engine admits (chipfit.rules.max_model_len_tokens: one rule)."""
    return rules.max_model_len_tokens(service.spec)


def to_spec(service: v1alpha1.InferenceService) -> candidates.ServiceSpec:
    """The placement layer's view of one InferenceService."""
    spec = service.spec
    sid = service_id(service)
    try:
        model, arch = _model(spec.model)
    except rules.RuleError as error:
        raise PlanningError(f"InferenceService {sid}: {error}") from error
    placement = spec.placement or v1alpha1.PlacementConstraints()
    replicas = spec.replicas or v1alpha1.Replicas()
    try:
        wl = to_workload(spec.workload)
    except workload.WorkloadError as error:
        raise PlanningError(f"InferenceService {sid}: spec.workload.{error}") from error
    return candidates.ServiceSpec(
        id=sid,
        model=model,
        model_arch=arch,
        precisions=tuple(spec.precisions),
        ttft_p99_ms=spec.slo.ttft_p99_ms,
        itl_p99_ms=spec.slo.itl_p99_ms,
        workload=wl,
        engine=spec.engine,
        engine_version=spec.engine_version,
        own_image=bool(spec.overrides is not None and spec.overrides.image),
        serving=spec.serving,
        min_replicas=replicas.min,
        max_replicas=replicas.max,
        priority=placement.priority,
        max_dollars_per_hour=spec.budget.max_dollars_per_hour if spec.budget else None,
        allowed_accelerators=frozenset(placement.allowed_accelerators)
        if placement.allowed_accelerators is not None
        else None,
        excluded_accelerators=frozenset(placement.excluded_accelerators or ()),
        allowed_pools=frozenset(placement.allowed_pools) if placement.allowed_pools is not None else None,
        excluded_pools=frozenset(placement.excluded_pools or ()),
        spot_allowed=placement.spot_allowed,
        max_model_len=max_model_len(service),
        prompt_mean_tokens=spec.workload.prompt_tokens.mean,
        output_mean_tokens=spec.workload.output_tokens.mean,
    )


def to_profiles(items: Sequence[v1alpha1.PerformanceProfile]) -> list[profiles.BucketProfile]:
    """Bucket-table profiles (point profiles calibrate the performance model instead)."""
    out = []
    for item in items:
        spec = item.spec
        table = spec.bucket_table
        if table is None:
            continue
        try:
            out.append(
                profiles.BucketProfile(
                    model=spec.model,
                    accelerator=spec.accelerator,
                    precision=spec.precision,
                    tp=spec.tensor_parallel,
                    prompt_edges_tokens=(0, *table.prompt_token_buckets),
                    output_edges_tokens=(0, *table.output_token_buckets),
                    max_rps=tuple(tuple(row) for row in table.max_requests_per_second),
                    engine=spec.engine,
                    engine_version=spec.engine_version,
                    ttft_p99_ms=table.slo.ttft_p99_ms,
                    itl_p99_ms=table.slo.itl_p99_ms,
                    source=f"PerformanceProfile {item.metadata.name}",
                )
            )
        except profiles.ProfileError as error:
            raise PlanningError(
                f"PerformanceProfile {item.metadata.name}: spec.bucketTable: {error}"
            ) from error
    return out


def to_calibrations(items: Sequence[v1alpha1.PerformanceProfile]) -> list[profile_fit.Calibration]:
    """Calibrations of the performance model from point profiles (bucket tables answer capacity directly).

    Profiles of chips outside the catalog are left out: no pool here can name them.
    """
    usable = [p for p in items if p.spec.points and p.spec.accelerator in catalog.ACCELERATORS]
    try:
        return list(calibrate.calibrations(usable).values())
    except (profile_fit.CalibrationError, catalog.UnknownIdError, ValueError) as error:
        raise PlanningError(f"PerformanceProfile calibration: {error}") from error


def model_oracle(calibrations: Sequence[profile_fit.Calibration]) -> candidates.CapacityOracle:
    """The performance model, calibrated on the chips and engines that have point profiles."""
    if not calibrations:
        return candidates.perf_oracle
    return profile_fit.CalibratedOracle(calibrations, candidates.perf_oracle)


def current_replicas(services: Sequence[v1alpha1.InferenceService]) -> dict[inputs.CandidateKey, int]:
    """What runs now, from each service's status.placement (the stability penalty's reference)."""
    out: dict[inputs.CandidateKey, int] = {}
    for service in services:
        placed = service.status.placement if service.status else None
        for p in placed or ():
            key = inputs.CandidateKey(service_id(service), p.role, p.pool, p.precision, p.tensor_parallel)
            out[key] = out.get(key, 0) + p.replicas
    return out


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    """A solved plan with what explains it: candidates, the best single-type baseline, explanations."""

    candidates: candidates.CandidateSet
    plan: allocation.Plan
    single_type: baselines.SingleTypeResult
    explanations: tuple[explain.Explanation, ...]
    # How the headline baseline was found, always in the pools as sized (the plan's own capacity): "fleet"
    # (one type for everything), "per-service" (each service its own type) or "none" (not computed, or no
    # single-type plan fits the pools).
    single_type_kind: str = "fleet"
    # The same comparison with pool sizes ignored (a single-type fleet sized to order), reported beside
    # the headline and labelled: "fleet-sized", "per-service-sized" or "none".
    single_type_sized: baselines.SingleTypeResult = dataclasses.field(
        default_factory=lambda: baselines.SingleTypeResult(None, None, {})
    )
    single_type_sized_kind: str = "none"

    @property
    def savings_vs_single_type(self) -> float | None:
        """Fraction of $/h saved against the best single-type plan in the same pools (None: none fits)."""
        return _savings(self.plan, self.single_type)

    @property
    def savings_vs_single_type_sized(self) -> float | None:
        """Fraction of $/h saved against the best single-type fleet sized to order (pool sizes ignored)."""
        return _savings(self.plan, self.single_type_sized)


def _savings(plan: allocation.Plan, baseline: baselines.SingleTypeResult) -> float | None:
    """1 - plan $/h / baseline $/h (None without a baseline plan)."""
    if baseline.plan is None or baseline.plan.price_per_hour <= 0.0:
        return None
    return 1.0 - plan.price_per_hour / baseline.plan.price_per_hour


def build_inputs(
    services: Sequence[v1alpha1.InferenceService],
    pools: Sequence[v1alpha1.AcceleratorPool],
    performance_profiles: Sequence[v1alpha1.PerformanceProfile] = (),
    *,
    oracle: candidates.CapacityOracle | None = None,
    headroom: bool = True,
) -> candidates.CandidateSet:
    """Candidates for every service on every pool, capacity from profiles first, then the perf model.

    `headroom`: derate capacity predicted without calibration (placement.trust; on by default).
    """
    table = to_profiles(performance_profiles)
    calibrated = model_oracle(to_calibrations(performance_profiles))
    capacity = oracle if oracle is not None else candidates.profile_oracle(table, fallback=calibrated)
    return candidates.build(
        [to_spec(s) for s in services],
        [to_pool(p) for p in pools],
        oracle=capacity,
        current_replicas=current_replicas(services),
        accelerators=fleet_accelerators(pools),
        headroom=headroom,
    )


def plan_fleet(
    services: Sequence[v1alpha1.InferenceService],
    pools: Sequence[v1alpha1.AcceleratorPool],
    performance_profiles: Sequence[v1alpha1.PerformanceProfile] = (),
    *,
    options: inputs.SolveOptions | None = None,
    oracle: candidates.CapacityOracle | None = None,
    progress: Callable[[str], None] | None = None,
    with_baseline: bool = True,
    headroom: bool = True,
) -> FleetPlan:
    """The cheapest plan for the fleet, its best single-type baseline and the explanations.

    `progress` is called with a short label before each phase (the CLI drives its progress bar with it).
    `with_baseline=False` skips the single-type baselines (the operator's reconcile loop needs only the
    plan).
    Raises PlanningError for inputs the API schema cannot catch, inputs.PlacementError when no plan exists.
    """
    step = progress or (lambda _label: None)
    step("predicting capacity")
    cset = build_inputs(services, pools, performance_profiles, oracle=oracle, headroom=headroom)
    step("solving the fleet MILP")
    plan = solve.solve(cset.problem, options)
    return _finish(cset, plan, options, with_baseline, step)


def _finish(
    cset: candidates.CandidateSet,
    plan: allocation.Plan,
    options: inputs.SolveOptions | None,
    with_baseline: bool,
    step: Callable[[str], None],
) -> FleetPlan:
    """The plan with its baselines (when asked) and explanations."""
    kind, sized_kind = "none", "none"
    single = sized = baselines.SingleTypeResult(None, None, {})
    if with_baseline:
        step("solving the single-type baselines")
        # Headline: single-type plans under the same pool capacity as the plan (like with like).
        single, kind = baselines.best_single_type(cset.problem, options, reference=plan), "fleet"
        if single.plan is None:
            single = baselines.best_single_type_per_service(cset.problem, options, reference=plan)
            kind = "per-service" if single.plan is not None else "none"
        # Beside it, labelled: the same with pool sizes ignored (what a single-type fleet sized to order
        # would cost).
        grown = baselines.uncapped(cset.problem)
        sized, sized_kind = baselines.best_single_type(grown, options, reference=plan), "fleet-sized"
        if sized.plan is None:
            sized = baselines.best_single_type_per_service(
                cset.problem, options, reference=plan, sized_to_order=True
            )
            sized_kind = "per-service-sized" if sized.plan is not None else "none"
    step("explaining")
    return FleetPlan(
        cset,
        plan,
        single,
        explain.explain(cset, plan),
        kind,
        single_type_sized=sized,
        single_type_sized_kind=sized_kind,
    )


# A repair's MILP (most services pinned) returns its incumbent after this long: on a 300-service fleet that
# lost a 56-service pool it had found the plan it still held at 10 s within 5 s (REPORT_solver.md), and
# the operator must re-place a lost pool's services within seconds.
REPAIR_TIME_LIMIT_S: Final = 5.0


def pin(cset: candidates.CandidateSet, pinned: Collection[str]) -> candidates.CandidateSet:
    """The candidate set with each pinned service offered only the configurations it runs now.

    The operator's repair after capacity loss: the services the loss did not touch stay where they run, at
    the replica count each of their configurations runs (FleetProblem.replica_bounds), and only the others
    are placed anew, in what is left; the MILP is then small, and nothing untouched moves. A pinned service
    that runs no configuration still offered (none placed yet, or its candidates changed) keeps all of
    them; one whose running counts per role fall outside its replica bounds keeps its configurations but
    may resize them.
    """
    if not pinned:
        return cset
    problem = cset.problem
    running = {key: replicas for key, replicas in problem.current_replicas.items() if replicas > 0}
    offered: dict[str, list[inputs.CandidateKey]] = {}
    for c in problem.candidates:
        if c.service in pinned and c.key in running:
            offered.setdefault(c.service, []).append(c.key)
    kept = tuple(c for c in problem.candidates if c.service not in offered or c.key in running)
    # The replica counts stay too (the solver would otherwise resize a configuration to the cheapest count
    # for its rate, or shift replicas between two configurations: changes the capacity loss did not call
    # for), when every role's total is one its bounds allow.
    demand = {s.id: s for s in problem.services}
    bounds = dict(problem.replica_bounds)
    for sid, keys in offered.items():
        per_role: dict[str, int] = {}
        for key in keys:
            per_role[key.role] = per_role.get(key.role, 0) + running[key]
        s = demand[sid]
        if all(
            s.min_replicas <= total and (s.max_replicas is None or total <= s.max_replicas)
            for total in per_role.values()
        ):
            bounds.update({key: (running[key], running[key]) for key in keys})
    if kept == problem.candidates and bounds == problem.replica_bounds:
        return cset
    return dataclasses.replace(
        cset, problem=dataclasses.replace(problem, candidates=kept, replica_bounds=bounds)
    )


class Planner:
    """Plans a fleet again and again, recomputing only what changed (the operator's fleet worker holds one).

    Candidates are cached per (service spec, pool without its node count), the spec without what capacity
    does not depend on (rate, replica bounds, priority, budget: candidates.pricing_key): a re-plan after a
    node loss (pool node counts change), a rate change, a new pool, or one changed service prices only the
    (service, pool) pairs it has not seen; a changed PerformanceProfile drops the pairs of its (model,
    accelerator); `reset()` (the catalog or the performance model changed) drops everything, including the
    performance model's answers.
    The capacity answers themselves are also shared across services in placement.perf's cache.

    Warm start: scipy's HiGHS interface (scipy.optimize.milp) takes no initial solution, so the solver
    cannot be handed the current placement as an incumbent. The current placement enters as the stability
    penalty's reference (current_replicas, from status.placement); and when nothing the solver sees
    changed (same candidates, pools, demand and current placement), the previous plan is returned as is.
    """

    def __init__(self, options: inputs.SolveOptions | None = None, *, headroom: bool = True) -> None:
        """An empty planner (`headroom`: derate capacity predicted without calibration, see trust)."""
        self.options = options
        self.headroom = headroom
        self.cache: candidates.CandidateCache = {}
        self._profiles: dict[tuple[str, str, str, int, str], profiles.BucketProfile] = {}
        # Calibrations from point profiles, by (accelerator, engine): a change re-prices that chip.
        self._calibrations: dict[tuple[str, str], profile_fit.Calibration] = {}
        self._last: tuple[inputs.FleetProblem, inputs.SolveOptions | None, allocation.Plan] | None = None
        # Pairs priced by the last build_inputs (for tests and metrics).
        self.last_priced_pairs = 0

    def reset(self) -> None:
        """Forget everything (the catalog or the performance model changed)."""
        self.cache.clear()
        self._profiles.clear()
        self._calibrations.clear()
        self._last = None
        perf.clear_rate_cache()

    def build_inputs(
        self,
        services: Sequence[v1alpha1.InferenceService],
        pools: Sequence[v1alpha1.AcceleratorPool],
        performance_profiles: Sequence[v1alpha1.PerformanceProfile] = (),
    ) -> candidates.CandidateSet:
        """Candidates for the fleet, reusing every cached (service, pool) the change did not touch."""
        table = to_profiles(performance_profiles)
        index = {(p.model, p.accelerator, p.precision, p.tp, p.role): p for p in table}
        changed = {key[:2] for key in index.keys() ^ self._profiles.keys()}
        changed |= {
            key[:2] for key in index.keys() & self._profiles.keys() if index[key] != self._profiles[key]
        }
        calibrations = {(c.accelerator, c.engine): c for c in to_calibrations(performance_profiles)}
        recalibrated = {
            key[0]
            for key in calibrations.keys() | self._calibrations.keys()
            if calibrations.get(key) != self._calibrations.get(key)
        }
        if changed or recalibrated:
            for key in list(self.cache):
                spec, pool = key[0], key[1]
                if (spec.model, pool.accelerator) in changed or pool.accelerator in recalibrated:
                    del self.cache[key]
        self._profiles = index
        self._calibrations = calibrations
        specs = [to_spec(s) for s in services]
        placement_pools = [to_pool(p) for p in pools]
        before = len(self.cache)
        cset = candidates.build(
            specs,
            placement_pools,
            oracle=candidates.profile_oracle(table, fallback=model_oracle(list(calibrations.values()))),
            current_replicas=current_replicas(services),
            cache=self.cache,
            accelerators=fleet_accelerators(pools),
            headroom=self.headroom,
        )
        self.last_priced_pairs = len(self.cache) - before
        # Bounded memory: keep only the pairs of services and pools that still exist.
        live_specs = {candidates.pricing_key(s) for s in specs}
        live_pools = {dataclasses.replace(p, nodes=0) for p in placement_pools}
        for key in list(self.cache):
            if key[0] not in live_specs or key[1] not in live_pools:
                del self.cache[key]
        return cset

    def plan(
        self,
        services: Sequence[v1alpha1.InferenceService],
        pools: Sequence[v1alpha1.AcceleratorPool],
        performance_profiles: Sequence[v1alpha1.PerformanceProfile] = (),
        *,
        with_baseline: bool = False,
        progress: Callable[[str], None] | None = None,
        pinned: Collection[str] = (),
    ) -> FleetPlan:
        """plan_fleet with the caches (see the class docstring); raises what plan_fleet raises.

        `pinned`: ids of services that keep the configurations they run now (see `pin`).
        """
        step = progress or (lambda _label: None)
        step("predicting capacity")
        cset = pin(self.build_inputs(services, pools, performance_profiles), pinned)
        options = self.options
        # A repair's second chance: the whole time limit (see below).
        patient: inputs.SolveOptions | None = None
        if pinned:
            # A repair: most services have one configuration left, so one MILP is small; the per-service
            # decomposition would still solve a sub-problem for every pinned service.
            base = options or inputs.SolveOptions()
            options = dataclasses.replace(
                base, method="milp", time_limit_s=min(base.time_limit_s, REPAIR_TIME_LIMIT_S)
            )
            if base.time_limit_s > options.time_limit_s:
                patient = dataclasses.replace(options, time_limit_s=base.time_limit_s)
        step("solving the fleet MILP")
        last = self._last
        if (
            last is not None
            and last[0] == cset.problem
            and (last[1] == options or (patient is not None and last[1] == patient))
        ):
            plan = last[2]
        else:
            try:
                plan = solve.solve(cset.problem, options)
            except inputs.SolverError:
                if patient is None:
                    raise
                # No plan at all within the repair's limit, which is wall time: on a loaded machine (300
                # services, load average 25) HiGHS had no incumbent after 5 s. The repair again with the
                # whole limit, rather than a fresh solve of the fleet that moves services the loss did not
                # touch (77 of 300 there, whose rollouts then waited on each other's devices).
                logger.info(
                    "the repair found no plan in its time; trying again for %.0f s", patient.time_limit_s
                )
                options = patient
                plan = solve.solve(cset.problem, options)
            self._last = (cset.problem, options, plan)
        return _finish(cset, plan, options, with_baseline, step)
