"""Candidate configurations for the solver: (service, role, pool, precision, tp) with SLO-bounded capacity.

Capacity comes from a capacity oracle: a measured bucket profile for the exact (model, accelerator,
precision, tp, role) when one exists, else placement.perf.max_rate_under_slo. The solver never sees the
physics; unit tests pass synthetic oracles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from placement import catalog, engine_version, perf, profiles, trust, workload
from placement.solver import inputs

# TP degrees tried by default: the powers of two serving engines shard attention heads by.
DEFAULT_TP_DEGREES: tuple[int, ...] = (1, 2, 4, 8)
# Arrival rate used to ask the performance model for zero-load latency when an SLO is missed even there
# (a millionth of a request per second: no queueing, one request in the batch).
ZERO_LOAD_RPS = 1e-6


@dataclass(frozen=True)
class Query:
    """One question to a capacity oracle: how fast can this replica serve requests of this size?"""

    model: str
    accelerator: str
    precision: str
    tp: int
    role: inputs.Role
    engine: str
    prompt_tokens: int
    output_tokens: int
    ttft_p99_ms: float
    itl_p99_ms: float
    # Inline architecture for models not in the catalog.
    model_arch: catalog.ModelArch | None = None
    # Mean sizes of the bucket's requests (prompt_tokens/output_tokens are its largest, i.e. its p99 and
    # beyond); None means every request has the largest size.
    prompt_mean_tokens: float | None = None
    output_mean_tokens: float | None = None
    # The chip when a pool declared it by its specs (None: the catalog entry for `accelerator`).
    accelerator_spec: catalog.Accelerator | None = None
    # The engine release (None: not stated).
    engine_version: str | None = None


@dataclass(frozen=True)
class Capacity:
    """An oracle's answer: max req/s within the SLO (0.0 when impossible) and the latencies there."""

    max_rps: float
    ttft_p99_ms: float | None
    itl_p99_ms: float | None
    # Why the SLO cannot be met (max_rps == 0) or which limit binds.
    reason: str | None
    source: str
    # Latencies at (near) zero load, known when the SLO is missed even there: the explanations quote them.
    zero_load_ttft_p99_ms: float | None = None
    zero_load_itl_p99_ms: float | None = None
    # True when the oracle vouches that larger requests (prompt and output both at least as long) can
    # never do better: then candidates skip asking about them once this size fails.
    size_monotone: bool = False
    # How far the answer can be trusted (None: the oracle does not say, e.g. a synthetic test oracle).
    trust: trust.Trust | None = None


CapacityOracle = Callable[[Query], Capacity]


def perf_oracle(query: Query) -> Capacity:
    """Capacity from placement.perf (roofline + queueing model)."""
    model: str | catalog.ModelArch = query.model_arch if query.model_arch is not None else query.model
    try:
        chip: str | catalog.Accelerator = query.accelerator_spec or query.accelerator
        config = perf.ReplicaConfig(model, chip, query.precision, query.tp, query.role, query.engine)
        slo = perf.LatencySlo(query.ttft_p99_ms, query.itl_p99_ms)
        versioned = engine_version.efficiency(config.accelerator_spec, query.engine, query.engine_version)
        # Throughput at the bucket's mean sizes, tail latency with its largest request as the p99.
        prompt_mean = query.prompt_mean_tokens or float(query.prompt_tokens)
        output_mean = query.output_mean_tokens or float(query.output_tokens)
        rate = perf.max_rate_under_slo(
            config,
            max(1.0, prompt_mean),
            max(1.0, output_mean),
            slo,
            prompt_tokens_p99=max(float(query.prompt_tokens), prompt_mean, 1.0),
            output_tokens_p99=max(float(query.output_tokens), output_mean, 1.0),
            efficiency=versioned.efficiency,
        )
    except (catalog.UnknownIdError, perf.InvalidConfigError) as error:
        return Capacity(0.0, None, None, str(error), "perf", size_monotone=True)
    confidence = trust.assess(config, prompt_mean, output_mean, versioned)
    if rate.max_rps > 0.0:
        return Capacity(
            rate.max_rps,
            rate.ttft_p99_ms if query.role != "decode" else None,
            rate.itl_p99_ms if query.role != "prefill" else None,
            rate.reason,
            "perf",
            trust=confidence,
        )
    zero_ttft: float | None = None
    zero_itl: float | None = None
    if perf.infeasibility(config) is None:
        load = perf.latency_at_rate(
            config,
            perf.RequestSizes(query.prompt_tokens, query.output_tokens),
            ZERO_LOAD_RPS,
            efficiency=versioned.efficiency,
        )
        if load is not None:
            zero_ttft, zero_itl = load.ttft_p99_ms, load.itl_p99_ms
    # Longer prompts and outputs only add compute, KV and queueing in the model: monotone.
    return Capacity(0.0, None, None, rate.reason, "perf", zero_ttft, zero_itl, size_monotone=True)


