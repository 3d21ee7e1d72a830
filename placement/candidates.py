"""Candidate configurations for the solver: (service, role, pool, precision, tp) with SLO-bounded capacity.

Capacity comes from a capacity oracle: a measured bucket profile for the exact (model, accelerator,
precision, tp, role) when one exists, else placement.perf.max_rate_under_slo. The solver never sees the
physics; unit tests pass synthetic oracles.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gc
import itertools
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

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
    # Chunked-prefill budget to price with; None lets the oracle choose (the performance model picks the
    # budget serving the most, see perf.max_rate_under_slo).
    prefill_chunk_tokens: int | None = None
    # The chip when a pool declared it by its specs (None: the catalog entry for `accelerator`).
    accelerator_spec: catalog.Accelerator | None = None
    # The engine release (None: not stated; see placement.engine_version).
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
    # Chunked-prefill budget the answer assumes (None: the engine's default, or not the model's answer).
    prefill_chunk_tokens: int | None = None
    # True when the answer is the performance model's (its engine settings can be derived and deployed).
    modelled: bool = False
    # True when no request size can do better (the configuration cannot run at all): candidates then ask
    # about no other bucket of this configuration.
    any_size: bool = False
    # How far the answer can be trusted (None: the oracle does not say, e.g. a synthetic test oracle).
    trust: trust.Trust | None = None


CapacityOracle = Callable[[Query], Capacity]


def ask(oracle: CapacityOracle, queries: Sequence[Query]) -> list[Capacity]:
    """Answers to many queries: in one batch when the oracle has a `batch` method, else one by one."""
    batch = getattr(oracle, "batch", None)
    if callable(batch):
        answers: list[Capacity] = batch(queries)
        return answers
    return [oracle(q) for q in queries]


class _Questions:
    """Builds the performance model's questions for queries, each configuration, SLO, size and engine
    release once, with how far each answer can be trusted."""

    def __init__(self) -> None:
        """Empty memos (one batch's worth)."""
        self.configs: dict[tuple[object, ...], perf.ReplicaConfig] = {}
        self.slos: dict[tuple[float, float], perf.LatencySlo] = {}
        self.sizes: dict[tuple[float, float, float, float], perf.RequestSizes] = {}
        self.versions: dict[tuple[object, ...], engine_version.VersionedEfficiency] = {}

    def __call__(self, query: Query) -> tuple[perf.RateQuestion, trust.Trust]:
        """The question for a query and its trust (raises for malformed ids and values)."""
        model: str | catalog.ModelArch = query.model_arch if query.model_arch is not None else query.model
        chip: str | catalog.Accelerator = query.accelerator_spec or query.accelerator
        key = (model, chip, query.precision, query.tp, query.role, query.engine)
        config = self.configs.get(key)
        if config is None:
            config = perf.ReplicaConfig(model, chip, query.precision, query.tp, query.role, query.engine)
            # Malformed names raise here, once per configuration, rather than inside the batch.
            perf.infeasibility(config)
            self.configs[key] = config
        slo = self.slos.get((query.ttft_p99_ms, query.itl_p99_ms))
        if slo is None:
            slo = self.slos[(query.ttft_p99_ms, query.itl_p99_ms)] = perf.LatencySlo(
                query.ttft_p99_ms, query.itl_p99_ms
            )
        # Throughput at the bucket's mean sizes, tail latency with its largest request as the p99.
        prompt_mean = query.prompt_mean_tokens or float(query.prompt_tokens)
        output_mean = query.output_mean_tokens or float(query.output_tokens)
        size_key = (
            max(1.0, prompt_mean),
            max(1.0, output_mean),
            max(float(query.prompt_tokens), prompt_mean, 1.0),
            max(float(query.output_tokens), output_mean, 1.0),
        )
        sizes = self.sizes.get(size_key)
        if sizes is None:
            sizes = self.sizes[size_key] = perf.RequestSizes(*size_key)
        # The engine release's efficiency (the reference release's when unknown, and it says so).
        version_key = (chip, query.engine, query.engine_version)
        versioned = self.versions.get(version_key)
        if versioned is None:
            versioned = self.versions[version_key] = engine_version.efficiency(
                config.accelerator_spec, query.engine, query.engine_version
            )
        question = perf.RateQuestion(
            config,
            sizes,
            slo,
            efficiency=versioned.efficiency,
            prefill_chunk_tokens=query.prefill_chunk_tokens,
        )
        return question, trust.assess(config, sizes.prompt_tokens, sizes.output_tokens, versioned)


class PerfOracle:
    """Capacity from placement.perf (roofline + queueing model); `batch` answers many queries at once."""

    def __call__(self, query: Query) -> Capacity:
        """One query."""
        return self.batch([query])[0]

    def batch(self, queries: Sequence[Query]) -> list[Capacity]:
        """Many queries: one vectorized, cached performance-model call for all of them."""
        answers: list[Capacity | None] = [None] * len(queries)
        asked: list[tuple[int, perf.RateQuestion]] = []
        question = _Questions()
        trusts: dict[int, trust.Trust] = {}
        for i, query in enumerate(queries):
            try:
                asked_question, trusts[i] = question(query)
                asked.append((i, asked_question))
            except (catalog.UnknownIdError, perf.InvalidConfigError, ValueError) as error:
                answers[i] = Capacity(0.0, None, None, str(error), "perf", size_monotone=True, any_size=True)
        rates = perf.max_rates([q for _, q in asked])
        # Latencies at (near) zero load for the configurations that miss the SLO even there, asked at the
        # bucket's largest sizes.
        cannot_run = {i for i, q in asked if perf.infeasibility(q.config) is not None}
        misses = [
            (i, q)
            for (i, q), rate in zip(asked, rates, strict=True)
            if rate.max_rps <= 0.0 and i not in cannot_run
        ]
        zero_loads = perf.latencies_at(
            [
                (
                    q.config,
                    perf.RequestSizes(queries[i].prompt_tokens, queries[i].output_tokens),
                    ZERO_LOAD_RPS,
                )
                for i, q in misses
            ]
        )
        zero = {i: load for (i, _), load in zip(misses, zero_loads, strict=True)}
        for (i, _), rate in zip(asked, rates, strict=True):
            role = queries[i].role
            if rate.max_rps > 0.0:
                answers[i] = Capacity(
                    rate.max_rps,
                    rate.ttft_p99_ms if role != "decode" else None,
                    rate.itl_p99_ms if role != "prefill" else None,
                    rate.reason,
                    "perf",
                    prefill_chunk_tokens=rate.prefill_chunk_tokens,
                    modelled=True,
                    trust=trusts.get(i),
                )
                continue
            load = zero.get(i)
            # Longer prompts and outputs only add compute, KV and queueing in the model: monotone.
            answers[i] = Capacity(
                0.0,
                None,
                None,
                rate.reason,
                "perf",
                load.ttft_p99_ms if load is not None else None,
                load.itl_p99_ms if load is not None else None,
                size_monotone=True,
                modelled=True,
                any_size=i in cannot_run,
                trust=trusts.get(i),
            )
        return [a for a in answers if a is not None]


perf_oracle = PerfOracle()


class ProfileOracle:
    """Measured profile for the exact (model, accelerator, precision, tp, role), else `fallback`."""

    def __init__(self, table: Sequence[profiles.BucketProfile], fallback: CapacityOracle | None) -> None:
        """Index the table once."""
        self.index = profiles.index_profiles(table)
        self.fallback = fallback

    def _measured(self, query: Query) -> Capacity | None:
        """The profile's answer (None: no profile for this configuration at this SLO)."""
        profile = self.index.get((query.model, query.accelerator, query.precision, query.tp, query.role))
        # A table measured under a looser SLO than asked says nothing about this SLO, one measured on
        # another engine or release says nothing about this one: fall back.
        if profile is None or _looser(profile, query) or _engine_mismatch(profile, query) is not None:
            return None
        rps = profile.max_rps_for(query.prompt_tokens, query.output_tokens)
        source = f"profile {profile.source}".strip()
        if rps > 0.0:
            return Capacity(
                rps, profile.ttft_p99_ms, profile.itl_p99_ms, None, source, trust=trust.measured(source)
            )
        return Capacity(0.0, None, None, "outside the measured profile, or its SLO was missed there", source)

    def __call__(self, query: Query) -> Capacity:
        """One query."""
        return self.batch([query])[0]

    def batch(self, queries: Sequence[Query]) -> list[Capacity]:
        """Profile answers where measured; the rest from the fallback, in one batch."""
        answers = [self._measured(q) for q in queries]
        rest = [i for i, a in enumerate(answers) if a is None]
        if self.fallback is None:
            unknown = Capacity(0.0, None, None, "no measured profile for this configuration", "none")
            return [a if a is not None else unknown for a in answers]
        for i, answer in zip(rest, ask(self.fallback, [queries[i] for i in rest]), strict=True):
            profile = self.index.get(
                (
                    queries[i].model,
                    queries[i].accelerator,
                    queries[i].precision,
                    queries[i].tp,
                    queries[i].role,
                )
            )
            mismatch = _engine_mismatch(profile, queries[i]) if profile is not None else None
            answers[i] = _with_note(answer, mismatch) if mismatch is not None else answer
        return [a for a in answers if a is not None]


def profile_oracle(
    table: Sequence[profiles.BucketProfile], fallback: CapacityOracle | None = perf_oracle
) -> CapacityOracle:
    """Measured profile for the exact (model, accelerator, precision, tp, role), else `fallback`."""
    return ProfileOracle(table, fallback)


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
    model_arch: catalog.ModelArch | None = None
    # Engine settings that do not change capacity but travel to the pods: the longest sequence admitted,
    # and the mean request the sequence cap is sized for (None: the buckets' mean).
    max_model_len: int | None = None
    prompt_mean_tokens: float | None = None
    output_mean_tokens: float | None = None
    # The engine release the service runs (None: not stated; see placement.engine_version).
    engine_version: str | None = None
    # The service names its own engine image (spec.overrides.image): any release deploys on any vendor.
    own_image: bool = False

    def __hash__(self) -> int:
        """Hash of every field, computed once (specs key the candidate cache across re-plans)."""
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in fields(self)))


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


