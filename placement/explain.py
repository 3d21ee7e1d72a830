"""Why each service landed where it did: the runners-up with their cost, or the SLO they miss."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from placement import candidates
from placement.solver import allocation, inputs

DEFAULT_RUNNERS_UP = 3


@dataclass(frozen=True)
class RunnerUp:
    """An accelerator the service could have used instead, and what that would cost or why it fails."""

    accelerator: str
    pool: str
    tp: int
    precision: str
    # $/h to serve the whole service on this accelerator alone (None when it cannot).
    price_per_hour: float | None
    # Why it cannot serve the service (None when it can).
    misses: str | None


@dataclass(frozen=True)
class Explanation:
    """One sentence on the outcome, plus the alternatives considered."""

    service: str
    summary: str
    runners_up: tuple[RunnerUp, ...]


def _alone(c: inputs.Candidate, rates: Sequence[float]) -> float | None:
    """$/h of serving all these rates on c alone, or None when some bucket with traffic is out of reach."""
    load = 0.0
    for r, cap in zip(rates, c.max_rps_per_bucket, strict=True):
        if r > 0.0:
            if cap <= 0.0:
                return None
            load += r / cap
    return max(1, math.ceil(load - inputs.FEASIBILITY_TOLERANCE)) * c.price_per_hour


def _tokens(n: int) -> str:
    """1024 -> '1k', 8192 -> '8k', 300 -> '300'."""
    return f"{n / 1024:.0f}k" if n >= 1024 and n % 1024 == 0 else f"{n:,}"


def _alternatives(cset: candidates.CandidateSet, service: str) -> list[RunnerUp]:
    """Cheapest way to serve the whole service per accelerator, and the best miss of the rest."""
    demand = next(s for s in cset.problem.services if s.id == service)
    rates = demand.bucket_rps
    by_acc: dict[str, dict[str, list[tuple[float, inputs.Candidate]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for c in cset.problem.candidates:
        if c.service != service:
            continue
        price = _alone(c, rates)
        if price is not None:
            by_acc[c.accelerator][c.role].append((price, c))
    out: list[RunnerUp] = []
    for acc, roles in by_acc.items():
        options: list[tuple[float, inputs.Candidate]] = []
        if roles.get("aggregated"):
            options.append(min(roles["aggregated"], key=lambda t: t[0]))
        if roles.get("prefill") and roles.get("decode"):
            pre = min(roles["prefill"], key=lambda t: t[0])
            dec = min(roles["decode"], key=lambda t: t[0])
            options.append((pre[0] + dec[0], dec[1]))
        if options:
            price, best = min(options, key=lambda t: t[0])
            out.append(RunnerUp(acc, best.pool, best.tp, best.precision, price, None))
    servable = {r.accelerator for r in out}
    misses: dict[str, candidates.Rejection] = {}
    for rej in cset.rejections:
        if rej.service != service or rej.accelerator in servable:
            continue
        known = misses.get(rej.accelerator)
        if known is None or (_overshoot(cset, rej), -rej.tp) < (_overshoot(cset, known), -known.tp):
            misses[rej.accelerator] = rej
    for acc, rej in misses.items():
        out.append(RunnerUp(acc, rej.pool, rej.tp, rej.precision, None, rej.reason))
    out.sort(key=lambda r: (r.price_per_hour is None, r.price_per_hour or 0.0, r.accelerator))
    return out


def _overshoot(cset: candidates.CandidateSet, rej: candidates.Rejection) -> float:
    """How far a rejected configuration is from the SLO at zero load (inf when unknown)."""
    spec = cset.specs[rej.service]
    ratios = []
    if rej.zero_load_ttft_p99_ms is not None:
        ratios.append(rej.zero_load_ttft_p99_ms / spec.ttft_p99_ms)
    if rej.zero_load_itl_p99_ms is not None:
        ratios.append(rej.zero_load_itl_p99_ms / spec.itl_p99_ms)
    return max(ratios) if ratios else math.inf


def _unplaceable(cset: candidates.CandidateSet, service: str) -> str:
    """One sentence: the binding reason no configuration serves this service at all."""
    spec = cset.specs[service]
    if service in cset.excluded:
        return f"cannot be placed: {cset.excluded[service]}."
    rejections = [r for r in cset.rejections if r.service == service]
    if not rejections:
        return f"cannot be placed: no pool offers a configuration for {spec.model}."
    # Closest to the SLO; among misses without latencies (does not fit), the most devices per replica.
    best = min(rejections, key=lambda r: (_overshoot(cset, r), -r.tp))
    prompt = best.prompt_tokens or (
        max(b.prompt_tokens for b in spec.workload.buckets) if spec.workload.buckets else 0
    )
    where = f"{best.accelerator} tp{best.tp} {best.precision}"
    if best.zero_load_ttft_p99_ms is not None and best.zero_load_ttft_p99_ms > spec.ttft_p99_ms:
        return (
            f"no pool meets TTFT p99 {spec.ttft_p99_ms:g} ms for {spec.model} "
            f"at {_tokens(prompt)}-token prompts; the best is {where} at {best.zero_load_ttft_p99_ms:.0f} ms."
        )
    if best.zero_load_itl_p99_ms is not None and best.zero_load_itl_p99_ms > spec.itl_p99_ms:
        return (
            f"no pool meets ITL p99 {spec.itl_p99_ms:g} ms for {spec.model}; "
            f"the best is {where} at {best.zero_load_itl_p99_ms:.1f} ms."
        )
    return f"no pool can serve {spec.model}: on {where}, {best.reason}."


def _uncovered_sentence(cset: candidates.CandidateSet, service: str) -> str | None:
    """When only some request sizes are unservable: which, in one sentence."""
    demand = next(s for s in cset.problem.services if s.id == service)
    spec = cset.specs[service]
    mine = [c for c in cset.problem.candidates if c.service == service]
    if not mine:
        return None

    def coverable(k: int) -> bool:
        able = {c.role for c in mine if c.max_rps_per_bucket[k] > 0.0}
        return "aggregated" in able or {"prefill", "decode"} <= able

    missing = [k for k, r in enumerate(demand.bucket_rps) if r > 0.0 and not coverable(k)]
    if not missing:
        return None
    smallest = min(spec.workload.buckets[k].prompt_tokens for k in missing)
    share = sum(demand.bucket_rps[k] for k in missing) / max(demand.requests_per_second, 1e-12)
    return (
        f"{share:.1%} of requests (prompts up to {_tokens(smallest)} tokens and beyond) meet the SLO "
        f"on no pool (TTFT p99 {spec.ttft_p99_ms:g} ms, ITL p99 {spec.itl_p99_ms:g} ms) and go unserved."
    )


def explain(
    cset: candidates.CandidateSet, plan: allocation.Plan, *, runners_up: int = DEFAULT_RUNNERS_UP
) -> tuple[Explanation, ...]:
    """An explanation per service of the plan, in the plan's order."""
    # Each service's explanation reads only its own demand, candidates and rejections: split them once
    # (scanning the whole fleet's candidates per service is quadratic: seconds at a few hundred services).
    own_candidates: dict[str, list[inputs.Candidate]] = defaultdict(list)
    for c in cset.problem.candidates:
        own_candidates[c.service].append(c)
    own_rejections: dict[str, list[candidates.Rejection]] = defaultdict(list)
    for rej in cset.rejections:
        own_rejections[rej.service].append(rej)
    demands = {s.id: s for s in cset.problem.services}
    out = []
    for sp in plan.services:
        mine = dataclasses.replace(
            cset,
            problem=dataclasses.replace(
                cset.problem,
                services=(demands[sp.service],) if sp.service in demands else (),
                candidates=tuple(own_candidates.get(sp.service, ())),
            ),
            rejections=tuple(own_rejections.get(sp.service, ())),
        )
        idle = sp.demand_rps <= 0.0
        alternatives = _alternatives(mine, sp.service) if sp.service in cset.specs and not idle else []
        chosen = {a.accelerator for a in sp.assignments}
        others = tuple(r for r in alternatives if r.accelerator not in chosen)[:runners_up]
        if sp.status == "unserved" and not sp.assignments and not mine.problem.candidates:
            summary = _unplaceable(mine, sp.service)
        elif sp.status == "served":
            summary = _served(sp, others) + _trust_sentence(cset, sp)
        else:
            summary = _uncovered_sentence(mine, sp.service) or (
                f"{sp.served_rps:.2f} of {sp.demand_rps:.2f} req/s served: {sp.reason}."
            )
        out.append(Explanation(sp.service, summary, others))
    return tuple(out)