def profile_oracle(
    table: Sequence[profiles.BucketProfile], fallback: CapacityOracle | None = perf_oracle
) -> CapacityOracle:
    """Measured profile for the exact (model, accelerator, precision, tp, role), else `fallback`."""
    index = profiles.index_profiles(table)

    def oracle(query: Query) -> Capacity:
        profile = index.get((query.model, query.accelerator, query.precision, query.tp, query.role))
        # A table measured on another engine or release is not this configuration: fall back, and say so.
        mismatch = _engine_mismatch(profile, query) if profile is not None else None
        if mismatch is not None:
            answer = fallback(query) if fallback is not None else Capacity(0.0, None, None, mismatch, "none")
            return _with_note(answer, mismatch)
        # A table measured under a looser SLO than asked says nothing about this SLO: fall back.
        if profile is not None and not _looser(profile, query):
            rps = profile.max_rps_for(query.prompt_tokens, query.output_tokens)
            source = f"profile {profile.source}".strip()
            if rps > 0.0:
                return Capacity(
                    rps, profile.ttft_p99_ms, profile.itl_p99_ms, None, source, trust=trust.measured(source)
                )
            return Capacity(
                0.0, None, None, "outside the measured profile, or its SLO was missed there", source
            )
        if fallback is None:
            return Capacity(0.0, None, None, "no measured profile for this configuration", "none")
        return fallback(query)

    return oracle


def _engine_mismatch(profile: profiles.BucketProfile, query: Query) -> str | None:
    """Why a profile's measurement does not apply to the query's engine or release (None: it applies)."""
    ran = f"{profile.engine} {profile.engine_version or '(version not given)'}"
    wants = f"{query.engine} {query.engine_version or '(version not given)'}"
    if profile.engine != query.engine or not engine_version.same_release(
        profile.engine_version, query.engine_version
    ):
        return f"profile {profile.source} measured on {ran} not applied: the service runs {wants}"
    return None


def _with_note(answer: Capacity, note: str) -> Capacity:
    """The answer with one more trust note (the profile that was not applied, and why)."""
    if answer.trust is None:
        return answer
    said = answer.trust
    return replace(
        answer, trust=trust.Trust(said.level, said.in_range, (*said.notes, note), said.typical_error)
    )