def pool_allowed(
    spec: ServiceSpec, pool: inputs.Pool, declared: Mapping[str, catalog.Accelerator] | None = None
) -> str | None:
    """Why the service's placement constraints, or its engine release, rule this pool out (None: allowed).

    `declared` holds the chips pools declared by their specs (other ids are looked up in the catalog).
    """
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
    known = declared or {}
    chip = known.get(acc) or known.get(_family(acc)) or catalog.ACCELERATORS.get(_family(acc))
    if chip is not None:
        why = engine_version.undeployable_release(
            spec.engine, chip.vendor, spec.engine_version, spec.own_image
        )
        if why is not None:
            return f"pool {pool.id}: {why}"
    return None


def _max_tp(pool: inputs.Pool, declared: Mapping[str, catalog.Accelerator]) -> int:
    """Largest TP one replica may use in this pool: the node, and the chip's limit for known chips."""
    limit = pool.devices_per_node
    spec = declared.get(pool.accelerator) or catalog.ACCELERATORS.get(pool.accelerator)
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


# A pool as far as candidates are concerned: everything but its node count (capacity is the solver's).
def _pool_shape(pool: inputs.Pool) -> inputs.Pool:
    return replace(pool, nodes=0)


def pricing_key(spec: ServiceSpec) -> ServiceSpec:
    """The spec as far as its candidates depend on it (the candidate cache's key).

    Capacities do not depend on the request rate, the replica ceiling, the priority or the budget (the
    solver reads those from the demand); the floor matters only without demand (a floor replica still needs
    a configuration that can run). So a rate change (the autoscaler) or a relaxed floor reuses every
    candidate.
    """
    wl = spec.workload
    busy = wl.requests_per_second > 0.0
    return replace(
        spec,
        workload=replace(wl, requests_per_second=1.0 if busy else 0.0),
        min_replicas=int(spec.min_replicas > 0 and not busy),
        max_replicas=None,
        priority=0,
        max_dollars_per_hour=None,
    )


