"""Accelerator and model catalogs: contract ids, MIG geometry, known parameter counts, errors."""

from __future__ import annotations

import dataclasses

import pytest

from placement import catalog

CONTRACT_CHIPS = ("l4", "l40s", "a100-80gb", "h100", "h200", "mi300x", "inf2")
CONTRACT_MIGS = (
    "h100/1g.10gb",
    "h100/1g.20gb",
    "h100/2g.20gb",
    "h100/3g.40gb",
    "h100/4g.40gb",
    "h100/7g.80gb",
    "a100-80gb/1g.10gb",
    "a100-80gb/2g.20gb",
    "a100-80gb/3g.40gb",
    "a100-80gb/4g.40gb",
    "a100-80gb/7g.80gb",
    "h200/1g.18gb",
    "h200/7g.141gb",
)
CONTRACT_MODELS = (
    "llama-2-7b",
    "llama-2-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "mistral-7b",
    "mixtral-8x7b",
    "mixtral-8x22b",
)


def test_contract_ids_present() -> None:
    for chip in (*CONTRACT_CHIPS, *CONTRACT_MIGS):
        assert catalog.get_accelerator(chip).id == chip
    for model in CONTRACT_MODELS:
        assert catalog.get_model(model).id == model
    assert catalog.PRECISIONS == ("bf16", "fp16", "fp8", "int8", "int4")
    assert catalog.ENGINES == ("vllm", "sglang", "trtllm", "tgi", "neuron")


def test_unknown_ids_name_the_valid_ones() -> None:
    with pytest.raises(catalog.UnknownIdError, match=r"unknown accelerator 'x900'.*h100"):
        catalog.get_accelerator("x900")
    with pytest.raises(ValueError, match=r"unknown model 'gpt-5'.*llama-3.1-8b"):
        catalog.get_model("gpt-5")


@pytest.mark.parametrize("mig_id", [a for a in catalog.ACCELERATORS if "/" in a])
def test_every_mig_slice_is_well_formed_and_a_fraction_of_its_parent(mig_id: str) -> None:
    mig = catalog.get_accelerator(mig_id)
    match = catalog.MIG_ID_RE.match(mig_id)
    assert match is not None
    parent = catalog.get_accelerator(match["parent"])
    assert mig.is_mig and mig.parent == parent.id and not parent.is_mig
    assert mig.resource_name == f"nvidia.com/mig-{mig.mig_profile}"
    assert mig.memory_bytes <= parent.memory_bytes
    assert mig.mem_bandwidth_bytes_per_s <= parent.mem_bandwidth_bytes_per_s
    assert mig.peak_flops_per_s("bf16") <= parent.peak_flops_per_s("bf16")
    if parent.default_price_per_hour is not None:
        assert mig.default_price_per_hour is not None
        assert mig.default_price_per_hour <= parent.default_price_per_hour
    assert mig.max_tp == 1
    # The profile name's memory figure is the slice's memory to within a GB of rounding (NVIDIA names
    # GiB-sized slices of 80 GiB parts and GB-sized slices of B200's 180 GB alike).
    named = int(match["memory_gb"])
    assert min(abs(mig.memory_bytes / catalog.GIB - named), abs(mig.memory_bytes / catalog.GB - named)) <= 1.0
    assert mig.mig_compute_fraction == int(match["compute_slices"]) / 7


def test_mig_regex_rejects_malformed_ids() -> None:
    for bad in ("h100/8g.80gb", "h100/1g10gb", "h100", "/1g.10gb", "H100/1g.10gb"):
        assert catalog.MIG_ID_RE.match(bad) is None


def test_every_slice_of_h100_and_h200_and_a100_is_present() -> None:
    assert len(catalog.mig_slices_of("h100")) == 6
    assert len(catalog.mig_slices_of("h200")) == 6
    assert len(catalog.mig_slices_of("a100-80gb")) == 6
    assert catalog.mig_slices_of("l4") == ()


def test_chip_figures_match_the_spec_sheet() -> None:
    h100 = catalog.get_accelerator("h100")
    assert h100.mem_bandwidth_bytes_per_s == 3.35e12
    assert h100.peak_flops_per_s("fp8") == 1979e12
    assert h100.peak_flops_per_s("bf16") == 989e12
    assert h100.product_label == "NVIDIA-H100-80GB-HBM3"
    a100 = catalog.get_accelerator("a100-80gb")
    assert "fp8" not in a100.precisions
    # int4 is weight-only: it computes at the 16-bit rate.
    assert a100.peak_flops_per_s("int4") == a100.peak_flops_per_s("fp16")
    inf2 = catalog.get_accelerator("inf2")
    assert inf2.resource_name == "aws.amazon.com/neuroncore" and inf2.resource_units_per_device == 2
    assert catalog.get_accelerator("mi300x").resource_name == "amd.com/gpu"


def test_every_accelerator_has_sources_price_and_valid_fields() -> None:
    for acc in catalog.ACCELERATORS.values():
        assert acc.vendor in catalog.VENDORS
        assert acc.sources and acc.price_source
        assert acc.default_price_per_hour is None or acc.default_price_per_hour > 0
        assert set(acc.precisions) <= set(catalog.PRECISIONS)
        assert acc.memory_bytes > 0 and acc.mem_bandwidth_bytes_per_s > 0
        for precision in acc.precisions:
            assert acc.peak_flops_per_s(precision) > 0
        hash(acc)  # usable as a dict key by the solver


# Published parameter counts (model cards): 6.74B, 8.03B, 70.6B, 405B, 46.7B total / 12.9B active, 141B / 39B.
@pytest.mark.parametrize(
    ("model_id", "total_b", "active_b"),
    [
        ("llama-2-7b", 6.74, 6.74),
        ("llama-3.1-8b", 8.03, 8.03),
        ("llama-3.1-70b", 70.6, 70.6),
        ("llama-3.1-405b", 405.9, 405.9),
        ("mixtral-8x7b", 46.7, 12.9),
        ("mixtral-8x22b", 140.6, 39.2),
    ],
)
def test_parameter_counts_match_model_cards(model_id: str, total_b: float, active_b: float) -> None:
    model = catalog.get_model(model_id)
    assert model.total_params / 1e9 == pytest.approx(total_b, rel=0.01)
    assert model.active_params / 1e9 == pytest.approx(active_b, rel=0.01)


def test_inline_model_validation_names_the_field() -> None:
    base = catalog.get_model("llama-3.1-8b")
    with pytest.raises(ValueError, match="kv_heads"):
        dataclasses.replace(base, id="bad", kv_heads=5)
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        dataclasses.replace(base, id="bad", layers=0)
    with pytest.raises(ValueError, match="active_experts"):
        dataclasses.replace(base, id="bad", experts=2, active_experts=3)


def test_engine_vendor_compatibility() -> None:
    assert catalog.engine_supports("trtllm", catalog.get_accelerator("h100"))
    assert not catalog.engine_supports("trtllm", catalog.get_accelerator("mi300x"))
    assert catalog.engine_supports("neuron", catalog.get_accelerator("inf2"))
    assert not catalog.engine_supports("neuron", catalog.get_accelerator("l4"))