def _looser(profile: profiles.BucketProfile, query: Query) -> bool:
    """The profile was measured under a looser SLO than the query asks for."""
    return (profile.ttft_p99_ms is not None and profile.ttft_p99_ms > query.ttft_p99_ms) or (
        profile.itl_p99_ms is not None and profile.itl_p99_ms > query.itl_p99_ms
    )


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the placement layer sees it (chipfit.planning builds these from the API objects)."""

    id: str
    model: str
    precisions: tuple[str, ...]
    ttft_p99_ms: float
    itl_p99_ms: float
    workload: workload.BucketedWorkload
    engine: str = "vllm"
    serving: inputs.ServingMode = "aggregated"
    min_replicas: int = 0
    max_replicas: int | None = None
    priority: int = 0
    max_dollars_per_hour: float | None = None
    # An accelerator id here also admits its MIG slices ("h100" admits "h100/3g.40gb").
    allowed_accelerators: frozenset[str] | None = None
    excluded_accelerators: frozenset[str] = frozenset()
    allowed_pools: frozenset[str] | None = None
    excluded_pools: frozenset[str] = frozenset()
    spot_allowed: bool = True
    tp_degrees: tuple[int, ...] = DEFAULT_TP_DEGREES
    # The engine release the service runs (None: not stated; see placement.engine_version).
    engine_version: str | None = None
    model_arch: catalog.ModelArch | None = None


@dataclass(frozen=True)
class Rejection:
    """A configuration that cannot serve any of the service's traffic, and why."""

    service: str
    role: inputs.Role
    pool: str
    accelerator: str
    precision: str
    tp: int
    reason: str
    zero_load_ttft_p99_ms: float | None = None
    zero_load_itl_p99_ms: float | None = None
    # Prompt size (bucket upper edge) of the smallest request the reason was found for.
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class CandidateSet:
    """The solver's problem plus what was filtered out and why (for the explanations)."""

    problem: inputs.FleetProblem
    specs: Mapping[str, ServiceSpec]
    rejections: tuple[Rejection, ...]
    # Services with no pool left after their placement constraints, with the reason.
    excluded: Mapping[str, str] = field(default_factory=dict)
    # How far each candidate's capacity can be trusted (its least trusted bucket), when the oracle says.
    trust: Mapping[inputs.CandidateKey, trust.Trust] = field(default_factory=dict)
    # Whether capacity was derated by trust (build's `headroom`).
    headroom: bool = True


def _family(accelerator: str) -> str:
    """The parent chip of a MIG slice, or the id itself."""
    return accelerator.split("/", 1)[0]


def pool_allowed(spec: ServiceSpec, pool: inputs.Pool) -> str | None:
    """Why the service's placement constraints rule this pool out (None when allowed)."""
    acc = pool.accelerator
    if pool.id in spec.excluded_pools:
        return f"pool {pool.id} is in excludedPools"
    if spec.allowed_pools is not None and pool.id not in spec.allowed_pools:
        return f"pool {pool.id} is not in allowedPools"
    if acc in spec.excluded_accelerators or _family(acc) in spec.excluded_accelerators:
        return f"{acc} is in excludedAccelerators"
    if spec.allowed_accelerators is not None and not (
        acc in spec.allowed_accelerators or _family(acc) in spec.allowed_accelerators
    ):
        return f"{acc} is not in allowedAccelerators"
    if pool.spot and not spec.spot_allowed:
        return f"pool {pool.id} is spot and spotAllowed is false"
    return None


def _max_tp(pool: inputs.Pool, accelerators: Mapping[str, catalog.Accelerator]) -> int:
    """Largest TP one replica may use in this pool: the node, and the chip's limit for known chips."""
    limit = pool.devices_per_node
    spec = accelerators.get(pool.accelerator) or catalog.ACCELERATORS.get(pool.accelerator)
    if spec is not None:
        limit = min(limit, spec.max_tp)
    return limit


def _roles(mode: inputs.ServingMode) -> tuple[inputs.Role, ...]:
    """Roles a serving mode may use."""
    if mode == "aggregated":
        return ("aggregated",)
    if mode == "disaggregated":
        return ("prefill", "decode")
    return ("aggregated", "prefill", "decode")