# One configuration's outcome: its candidate or rejection, and how far its capacity can be trusted.
Result = tuple[inputs.Candidate | None, Rejection | None, trust.Trust | None]
PoolResults = tuple[Result, ...]
# Candidates and rejections of one (service, pool), keyed by the service's pricing key, the pool without its
# node count, the chip the pool declares (None: the catalog's) and whether capacity was derated for trust:
# what a re-plan can reuse when only other services' rates, node counts or other pools changed.
CandidateCache = dict[tuple[ServiceSpec, inputs.Pool, catalog.Accelerator | None, bool], PoolResults]


def build(
    specs: Iterable[ServiceSpec],
    pools: Sequence[inputs.Pool],
    *,
    oracle: CapacityOracle = perf_oracle,
    current_replicas: Mapping[inputs.CandidateKey, int] | None = None,
    cache: CandidateCache | None = None,
    workers: int | None = None,
    accelerators: Mapping[str, catalog.Accelerator] | None = None,
    headroom: bool = True,
) -> CandidateSet:
    """Ask the oracle about every (service, role, pool, precision, tp) and assemble the solver's problem.

    `accelerators` holds the chips pools declared by their specs (by accelerator id); other ids are
    looked up in the catalog. With `headroom`, capacity the oracle trusts less than a calibration (a chip
    predicted from its specs) is derated by trust.Trust.derate, so the plan keeps room for the error.

    `cache` (kept by the caller across re-plans, see placement.planner) holds each (service, pool)'s
    results; only the pairs missing from it are priced. `workers` > 1 prices large batches in that many
    processes (None: decide from the machine, see parallel_workers).
    """
    spec_list = list(specs)
    declared = dict(accelerators or {})
    store: CandidateCache = cache if cache is not None else {}

    def key(
        spec: ServiceSpec, pool: inputs.Pool
    ) -> tuple[ServiceSpec, inputs.Pool, catalog.Accelerator | None, bool]:
        return spec, shape_of[pool.id], declared.get(pool.accelerator), headroom

    demands: list[inputs.ServiceDemand] = []
    excluded: dict[str, str] = {}
    allowed_by_spec: list[list[inputs.Pool]] = []
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
            why = pool_allowed(spec, pool, declared)
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
        allowed_by_spec.append(allowed)
    shape_of = {pool.id: _pool_shape(pool) for pool in pools}
    keys = [pricing_key(spec) for spec in spec_list]
    missing: dict[ServiceSpec, dict[inputs.Pool, None]] = {}
    for spec, allowed in zip(keys, allowed_by_spec, strict=True):
        for pool in allowed:
            if key(spec, pool) not in store:
                missing.setdefault(spec, {})[shape_of[pool.id]] = None
    if missing:
        work = [(spec, tuple(shapes)) for spec, shapes in missing.items()]
        with _collector_paused():
            priced = _price_all(work, oracle, workers, _Context(declared, headroom))
        for (spec, shapes), results in zip(work, priced, strict=True):
            for pool, result in zip(shapes, results, strict=True):
                store[key(spec, pool)] = result
    cands: list[inputs.Candidate] = []
    rejections: list[Rejection] = []
    trusted: dict[inputs.CandidateKey, trust.Trust] = {}
    for spec, allowed in zip(keys, allowed_by_spec, strict=True):
        for pool in allowed:
            for cand, rejection, confidence in store[key(spec, pool)]:
                if cand is not None:
                    cands.append(cand if cand.pool == pool.id else replace(cand, pool=pool.id))
                    if confidence is not None:
                        trusted[inputs.CandidateKey(spec.id, cand.role, pool.id, cand.precision, cand.tp)] = (
                            confidence
                        )
                elif rejection is not None:
                    rejections.append(
                        rejection if rejection.pool == pool.id else replace(rejection, pool=pool.id)
                    )
    problem = inputs.FleetProblem(
        services=tuple(demands),
        pools=tuple(pools),
        candidates=tuple(cands),
        current_replicas=dict(current_replicas or {}),
    )
    return CandidateSet(problem, {s.id: s for s in spec_list}, tuple(rejections), excluded, trusted, headroom)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while pricing.

    Pricing allocates millions of small acyclic objects (questions, answers, candidates); each allocation
    burst triggers collections that walk every live object of the process (an operator holds hundreds of
    thousands), which measured a third of candidate building's CPU time. Reference counting still frees
    everything; cycles made meanwhile are collected when the collector resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Pricing runs in worker processes only from this many (service, pool) pairs: below it, starting processes
# costs more than it saves (a few hundred ms each).
PARALLEL_MIN_PAIRS = 1000
# Services priced in one batch: large enough for numpy to amortise its per-call cost, small enough to
# bound memory (a batch's arrays grow with its questions) and to balance the worker processes.
PRICE_SLICE_SERVICES = 50


def parallel_workers(pairs: int) -> int:
    """Processes worth using for `pairs` (service, pool) pairs: the usable cores when the batch is large."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return cores if pairs >= PARALLEL_MIN_PAIRS and cores > 1 else 1


Work = Sequence[tuple[ServiceSpec, tuple[inputs.Pool, ...]]]


@dataclass(frozen=True)
class _Context:
    """What pricing needs beyond the work: the chips pools declare, and whether to keep trust headroom."""

    declared: Mapping[str, catalog.Accelerator]
    headroom: bool


def _price_all(
    work: Work, oracle: CapacityOracle, workers: int | None, context: _Context
) -> list[list[PoolResults]]:
    """_price over `work` in slices of PRICE_SLICE_SERVICES services (bounded memory), over worker
    processes when it pays and the oracle can travel (fork keeps the parent's performance-model cache)."""
    pairs = sum(len(shapes) for _, shapes in work)
    count = parallel_workers(pairs) if workers is None else workers
    slices = [work[i : i + PRICE_SLICE_SERVICES] for i in range(0, len(work), PRICE_SLICE_SERVICES)]
    if count <= 1 or len(slices) < 2 or not isinstance(oracle, PerfOracle | ProfileOracle):
        return [result for piece in slices for result in _price(piece, oracle, context)]
    fork = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=count, mp_context=fork) as executor:
        parts = list(executor.map(_price, slices, itertools.repeat(oracle), itertools.repeat(context)))
    return [result for part in parts for result in part]


