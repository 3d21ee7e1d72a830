"""The rate search and its cache: the answer is where a dense scan of the load finds the SLO first missed,
and it does not depend on which question asked first."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement import perf

MODELS = ("llama-3.1-8b", "mistral-7b", "llama-3.1-70b", "mixtral-8x7b")
CHIPS = ("h100", "l4", "a100-80gb", "mi300x", "l40s", "h200", "h100/3g.40gb")
ENGINES = ("vllm", "sglang", "trtllm", "tgi")
ROLES = ("aggregated", "prefill", "decode")
# Dense scan: this many loads per decade of the load, from a vanishing load up to saturation.
SCAN_PER_DECADE = 400


@st.composite
def questions(draw: st.DrawFn) -> perf.RateQuestion:
    """A runnable fixed-budget question (the engine's own chunk) with drawn sizes and SLO."""
    config = perf.ReplicaConfig(
        draw(st.sampled_from(MODELS)),
        draw(st.sampled_from(CHIPS)),
        draw(st.sampled_from(("bf16", "fp8"))),
        draw(st.sampled_from((1, 2, 4))),
        draw(st.sampled_from(ROLES)),
        draw(st.sampled_from(ENGINES)),
    )
    try:
        runnable = perf.infeasibility(config) is None
    except perf.InvalidConfigError:
        runnable = False
    if not runnable:
        config = perf.ReplicaConfig("llama-3.1-8b", "h100", "fp8", 1, config.role, "vllm")
    prompt = draw(st.floats(50, 6000))
    output = draw(st.floats(10, 800))
    sizes = perf.RequestSizes(
        prompt, output, prompt * draw(st.floats(1.0, 4.0)), output * draw(st.floats(1.0, 3.0))
    )
    slo = perf.LatencySlo(draw(st.floats(100, 20000)), draw(st.floats(8, 300)))
    return perf.RateQuestion(config, sizes, slo, choose_prefill_chunk=False)


def _dense_bracket(question: perf.RateQuestion) -> tuple[float, float] | None:
    """(rate at the last scanned load meeting the SLO, rate at the first load missing it) from a dense scan
    of the load; None when the SLO holds up to saturation or the question is answered without a search."""
    phys = perf._physics(question.config, None)
    role = question.config.role
    rows = perf._Rows.of([(phys, question.workload)])
    pre = perf._prefill_rows(rows) if role == "prefill" else None
    with np.errstate(all="ignore"):
        top = float(perf._ceiling(rows, role, pre)[0, 0]) if role == "prefill" else float(rows.limit[0, 0])
        low = top * 1e-7
        xs = np.geomspace(low, top, int(7 * SCAN_PER_DECADE)).reshape(1, -1)
        loads = perf._loads_at(rows, role, xs, pre)
        slo = question.slo
        meets = perf._meets(
            role, loads, np.array([[slo.ttft_p99_ms]]), np.array([[slo.itl_p99_ms]]), np.array([[False]])
        )[0]
    if not meets[0] or meets.all():
        return None
    first_miss = int(np.argmin(meets))
    return float(loads.rate[0, first_miss - 1]), float(loads.rate[0, first_miss])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(questions())
def test_the_search_answers_where_a_dense_scan_first_misses(question: perf.RateQuestion) -> None:
    perf.clear_rate_cache()
    (answer,) = perf.max_rates([question])
    bracket = _dense_bracket(question)
    if bracket is None or answer.max_rps <= 0.0:
        return
    last_meeting, first_missing = bracket
    tolerance = 2 * perf.RATE_RELATIVE_TOLERANCE
    assert last_meeting * (1 - tolerance) <= answer.max_rps <= first_missing * (1 + tolerance), (
        answer,
        bracket,
    )


def _choosing(question: perf.RateQuestion) -> perf.RateQuestion:
    return perf.RateQuestion(question.config, question.workload, question.slo)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(questions(), st.sampled_from((256, 512, 1024, 2048)))
def test_an_answer_does_not_depend_on_which_question_came_first(
    question: perf.RateQuestion, chunk: int
) -> None:
    if question.config.role == "decode":
        return
    fixed = perf.RateQuestion(question.config, question.workload, question.slo, prefill_chunk_tokens=chunk)
    choosing = _choosing(question)
    perf.clear_rate_cache()
    alone = [perf.max_rates([q])[0] for q in (fixed, choosing)]
    perf.clear_rate_cache()
    choose_first = perf.max_rates([choosing])[0], perf.max_rates([fixed])[0]
    perf.clear_rate_cache()
    fixed_first = perf.max_rates([fixed])[0], perf.max_rates([choosing])[0]
    perf.clear_rate_cache()
    together = perf.max_rates([fixed, choosing])
    assert alone == [choose_first[1], choose_first[0]] == [fixed_first[0], fixed_first[1]] == together
    # The chosen budget's answer is that budget's own answer.
    chosen = alone[1]
    if chosen.max_rps > 0.0 and chosen.prefill_chunk_tokens is not None:
        at_chosen = perf.RateQuestion(
            question.config, question.workload, question.slo, prefill_chunk_tokens=chosen.prefill_chunk_tokens
        )
        assert perf.max_rates([at_chosen])[0] == chosen
    assert math.isfinite(chosen.max_rps)