def build(
    specs: Iterable[ServiceSpec],
    pools: Sequence[inputs.Pool],
    *,
    oracle: CapacityOracle = perf_oracle,
    current_replicas: Mapping[inputs.CandidateKey, int] | None = None,
    accelerators: Mapping[str, catalog.Accelerator] | None = None,
    headroom: bool = True,
) -> CandidateSet:
    """Ask the oracle about every (service, role, pool, precision, tp) and assemble the solver's problem.

    `accelerators` holds the chips pools declared by their specs (by accelerator id); other ids are
    looked up in the catalog. With `headroom`, capacity the oracle trusts less than a calibration (a chip
    predicted from its specs) is derated by trust.Trust.derate, so the plan keeps room for the error.
    """
    declared = dict(accelerators or {})
    spec_list = list(specs)
    demands: list[inputs.ServiceDemand] = []
    cands: list[inputs.Candidate] = []
    rejections: list[Rejection] = []
    excluded: dict[str, str] = {}
    trusted: dict[inputs.CandidateKey, trust.Trust] = {}
    for spec in spec_list:
        wl = spec.workload
        demands.append(
            inputs.ServiceDemand(
                id=spec.id,
                bucket_rps=wl.bucket_rps,
                bucket_output_tokens=tuple(b.output_mean_tokens for b in wl.buckets),
                serving=spec.serving,
                min_replicas=spec.min_replicas,
                max_replicas=spec.max_replicas,
                priority=spec.priority,
                max_dollars_per_hour=spec.max_dollars_per_hour,
            )
        )
        allowed = []
        ruled_out = []
        for pool in pools:
            why = pool_allowed(spec, pool)
            if why is None:
                allowed.append(pool)
            else:
                ruled_out.append(why)
        if not allowed:
            excluded[spec.id] = (
                "no pool passes its placement constraints" + (f" ({ruled_out[0]}, ...)" if ruled_out else "")
                if pools
                else "the fleet has no pools"
            )
        for pool in allowed:
            for role in _roles(spec.serving):
                for precision in spec.precisions:
                    for tp in spec.tp_degrees:
                        if tp > _max_tp(pool, declared):
                            continue
                        cand, rejection, confidence = _candidate(
                            spec, pool, role, precision, tp, oracle, declared.get(pool.accelerator), headroom
                        )
                        if cand is not None:
                            cands.append(cand)
                            if confidence is not None:
                                key = inputs.CandidateKey(spec.id, role, pool.id, precision, tp)
                                trusted[key] = confidence
                        elif rejection is not None:
                            rejections.append(rejection)
    problem = inputs.FleetProblem(
        services=tuple(demands),
        pools=tuple(pools),
        candidates=tuple(cands),
        current_replicas=dict(current_replicas or {}),
    )
    return CandidateSet(problem, {s.id: s for s in spec_list}, tuple(rejections), excluded, trusted, headroom)


def _candidate(
    spec: ServiceSpec,
    pool: inputs.Pool,
    role: inputs.Role,
    precision: str,
    tp: int,
    oracle: CapacityOracle,
    accelerator_spec: catalog.Accelerator | None = None,
    headroom: bool = True,
) -> tuple[inputs.Candidate | None, Rejection | None, trust.Trust | None]:
    """The candidate for one configuration, or the reason it cannot serve any bucket."""
    buckets = spec.workload.buckets
    rates = spec.workload.bucket_rps
    caps: list[float] = [0.0] * len(buckets)
    ttfts: list[float | None] = [None] * len(buckets)
    itls: list[float | None] = [None] * len(buckets)
    sources: set[str] = set()
    first_miss: tuple[Capacity, int] | None = None
    # Smallest requests first: when the oracle vouches that bigger requests never do better
    # (size_monotone), a bucket at least as large as a failed one fails without another question.
    failed: list[tuple[int, int]] = []
    least: trust.Trust | None = None
    for k in sorted(
        range(len(buckets)), key=lambda k: (buckets[k].prompt_tokens + buckets[k].output_tokens, k)
    ):
        bucket = buckets[k]
        if any(bucket.prompt_tokens >= p and bucket.output_tokens >= o for p, o in failed):
            continue
        answer = oracle(
            Query(
                model=spec.model,
                accelerator=pool.accelerator,
                precision=precision,
                tp=tp,
                role=role,
                engine=spec.engine,
                engine_version=spec.engine_version,
                prompt_tokens=bucket.prompt_tokens,
                output_tokens=bucket.output_tokens,
                ttft_p99_ms=spec.ttft_p99_ms,
                itl_p99_ms=spec.itl_p99_ms,
                model_arch=spec.model_arch,
                prompt_mean_tokens=bucket.prompt_mean,
                output_mean_tokens=bucket.output_mean_tokens or None,
                accelerator_spec=accelerator_spec,
            )
        )
        # Headroom where trust is low: plan on less capacity than predicted (Trust.derate).
        derate = answer.trust.derate if headroom and answer.trust is not None else 1.0
        caps[k] = answer.max_rps * derate
        said = answer.trust
        if (
            said is not None
            and answer.max_rps > 0.0
            and (least is None or said.typical_error > least.typical_error)
        ):
            least = said
        ttfts[k] = answer.ttft_p99_ms
        itls[k] = answer.itl_p99_ms
        sources.add(answer.source)
        if answer.max_rps <= 0.0:
            if answer.size_monotone:
                failed.append((bucket.prompt_tokens, bucket.output_tokens))
            if first_miss is None or (rates[first_miss[1]] <= 0.0 < rates[k]):
                first_miss = (answer, k)
    worst = first_miss[0] if first_miss is not None else None
    if any(c > 0.0 for c in caps) or (spec.min_replicas > 0 and sum(rates) == 0.0):
        return (
            inputs.Candidate(
                service=spec.id,
                role=role,
                pool=pool.id,
                accelerator=pool.accelerator,
                precision=precision,
                tp=tp,
                max_rps_per_bucket=tuple(caps),
                price_per_hour=pool.price_per_device_hour * tp,
                ttft_p99_ms_per_bucket=tuple(ttfts),
                itl_p99_ms_per_bucket=tuple(itls),
                engine=spec.engine,
                source=", ".join(sorted(sources)),
            ),
            None,
            least,
        )
    reason = worst.reason if worst is not None and worst.reason else "SLO not met"
    return (
        None,
        Rejection(
            service=spec.id,
            role=role,
            pool=pool.id,
            accelerator=pool.accelerator,
            precision=precision,
            tp=tp,
            reason=reason,
            zero_load_ttft_p99_ms=worst.zero_load_ttft_p99_ms if worst is not None else None,
            zero_load_itl_p99_ms=worst.zero_load_itl_p99_ms if worst is not None else None,
            prompt_tokens=buckets[first_miss[1]].prompt_tokens if first_miss is not None else None,
        ),
        None,
    )