# A configuration shape: (service index in the work, accelerator, role, precision, tp).
_Shape = tuple[int, str, inputs.Role, str, int]


def _price(work: Work, oracle: CapacityOracle, context: _Context) -> list[list[PoolResults]]:
    """Candidates and rejections of every (service, pool) in `work`, asking the oracle in two batches.

    Every (service, accelerator, role, precision, tp) is asked about each request-size bucket, the oracle
    choosing each bucket's best prefill chunk. A Deployment runs one chunk, so where buckets chose
    different chunks every bucket is priced again at each of them, and the candidate keeps the one that
    serves the most traffic with the fewest replicas (the engine default unless another saves at least
    perf.PREFILL_CHUNK_MIN_GAIN).
    """
    shapes: dict[_Shape, inputs.Pool] = {}
    for i, (spec, pools) in enumerate(work):
        for pool in pools:
            for role in _roles(spec.serving):
                for precision in spec.precisions:
                    for tp in spec.tp_degrees:
                        if tp <= _max_tp(pool, context.declared):
                            shapes.setdefault((i, pool.accelerator, role, precision, tp), pool)
    # The performance model's shapes go through the block path (arrays per configuration); the rest (measured
    # profiles, calibrated or test oracles) are asked query by query.
    made = _price_blocks(work, shapes, oracle, context)
    generic = [shape for shape in shapes if shape not in made]
    for shape, (priced, chosen) in _price_queries(work, generic, oracle, context).items():
        spec = work[shape[0]][0]
        _, _, role, precision, tp = shape
        made[shape] = _candidate(spec, shapes[shape], role, precision, tp, priced, chosen, context)
    out: list[list[PoolResults]] = []
    for i, (spec, pools) in enumerate(work):
        per_pool: list[PoolResults] = []
        for pool in pools:
            results = []
            for role in _roles(spec.serving):
                for precision in spec.precisions:
                    for tp in spec.tp_degrees:
                        if tp > _max_tp(pool, context.declared):
                            continue
                        results.append(_for_pool(made[(i, pool.accelerator, role, precision, tp)], pool))
            per_pool.append(tuple(results))
        out.append(per_pool)
    return out


def _better(score: tuple[float, float], best: tuple[float, float] | None) -> bool:
    """Whether a chunk scoring `score` (traffic served, replicas per traffic) beats the best so far: more
    traffic, or as much with PREFILL_CHUNK_MIN_GAIN fewer replicas (chunks are tried largest first)."""
    return (
        best is None
        or score[0] > best[0] + 1e-12
        or (score[0] >= best[0] - 1e-12 and score[1] * (1.0 + perf.PREFILL_CHUNK_MIN_GAIN) < best[1])
    )


def _price_queries(
    work: Work, shapes: Sequence[_Shape], oracle: CapacityOracle, context: _Context
) -> dict[_Shape, tuple[list[Capacity], int | None]]:
    """Each shape's answers per bucket and its chunk, asking the oracle query by query (see _price)."""
    if not shapes:
        return {}
    first = _ask_shapes(work, [(shape, None) for shape in shapes], oracle, context)
    answers = {shape: first[(shape, None)] for shape in shapes}
    # Shapes whose buckets chose different chunks: price every bucket at each of them.
    options: dict[_Shape, tuple[int, ...]] = {}
    for shape in shapes:
        chunks = {
            a.prefill_chunk_tokens
            for a in _effective(work[shape[0]][0], answers[shape])
            if a and a.max_rps > 0
        }
        if len(chunks) > 1 and None not in chunks:
            options[shape] = tuple(sorted((c for c in chunks if c is not None), reverse=True))
    fixed_shapes = [(shape, chunk) for shape, chunks in options.items() for chunk in chunks]
    # A bucket whose own answer already chose that chunk is not asked again: it is the answer at that chunk.
    known: dict[tuple[_Shape, int | None], Sequence[Capacity | None]] = {
        (shape, chunk): [
            a if a.max_rps > 0.0 and a.prefill_chunk_tokens == chunk else None for a in answers[shape]
        ]
        for shape, chunk in fixed_shapes
    }
    fixed = _ask_shapes(work, fixed_shapes, oracle, context, known)
    final: dict[_Shape, tuple[list[Capacity], int | None]] = {}
    for shape in shapes:
        spec = work[shape[0]][0]
        if shape not in options:
            chunks = {a.prefill_chunk_tokens for a in _effective(spec, answers[shape]) if a and a.max_rps > 0}
            final[shape] = (answers[shape], chunks.pop() if len(chunks) == 1 else None)
            continue
        best: tuple[list[Capacity], int | None] | None = None
        best_score: tuple[float, float] | None = None
        for chunk in options[shape]:
            priced = fixed[(shape, chunk)]
            score = _score(spec, _effective(spec, priced))
            if _better(score, best_score):
                best, best_score = (priced, chunk), score
        assert best is not None
        final[shape] = best
    return final


# --- the performance model's shapes as blocks ---------------------------------------------------------------
#
# _price_queries asks one Query per (shape, bucket, chunk) and gets a Capacity back: ~1,000 questions per
# service, each crossing Query -> RateQuestion -> RatePrediction -> Capacity. Where the performance model
# answers (perf_oracle, directly or as a profile table's fallback where the table has no row), a shape's
# buckets are asked as one perf.RateBlock instead and read back as rows; Python objects are made only for
# the candidates and rejections. Same waves, same masks, same chunk choice as _price_queries
# (tests/unit/test_candidate_blocks.py compares the two on generated fleets).