def _trust_sentence(cset: candidates.CandidateSet, sp: allocation.ServiceAllocation) -> str:
    """How far the placed configurations' predictions can be trusted (empty when the oracle did not say)."""
    parts = []
    seen: set[inputs.CandidateKey] = set()
    for a in sp.assignments:
        key = inputs.CandidateKey(sp.service, a.role, a.pool, a.precision, a.tp)
        confidence = cset.trust.get(key)
        if confidence is None or key in seen:
            continue
        seen.add(key)
        text = (
            f"{a.accelerator} tp{a.tp}: {confidence.label} (typically within {confidence.typical_error:.0%})"
        )
        if cset.headroom and confidence.derate < 1.0:
            text += f", planned at {confidence.derate:.0%} of predicted capacity"
        parts.append(text)
    return (" Trust: " + "; ".join(parts) + ".") if parts else ""


def _served(sp: allocation.ServiceAllocation, others: Sequence[RunnerUp]) -> str:
    """Sentence for a fully served service."""
    if not sp.assignments:
        return "no traffic and no replica minimum: nothing to run."
    parts = [f"{a.replicas}x {a.accelerator} tp{a.tp} {a.precision} ({a.role})" for a in sp.assignments]
    text = f"{' + '.join(parts)} at ${sp.price_per_hour:.2f}/h"
    cheaper_alone = [r for r in others if r.price_per_hour is not None]
    if cheaper_alone:
        r = cheaper_alone[0]
        assert r.price_per_hour is not None
        text += f"; next best alone is {r.accelerator} at ${r.price_per_hour:.2f}/h"
    elif others:
        text += f"; {others[0].accelerator} misses: {others[0].misses}"
    return text + "."