# Mélange's tables carry no SLO values of their own (they were measured under a TPOT SLO the notebook does
# not state), so the SLO passed through is a placeholder the profile oracle never compares against.
_MELANGE_PLACEHOLDER_SLO_MS = 1e9


def from_melange_inputs(
    gpu_info: Mapping[str, tuple[float, Sequence[Sequence[float]]]],
    distribution: Sequence[Sequence[float]],
    overall_rate: float,
    *,
    model: str = "llama-2-7b",
    precision: str = "fp16",
    pool_nodes: int = 1000,
) -> CandidateSet:
    """The solver's problem for Mélange's inputs, through chipfit's profile-table path.

    `gpu_info` maps a GPU name to (price per hour, tputs table). Each GPU becomes a one-device-per-node
    pool whose accelerator is defined only by its profile and price (A10G is in no chipfit catalog), with
    effectively unlimited nodes as in the paper; the distribution becomes the service's buckets.
    """
    # A smaller grid (the paper's 2 x 2 toy) uses the first edges.
    edges = profiles.MELANGE_EDGES_TOKENS[: len(distribution) + 1]
    if len(distribution) + 1 > len(profiles.MELANGE_EDGES_TOKENS):
        raise profiles.ProfileError(f"melange distribution: {len(distribution)} rows, at most 6 supported")
    table = []
    pools = []
    for name, (price, tputs) in sorted(gpu_info.items()):
        acc = name.lower()
        table.append(
            profiles.from_melange_table(
                tputs,
                model=model,
                accelerator=acc,
                precision=precision,
                edges_tokens=edges,
                source=f"melange {name}",
            )
        )
        pools.append(inputs.Pool(acc, acc, devices_per_node=1, nodes=pool_nodes, price_per_device_hour=price))
    grid = profiles.melange_distribution_to_grid(distribution)
    spec = ServiceSpec(
        id="melange",
        model=model,
        precisions=(precision,),
        ttft_p99_ms=_MELANGE_PLACEHOLDER_SLO_MS,
        itl_p99_ms=_MELANGE_PLACEHOLDER_SLO_MS,
        # Mélange multiplies the distribution by the rate without normalising it (the toy's sums to 1.25,
        # so its demand is 20 req/s, not 16); from_grid normalises, so scale the rate to match.
        workload=workload.from_grid(overall_rate * sum(map(sum, grid)), edges, edges, grid),
        tp_degrees=(1,),
    )
    return build([spec], pools, oracle=profile_oracle(table, fallback=None))