@dataclass(frozen=True)
class _SpecSizes:
    """A service's buckets as the model is asked about them (computed once per service)."""

    # Per bucket: (mean prompt, mean output, prompt p99, output p99) tokens, as _Questions builds them.
    rows: tuple[tuple[float, float, float, float], ...]
    # Buckets smallest first (prompt + output upper edges, then index), as _ask_shapes orders them.
    order: tuple[int, ...]
    # Per bucket: its (prompt, output) upper edges, and the buckets before it in `order` it is at least
    # as large as (a failure there rules it out: _effective).
    edges: tuple[tuple[int, int], ...]
    below: tuple[tuple[int, ...], ...]


def _spec_sizes(spec: ServiceSpec) -> _SpecSizes | None:
    """The service's bucket sizes (None when one is not a valid size: the query path reports it)."""
    buckets = spec.workload.buckets
    rows = []
    for b in buckets:
        prompt_mean = b.prompt_mean or float(b.prompt_tokens)
        output_mean = b.output_mean_tokens or float(b.output_tokens)
        row = (
            max(1.0, prompt_mean),
            max(1.0, output_mean),
            max(float(b.prompt_tokens), prompt_mean, 1.0),
            max(float(b.output_tokens), output_mean, 1.0),
        )
        if not all(math.isfinite(x) for x in row):
            return None
        rows.append(row)
    order = tuple(
        sorted(range(len(buckets)), key=lambda k: (buckets[k].prompt_tokens + buckets[k].output_tokens, k))
    )
    edges = tuple((b.prompt_tokens, b.output_tokens) for b in buckets)
    rank = {k: n for n, k in enumerate(order)}
    below = tuple(
        tuple(j for j in order[: rank[k]] if edges[k][0] >= edges[j][0] and edges[k][1] >= edges[j][1])
        for k in range(len(buckets))
    )
    return _SpecSizes(tuple(rows), order, edges, below)


@dataclass
class _Block:
    """One shape priced as a block: the question's parts and what its answers made of it."""

    spec: ServiceSpec
    pool: inputs.Pool
    role: inputs.Role
    precision: str
    tp: int
    config: perf.ReplicaConfig
    slo: perf.LatencySlo
    versioned: engine_version.VersionedEfficiency
    sizes: _SpecSizes
    infeasible: str | None = None


# Per bucket: the model's answer, None where a failure at a smaller size rules the bucket out.
_Answers = list[perf.RowAnswer | None]


def _block_eligible(oracle: CapacityOracle) -> Callable[[ServiceSpec, _Shape], bool] | None:
    """Which shapes the performance model answers for this oracle (None: none, ask query by query)."""
    if type(oracle) is PerfOracle:
        return lambda spec, shape: True
    if type(oracle) is ProfileOracle and type(oracle.fallback) is PerfOracle:
        index = oracle.index
        # A profile row for the configuration answers (or annotates) it: those go query by query.
        return lambda spec, shape: (spec.model, shape[1], shape[3], shape[4], shape[2]) not in index
    return None


def _price_blocks(
    work: Work, shapes: Mapping[_Shape, inputs.Pool], oracle: CapacityOracle, context: _Context
) -> dict[_Shape, Result]:
    """The candidate or rejection of every shape the performance model answers (see the section comment)."""
    eligible = _block_eligible(oracle)
    if eligible is None:
        return {}
    configs: dict[
        tuple[object, ...], tuple[perf.ReplicaConfig, engine_version.VersionedEfficiency] | None
    ] = {}
    slos: dict[tuple[float, float], perf.LatencySlo | None] = {}
    sizes: dict[int, _SpecSizes | None] = {}
    blocks: dict[_Shape, _Block] = {}
    for shape, pool in shapes.items():
        i, accelerator, role, precision, tp = shape
        spec = work[i][0]
        if not eligible(spec, shape):
            continue
        if i not in sizes:
            sizes[i] = _spec_sizes(spec)
        spec_sizes = sizes[i]
        model: str | catalog.ModelArch = spec.model_arch if spec.model_arch is not None else spec.model
        chip: str | catalog.Accelerator = context.declared.get(accelerator) or accelerator
        key = (model, chip, precision, tp, role, spec.engine, spec.engine_version)
        if key not in configs:
            try:
                config = perf.ReplicaConfig(model, chip, precision, tp, role, spec.engine)
                perf.infeasibility(config)
                versioned = engine_version.efficiency(
                    config.accelerator_spec, spec.engine, spec.engine_version
                )
                configs[key] = (config, versioned)
            except (catalog.UnknownIdError, perf.InvalidConfigError, ValueError):
                configs[key] = None  # malformed: the query path says why, bucket by bucket
        slo_key = (spec.ttft_p99_ms, spec.itl_p99_ms)
        if slo_key not in slos:
            try:
                slos[slo_key] = perf.LatencySlo(*slo_key)
            except ValueError:
                slos[slo_key] = None
        made, slo = configs[key], slos[slo_key]
        if made is None or slo is None or spec_sizes is None or not spec_sizes.rows:
            continue
        blocks[shape] = _Block(spec, pool, role, precision, tp, made[0], slo, made[1], spec_sizes)
    if not blocks:
        return {}
    items = list(blocks.values())
    answers = _ask_blocks(items, [None] * len(items), None)
    # Shapes whose buckets chose different chunks: every bucket priced again at each (as _price_queries).
    final: list[tuple[_Answers, list[bool], int | None]] = []
    fixed_items: list[tuple[int, int]] = []
    effective = [_block_effective(b, a) for b, a in zip(items, answers, strict=True)]
    options: dict[int, tuple[int, ...]] = {}
    for n, (rows, mask) in enumerate(zip(answers, effective, strict=True)):
        chunks = {
            a.prefill_chunk_tokens for a, m in zip(rows, mask, strict=True) if m and a and a.max_rps > 0
        }
        if len(chunks) > 1 and None not in chunks:
            options[n] = tuple(sorted((c for c in chunks if c is not None), reverse=True))
            fixed_items.extend((n, c) for c in options[n])
    fixed = _ask_blocks(
        [items[n] for n, _ in fixed_items],
        [c for _, c in fixed_items],
        [
            [
                a if a is not None and a.max_rps > 0.0 and a.prefill_chunk_tokens == c else None
                for a in answers[n]
            ]
            for n, c in fixed_items
        ],
    )
    at_chunk = {item: rows for item, rows in zip(fixed_items, fixed, strict=True)}
    for n, block in enumerate(items):
        if n not in options:
            rows, mask = answers[n], effective[n]
            chunks = {
                a.prefill_chunk_tokens for a, m in zip(rows, mask, strict=True) if m and a and a.max_rps > 0
            }
            final.append((rows, mask, chunks.pop() if len(chunks) == 1 else None))
            continue
        best: tuple[_Answers, list[bool], int | None] | None = None
        best_score: tuple[float, float] | None = None
        for chunk in options[n]:
            rows = at_chunk[(n, chunk)]
            mask = _block_effective(block, rows)
            score = _block_score(block.spec, rows, mask)
            if _better(score, best_score):
                best, best_score = (rows, mask, chunk), score
        assert best is not None
        final.append(best)
    results = [
        _block_candidate(block, rows, mask, chunk, context)
        for block, (rows, mask, chunk) in zip(items, final, strict=True)
    ]
    _explain_misses(results, items)
    return {
        shape: (cand, rejection, confidence)
        for shape, (cand, rejection, confidence, _) in zip(blocks, results, strict=True)
    }


