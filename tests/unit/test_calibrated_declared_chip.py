"""A point profile's calibration prices a chip a pool declares by its specs (not in the catalog), and its
answer carries placement.trust's level, so the declared-chip headroom does not derate calibrated capacity."""

from __future__ import annotations

from placement import candidates, catalog, profile_fit
from tests.unit.test_profile_fit import HOST, RUN, TINY


def test_a_calibrated_declared_chip_is_priced_and_trusted_as_calibrated() -> None:
    assert HOST.id not in catalog.ACCELERATORS
    oracle = profile_fit.CalibratedOracle([profile_fit.fit([RUN])], candidates.perf_oracle)
    query = candidates.Query(
        model=TINY.id,
        accelerator=HOST.id,
        precision="bf16",
        tp=1,
        role="aggregated",
        engine="vllm",
        prompt_tokens=200,
        output_tokens=64,
        ttft_p99_ms=5000.0,
        itl_p99_ms=500.0,
        model_arch=TINY,
        accelerator_spec=HOST,
    )
    answer = oracle(query)
    assert answer.max_rps > 0.0, answer.reason
    assert answer.trust is not None and answer.trust.level == "calibrated"
    assert answer.trust.derate == 1.0