def _ask_blocks(
    items: Sequence[_Block], chunks: Sequence[int | None], known: Sequence[_Answers] | None
) -> list[_Answers]:
    """Each block's answer per bucket at a chunk (None: the model chooses), in _ask_shapes' two waves: the
    smallest bucket first, then the buckets a failure there does not rule out; answers in `known` are used
    as they are."""
    out: list[_Answers] = [[None] * len(b.sizes.rows) for b in items]
    for wave in (0, 1):
        asked: list[perf.RateBlock] = []
        slots: list[tuple[int, list[int]]] = []
        for n, block in enumerate(items):
            order = block.sizes.order
            if wave == 0:
                wanted = list(order[:1])
            elif block.infeasible is not None:
                continue
            else:
                first = out[n][order[0]]
                assert first is not None
                if first.max_rps <= 0.0:
                    p, o = block.sizes.edges[order[0]]
                    edges = block.sizes.edges
                    wanted = [k for k in order[1:] if not (edges[k][0] >= p and edges[k][1] >= o)]
                else:
                    wanted = list(order[1:])
            given = known[n] if known is not None else None
            if given is not None:
                for k in wanted:
                    out[n][k] = given[k]
                wanted = [k for k in wanted if given[k] is None]
            if wanted:
                rows = block.sizes.rows
                asked.append(
                    perf.RateBlock(
                        block.config,
                        block.slo,
                        [rows[k] for k in wanted],
                        block.versioned.efficiency,
                        chunks[n],
                    )
                )
                slots.append((n, wanted))
        for (n, wanted), answer in zip(slots, perf.block_rates(asked), strict=True):
            items[n].infeasible = answer.infeasible
            for k, row in zip(wanted, answer.rows, strict=True):
                out[n][k] = row
    return out


def _block_effective(block: _Block, rows: _Answers) -> list[bool]:
    """The buckets _effective keeps: asked, and not at least as large as a smaller bucket that failed (every
    bucket but the smallest when the configuration cannot run at all)."""
    if block.infeasible is not None:
        smallest = block.sizes.order[0]
        return [k == smallest for k in range(len(rows))]
    failed = [a is not None and a.max_rps <= 0.0 for a in rows]
    if not any(failed):
        return [a is not None for a in rows]
    below = block.sizes.below
    return [a is not None and not any(failed[j] for j in below[k]) for k, a in enumerate(rows)]


def _block_score(spec: ServiceSpec, rows: _Answers, mask: Sequence[bool]) -> tuple[float, float]:
    """_score of a block's answers."""
    served = 0.0
    load = 0.0
    for f, a, m in zip(spec.workload.fractions, rows, mask, strict=True):
        if m and a is not None and a.max_rps > 0.0:
            served += f
            load += f / a.max_rps
    return served, load


# A block's result before the explanations of its misses: (candidate, rejection, trust, bucket to explain).
_BlockResult = tuple[inputs.Candidate | None, Rejection | None, trust.Trust | None, int | None]


def _block_candidate(
    block: _Block, rows: _Answers, mask: Sequence[bool], chunk: int | None, context: _Context
) -> _BlockResult:
    """_candidate for a block (the rejection's zero-load latencies are filled in by _explain_misses)."""
    spec, pool, role = block.spec, block.pool, block.role
    buckets = spec.workload.buckets
    rates = spec.workload.bucket_rps
    served = [m and a is not None and a.max_rps > 0.0 for a, m in zip(rows, mask, strict=True)]
    caps = [0.0] * len(rows)
    ttfts: list[float | None] = [None] * len(rows)
    itls: list[float | None] = [None] * len(rows)
    least: trust.Trust | None = None
    if any(served):
        index = [k for k, ok in enumerate(served) if ok]
        sizes = block.sizes.rows
        said = trust.assess_sizes(
            block.config, [sizes[k][0] for k in index], [sizes[k][1] for k in index], block.versioned
        )
        worst_error, least_k = -math.inf, index[0]
        for k, (error, derate) in zip(index, said, strict=True):
            a = rows[k]
            assert a is not None
            caps[k] = a.max_rps * (derate if context.headroom else 1.0)
            ttfts[k] = a.ttft_p99_ms if role != "decode" else None
            itls[k] = a.itl_p99_ms if role != "prefill" else None
            if error > worst_error:
                worst_error, least_k = error, k
        least = trust.assess(block.config, sizes[least_k][0], sizes[least_k][1], block.versioned)
    runnable = block.infeasible is None
    if any(c > 0.0 for c in caps) or (spec.min_replicas > 0 and sum(rates) == 0.0 and runnable):
        return (
            inputs.Candidate(
                service=spec.id,
                role=role,
                pool=pool.id,
                accelerator=pool.accelerator,
                precision=block.precision,
                tp=block.tp,
                max_rps_per_bucket=tuple(caps),
                price_per_hour=pool.price_per_device_hour * block.tp,
                ttft_p99_ms_per_bucket=tuple(ttfts),
                itl_p99_ms_per_bucket=tuple(itls),
                engine=spec.engine,
                source="perf",
                engine_config=_engine_config(
                    spec,
                    context.declared.get(pool.accelerator) or pool.accelerator,
                    role,
                    block.precision,
                    block.tp,
                    chunk,
                    True,
                ),
            ),
            None,
            least,
            None,
        )
    first_miss: int | None = None
    for k in block.sizes.order:
        a = rows[k]
        if (
            mask[k]
            and a is not None
            and a.max_rps <= 0.0
            and (first_miss is None or (rates[first_miss] <= 0.0 < rates[k]))
        ):
            first_miss = k
    worst = rows[first_miss] if first_miss is not None else None
    reason = worst.reason if worst is not None and worst.reason else "SLO not met"
    return (
        None,
        Rejection(
            service=spec.id,
            role=role,
            pool=pool.id,
            accelerator=pool.accelerator,
            precision=block.precision,
            tp=block.tp,
            reason=reason,
            prompt_tokens=buckets[first_miss].prompt_tokens if first_miss is not None else None,
        ),
        None,
        first_miss if runnable else None,
    )


def _explain_misses(results: list[_BlockResult], items: Sequence[_Block]) -> None:
    """Rejections' latencies at (near) zero load for the request that missed (PerfOracle.batch's), in one
    call to the model; in place."""
    misses = [
        (n, k) for n, (_, rejection, _, k) in enumerate(results) if rejection is not None and k is not None
    ]
    loads = perf.latencies_at(
        [
            (
                items[n].config,
                perf.RequestSizes(
                    items[n].spec.workload.buckets[k].prompt_tokens,
                    items[n].spec.workload.buckets[k].output_tokens,
                ),
                ZERO_LOAD_RPS,
            )
            for n, k in misses
        ]
    )
    for (n, _), load in zip(misses, loads, strict=True):
        cand, rejection, confidence, k = results[n]
        if load is not None and rejection is not None:
            rejection = replace(
                rejection, zero_load_ttft_p99_ms=load.ttft_p99_ms, zero_load_itl_p99_ms=load.itl_p99_ms
            )
        results[n] = (cand, rejection, confidence, k)


def _for_pool(result: Result, pool: inputs.Pool) -> Result:
    """A configuration's candidate or rejection in another pool of the same accelerator."""
    cand, rejection, confidence = result
    if cand is not None and cand.pool != pool.id:
        cand = replace(cand, pool=pool.id, price_per_hour=pool.price_per_device_hour * cand.tp)
    if rejection is not None and rejection.pool != pool.id:
        rejection = replace(rejection, pool=pool.id)
    return cand, rejection, confidence


def _ask_shapes(
    work: Work,
    items: Sequence[tuple[_Shape, int | None]],
    oracle: CapacityOracle,
    context: _Context,
    known: Mapping[tuple[_Shape, int | None], Sequence[Capacity | None]] | None = None,
) -> dict[tuple[_Shape, int | None], list[Capacity]]:
    """Each (shape, chunk)'s answer per bucket (a chunk of None lets the oracle choose each bucket's).

    Two oracle batches: every shape's smallest bucket first; then the buckets no failure rules out (a
    failure the oracle vouches is size-monotone rules out every bucket at least as large). Identical
    queries are asked once; answers in `known` (per item and bucket, None: unknown) are not asked. A bucket
    ruled out gets _NOT_ASKED, which _effective skips.
    """
    answers: dict[tuple[_Shape, int | None], list[Capacity]] = {}
    orders: dict[tuple[_Shape, int | None], list[int]] = {}
    for item in items:
        buckets = work[item[0][0]][0].workload.buckets
        answers[item] = [_NOT_ASKED] * len(buckets)
        orders[item] = sorted(
            range(len(buckets)), key=lambda k: (buckets[k].prompt_tokens + buckets[k].output_tokens, k)
        )
    for wave in (0, 1):
        asked: dict[Query, int] = {}
        slots: list[tuple[tuple[_Shape, int | None], int, int]] = []
        for item in items:
            (i, accelerator, role, precision, tp), chunk = item
            spec = work[i][0]
            buckets = spec.workload.buckets
            order = orders[item]
            if wave == 0:
                wanted = order[:1]
            elif answers[item][order[0]].any_size:
                wanted = []
            else:
                failed = [
                    (buckets[k].prompt_tokens, buckets[k].output_tokens)
                    for k in order[:1]
                    if answers[item][k].max_rps <= 0.0 and answers[item][k].size_monotone
                ]
                wanted = [
                    k
                    for k in order[1:]
                    if not any(
                        buckets[k].prompt_tokens >= p and buckets[k].output_tokens >= o for p, o in failed
                    )
                ]
            given = known.get(item) if known is not None else None
            for k in wanted:
                if given is not None and (answer := given[k]) is not None:
                    answers[item][k] = answer
                    continue
                bucket = buckets[k]
                query = Query(
                    model=spec.model,
                    accelerator=accelerator,
                    precision=precision,
                    tp=tp,
                    role=role,
                    engine=spec.engine,
                    prompt_tokens=bucket.prompt_tokens,
                    output_tokens=bucket.output_tokens,
                    ttft_p99_ms=spec.ttft_p99_ms,
                    itl_p99_ms=spec.itl_p99_ms,
                    model_arch=spec.model_arch,
                    prompt_mean_tokens=bucket.prompt_mean,
                    output_mean_tokens=bucket.output_mean_tokens or None,
                    prefill_chunk_tokens=chunk,
                    accelerator_spec=context.declared.get(accelerator),
                    engine_version=spec.engine_version,
                )
                slots.append((item, k, asked.setdefault(query, len(asked))))
        replies = ask(oracle, list(asked))
        for item, k, q in slots:
            answers[item][k] = replies[q]
    return answers


# Placeholder for a bucket not asked because a smaller failed bucket rules it out (never used as capacity).
_NOT_ASKED = Capacity(0.0, None, None, "not asked", "", size_monotone=True)


def _effective(spec: ServiceSpec, answers: Sequence[Capacity]) -> list[Capacity | None]:
    """The answers a bucket-by-bucket search would use: None for a bucket at least as large as one that failed
    where the oracle vouches that larger requests never do better (size_monotone)."""
    buckets = spec.workload.buckets
    out: list[Capacity | None] = [None] * len(buckets)
    failed: list[tuple[int, int]] = []
    for k in sorted(
        range(len(buckets)), key=lambda k: (buckets[k].prompt_tokens + buckets[k].output_tokens, k)
    ):
        bucket = buckets[k]
        if any(bucket.prompt_tokens >= p and bucket.output_tokens >= o for p, o in failed):
            continue
        out[k] = answers[k]
        if answers[k].max_rps <= 0.0 and answers[k].size_monotone:
            failed.append((bucket.prompt_tokens, bucket.output_tokens))
            if answers[k].any_size:
                break
    return out


def _score(spec: ServiceSpec, answers: Sequence[Capacity | None]) -> tuple[float, float]:
    """(traffic share served, replicas per unit of traffic) of one configuration over the buckets."""
    fractions = spec.workload.fractions
    served = sum(f for f, a in zip(fractions, answers, strict=True) if a is not None and a.max_rps > 0.0)
    load = sum(
        f / a.max_rps for f, a in zip(fractions, answers, strict=True) if a is not None and a.max_rps > 0.0
    )
    return served, load


def _engine_config(
    spec: ServiceSpec,
    accelerator: str | catalog.Accelerator,
    role: inputs.Role,
    precision: str,
    tp: int,
    chunk: int | None,
    modelled: bool,
) -> inputs.EngineConfig:
    """The engine settings a candidate was priced with (see inputs.EngineConfig)."""
    model: str | catalog.ModelArch = spec.model_arch if spec.model_arch is not None else spec.model
    config = perf.ReplicaConfig(model, accelerator, precision, tp, role, spec.engine)
    try:
        if modelled:
            # The sequence slots the admission queue assumed at the service's mean request, under the chunk.
            prompt = spec.prompt_mean_tokens or _mean_prompt(spec.workload)
            output = spec.output_mean_tokens or spec.workload.output_mean_tokens
            slots: int | None = perf.max_batch(config, prompt, output, prefill_chunk_tokens=chunk) or None
        else:
            # A measured profile was measured with the engine's defaults.
            slots = perf.engine_traits(spec.engine, config.accelerator_spec).max_batch
    except (catalog.UnknownIdError, perf.InvalidConfigError, KeyError):
        slots = None
    return inputs.EngineConfig(
        prefill_chunk_tokens=chunk, max_num_seqs=slots, max_model_len=spec.max_model_len
    )


def _mean_prompt(wl: workload.BucketedWorkload) -> float:
    """Mean prompt length over all requests."""
    return sum(f * b.prompt_mean for f, b in zip(wl.fractions, wl.buckets, strict=True)) or 1.0


def _candidate(
    spec: ServiceSpec,
    pool: inputs.Pool,
    role: inputs.Role,
    precision: str,
    tp: int,
    priced: Sequence[Capacity],
    chunk: int | None,
    context: _Context,
) -> Result:
    """The candidate for one configuration priced per bucket, or the reason it cannot serve any bucket.

    With headroom, each bucket's capacity is derated by how far its answer can be trusted (Trust.derate).
    """
    buckets = spec.workload.buckets
    rates = spec.workload.bucket_rps
    answers = _effective(spec, priced)
    caps = [
        a.max_rps * (a.trust.derate if context.headroom and a.trust is not None else 1.0)
        if a is not None
        else 0.0
        for a in answers
    ]
    said = [a.trust for a in answers if a is not None and a.max_rps > 0.0 and a.trust is not None]
    least = max(said, key=lambda t: t.typical_error, default=None)
    sources = sorted({a.source for a in answers if a is not None})
    first_miss: tuple[Capacity, int] | None = None
    for k in sorted(
        range(len(buckets)), key=lambda k: (buckets[k].prompt_tokens + buckets[k].output_tokens, k)
    ):
        answer = answers[k]
        if (
            answer is not None
            and answer.max_rps <= 0.0
            and (first_miss is None or (rates[first_miss[1]] <= 0.0 < rates[k]))
        ):
            first_miss = (answer, k)
    worst = first_miss[0] if first_miss is not None else None
    # With no demand a replica floor still needs somewhere to run: any configuration that can run at all.
    runnable = not any(a is not None and a.any_size for a in answers)
    if any(c > 0.0 for c in caps) or (spec.min_replicas > 0 and sum(rates) == 0.0 and runnable):
        modelled = any(a is not None and a.modelled for a in answers)
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
                ttft_p99_ms_per_bucket=tuple(a.ttft_p99_ms if a is not None else None for a in answers),
                itl_p99_ms_per_bucket=tuple(a.itl_p99_ms if a is not None else None for a in answers),
                engine=spec.engine,
                source=", ".join(sources),
                engine_config=_engine_config(
                    spec,
                    context.declared.get(pool.accelerator) or pool.accelerator,
                    role,
                    precision,
                    tp,
                    chunk,
                    modelled,
                ),
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
