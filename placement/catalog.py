"""Accelerator and model catalogs: the physical figures the performance model starts from.

Chips are data: the built-in catalog (placement/data/accelerators.toml, a source per figure) is only the
default for known ids; an AcceleratorPool may declare any chip by its specs, built by the same
`accelerator_from_spec`. Model shapes come from each model's published Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

GIB: Final = 2**30
GB: Final = 10**9
TERA: Final = 10**12

PRECISIONS: Final[tuple[str, ...]] = ("bf16", "fp16", "fp8", "int8", "int4")
ENGINES: Final[tuple[str, ...]] = ("vllm", "sglang", "trtllm", "tgi", "neuron")
ROLES: Final[tuple[str, ...]] = ("aggregated", "prefill", "decode")
# "cpu": a host CPU declared by its measured specs (vLLM's CPU backend); no catalog chip has it.
VENDORS: Final[tuple[str, ...]] = ("nvidia", "amd", "aws", "cpu")

# Which serving engines run on which vendor's chips (engine docs: TensorRT-LLM is CUDA-only; the Neuron
# SDK is AWS-only; vLLM has CUDA, ROCm and Neuron backends; SGLang CUDA and ROCm; TGI CUDA, ROCm and
# Neuron via optimum-neuron; vLLM also has a CPU backend, the build the test tier runs).
ENGINE_VENDORS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "vllm": frozenset({"nvidia", "amd", "aws", "cpu"}),
        "sglang": frozenset({"nvidia", "amd"}),
        "trtllm": frozenset({"nvidia"}),
        "tgi": frozenset({"nvidia", "amd", "aws"}),
        "neuron": frozenset({"aws"}),
    }
)

# Image lines that hold one engine release only: their registries tag images by date or by SDK bundle, not
# by the engine's release, so no image of another release can be named for them (chipfit.engines pins the
# images; every other (engine, vendor) line is tagged by release, so any release deploys there). A service
# that names another release (spec.engineVersion) without its own image (spec.overrides.image) is never
# planned onto these vendors: placement.engine_version.undeployable_release, read by the planner, the
# renderer and `chipfit validate`.
LOCKED_RELEASES: Final[Mapping[tuple[str, str], str]] = MappingProxyType(
    {
        ("vllm", "amd"): "0.10.1",  # rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909 (AMD's dated builds)
        ("vllm", "aws"): "0.9.1",  # Neuron DLC pytorch-inference-vllm-neuronx:0.9.1-...-sdk2.25.0
        ("neuron", "aws"): "0.9.1",  # the same DLC
        (
            "sglang",
            "amd",
        ): "0.5.1.post3",  # lmsysorg/sglang:v0.5.1.post3-rocm630-mi30x (ROCm- and chip-suffixed)
    }
)

# Which engines split prefill and decode onto separate replicas, on which vendors (a KV-transfer path exists
# there): vLLM's NixlConnector and SGLang's NIXL backend on CUDA and ROCm, TensorRT-LLM's cache transceiver
# on CUDA. vLLM on Neuron, TGI and the Neuron engine serve aggregated replicas only. The planner (through
# placement.perf.infeasibility), the renderer (chipfit.engines) and `chipfit validate` all read this table.
ENGINE_DISAGGREGATED_VENDORS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "vllm": frozenset({"nvidia", "amd"}),
        "sglang": frozenset({"nvidia", "amd"}),
        "trtllm": frozenset({"nvidia"}),
    }
)

# A well-formed MIG slice id: "<parent>/<compute slices>g.<memory GB>gb", e.g. "h100/1g.10gb".
MIG_ID_RE: Final = re.compile(
    r"^(?P<parent>[a-z0-9][a-z0-9-]*)/(?P<compute_slices>[1-7])g\.(?P<memory_gb>\d+)gb$"
)

# NVIDIA MIG partitions compute into 7 GPC slices and memory into 8 slices (MIG user guide,
# https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html).
MIG_COMPUTE_SLICES: Final = 7
MIG_MEMORY_SLICES: Final = 8


class UnknownIdError(ValueError):
    """An accelerator or model id that is not in the catalog (the message lists the valid ids)."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One schedulable device: a whole chip, or a MIG slice of one (then `parent` is set)."""

    id: str
    vendor: str
    display_name: str
    memory_bytes: int
    mem_bandwidth_bytes_per_s: float
    # Dense (no sparsity) peak tensor throughput per compute precision, FLOP/s (OP/s for int8).
    dense_flops_per_s: Mapping[str, float] = dataclasses.field(hash=False)
    # Per-direction device-to-device bandwidth used by tensor-parallel collectives, bytes/s.
    interconnect_bytes_per_s: float
    # Weight precisions the hardware and its engines serve.
    precisions: tuple[str, ...]
    # Kubernetes extended resource one device is requested by, and units of it per device.
    resource_name: str
    resource_units_per_device: int
    # Node label (key, value) that identifies nodes carrying this chip.
    product_label_key: str
    product_label: str
    # $/device-hour a pool pays when it states no price; None: the pool must state one.
    default_price_per_hour: float | None
    price_source: str
    # Largest tensor-parallel degree one replica may use on this device type (devices in one node).
    max_tp: int
    sources: tuple[str, ...]
    parent: str | None = None
    mig_profile: str | None = None
    mig_compute_fraction: float = 1.0
    mig_memory_fraction: float = 1.0
    mig_max_instances: int = 1
    # How the chip may be cut (NVIDIA MIG profiles); empty for chips without partitions.
    partitions: tuple[Partition, ...] = ()
    # "catalog" for the built-in entries (and their slices), "inline" for a chip a pool declared.
    origin: str = "catalog"

    @property
    def is_mig(self) -> bool:
        """True for a MIG slice of a parent GPU."""
        return self.parent is not None

    def peak_flops_per_s(self, precision: str) -> float:
        """Dense tensor FLOP/s that matrix multiplies run at for weights stored in `precision`."""
        return self.dense_flops_per_s[compute_precision(self, precision)]


@dataclasses.dataclass(frozen=True)
class ModelArch:
    """Shape of a decoder-only transformer (dense or mixture-of-experts) as its config.json gives it."""

    id: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context_tokens: int
    experts: int = 1
    active_experts: int = 1
    # SwiGLU MLPs have three matrices (gate, up, down); GPT-style MLPs two.
    gated_mlp: bool = True
    tied_embeddings: bool = False
    source: str = "inline"

    def __post_init__(self) -> None:
        """Reject shapes that cannot describe a transformer, naming the field."""
        for name in (
            "layers",
            "hidden_size",
            "heads",
            "kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "max_context_tokens",
            "experts",
            "active_experts",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model {self.id!r}: {name} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads != 0:
            raise ValueError(
                f"model {self.id!r}: heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})"
            )
        if self.active_experts > self.experts:
            raise ValueError(
                f"model {self.id!r}: active_experts ({self.active_experts}) exceeds experts ({self.experts})"
            )

    @property
    def is_moe(self) -> bool:
        """True for a mixture-of-experts model."""
        return self.experts > 1

    @property
    def attention_params_per_layer(self) -> int:
        """Q, K, V and output projection weights of one layer."""
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        return self.hidden_size * (2 * q_out + 2 * kv_out)

    @property
    def expert_params(self) -> int:
        """Weights of one expert's MLP (the whole MLP of a dense model)."""
        matrices = 3 if self.gated_mlp else 2
        return matrices * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """Input embedding plus output head (once when they are tied)."""
        tables = 1 if self.tied_embeddings else 2
        return tables * self.vocab_size * self.hidden_size

    @property
    def router_params_per_layer(self) -> int:
        """The MoE gate of one layer (zero for dense models)."""
        return self.hidden_size * self.experts if self.is_moe else 0

    @property
    def total_params(self) -> int:
        """Every weight (norms included), what memory must hold."""
        norms = 2 * self.hidden_size
        per_layer = (
            self.attention_params_per_layer
            + self.experts * self.expert_params
            + self.router_params_per_layer
            + norms
        )
        return self.layers * per_layer + self.embedding_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """Weights one token touches (MoE: only its routed experts), what its FLOPs scale with."""
        per_layer = (
            self.attention_params_per_layer
            + self.active_experts * self.expert_params
            + self.router_params_per_layer
            + 2 * self.hidden_size
        )
        return self.layers * per_layer + self.embedding_params + self.hidden_size


def compute_precision(accelerator: Accelerator, precision: str) -> str:
    """The tensor-core precision matmuls run in for weights stored in `precision`.

    int4 is weight-only (AWQ/GPTQ): activations stay 16-bit, so it computes at the 16-bit rate. A chip
    without an int8 or fp8 rate (none here today) falls back to 16-bit the same way.
    """
    if precision in accelerator.dense_flops_per_s:
        return precision
    return "fp16" if "fp16" in accelerator.dense_flops_per_s else "bf16"


# --- Accelerators --------------------------------------------------------------------------------------

# The built-in catalog: one TOML table per chip with a source per figure (placement/data/accelerators.toml).
ACCELERATORS_TOML: Final = "accelerators.toml"
VENDOR_DEFAULTS_KEY: Final = "defaults"

# What a spec must give, per the units the data file and the API use.
_SPEC_FIGURES: Final = ("memory", "mem_bandwidth", "dense_tflops", "interconnect")


class SpecError(ValueError):
    """An accelerator spec (catalog entry or inline pool spec) that cannot describe a chip."""


@dataclasses.dataclass(frozen=True)
class Partition:
    """One way to cut a chip (an NVIDIA MIG profile): its share of compute and memory, instances per chip."""

    profile: str
    compute_slices: int
    memory_slices: int
    max_instances: int

    def __post_init__(self) -> None:
        """A MIG profile uses 1..7 of 7 compute slices and 1..8 of 8 memory slices."""
        if not MIG_PROFILE_RE.match(self.profile):
            raise SpecError(f"partition {self.profile!r}: profile must look like <n>g.<GB>gb (e.g. 1g.10gb)")
        if not 1 <= self.compute_slices <= MIG_COMPUTE_SLICES:
            raise SpecError(f"partition {self.profile}: compute slices must be 1..{MIG_COMPUTE_SLICES}")
        if not 1 <= self.memory_slices <= MIG_MEMORY_SLICES:
            raise SpecError(f"partition {self.profile}: memory slices must be 1..{MIG_MEMORY_SLICES}")
        if not 1 <= self.max_instances <= MIG_COMPUTE_SLICES:
            raise SpecError(f"partition {self.profile}: max instances must be 1..{MIG_COMPUTE_SLICES}")


# A MIG profile name: "<compute slices>g.<memory GB>gb".
MIG_PROFILE_RE: Final = re.compile(r"^[1-7]g\.\d+gb$")


def accelerator_from_spec(
    *,
    id: str,
    vendor: str,
    memory_bytes: int,
    mem_bandwidth_bytes_per_s: float,
    dense_tflops: Mapping[str, float],
    interconnect_bytes_per_s: float,
    precisions: tuple[str, ...],
    max_tp: int,
    resource_name: str | None = None,
    resource_units_per_device: int | None = None,
    product_label_key: str | None = None,
    product_label: str = "",
    display_name: str | None = None,
    price_per_hour: float | None = None,
    price_source: str = "",
    sources: tuple[str, ...] = (),
    partitions: tuple[Partition, ...] = (),
    origin: str = "inline",
) -> Accelerator:
    """A whole chip from its specs; vendor defaults fill the device-plugin resource and node label key.

    The one constructor for catalog entries and pool-declared chips, so both are checked the same way.
    """
    if vendor not in VENDORS:
        raise SpecError(f"accelerator {id!r}: vendor must be one of {', '.join(VENDORS)}, got {vendor!r}")
    defaults = _vendor_defaults()[vendor]
    for name, value in (
        ("memory", memory_bytes),
        ("memory bandwidth", mem_bandwidth_bytes_per_s),
        ("max_tp", max_tp),
    ):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise SpecError(f"accelerator {id!r}: {name} must be a positive number, got {value!r}")
    if not (math.isfinite(interconnect_bytes_per_s) and interconnect_bytes_per_s >= 0):
        raise SpecError(f"accelerator {id!r}: interconnect bandwidth must be >= 0")
    flops = {p: float(t) * TERA for p, t in dense_tflops.items()}
    unknown = sorted(set(flops) - set(PRECISIONS) | set(precisions) - set(PRECISIONS))
    if unknown:
        valid = ", ".join(PRECISIONS)
        raise SpecError(f"accelerator {id!r}: unknown precision {unknown[0]!r}; valid: {valid}")
    if any(not (math.isfinite(f) and f > 0) for f in flops.values()):
        raise SpecError(f"accelerator {id!r}: dense TFLOPS must be positive")
    if "bf16" not in flops and "fp16" not in flops:
        raise SpecError(f"accelerator {id!r}: dense TFLOPS needs bf16 or fp16 (the rate int4 computes at)")
    if not precisions:
        raise SpecError(f"accelerator {id!r}: precisions must not be empty")
    for p in precisions:
        if p in ("bf16", "fp16", "fp8") and p not in flops:
            raise SpecError(f"accelerator {id!r}: precision {p} is served but has no dense TFLOPS figure")
    return Accelerator(
        id=id,
        vendor=vendor,
        display_name=display_name or id,
        memory_bytes=int(memory_bytes),
        mem_bandwidth_bytes_per_s=float(mem_bandwidth_bytes_per_s),
        dense_flops_per_s=MappingProxyType(flops),
        interconnect_bytes_per_s=float(interconnect_bytes_per_s),
        precisions=tuple(precisions),
        resource_name=resource_name or str(defaults["resource_name"]),
        resource_units_per_device=int(resource_units_per_device or defaults["resource_units_per_device"]),
        product_label_key=product_label_key or str(defaults["product_label_key"]),
        product_label=product_label,
        default_price_per_hour=price_per_hour,
        price_source=price_source,
        max_tp=int(max_tp),
        sources=sources,
        partitions=partitions,
        origin=origin,
    )


def partition_of(parent: Accelerator, profile: str) -> Accelerator:
    """A MIG slice of `parent`: memory and bandwidth follow its memory slices, compute its GPCs."""
    for part in parent.partitions:
        if part.profile == profile:
            break
    else:
        valid = ", ".join(p.profile for p in parent.partitions) or "none"
        raise UnknownIdError(f"{parent.id} has no partition {profile!r}; valid: {valid}")
    compute_fraction = part.compute_slices / MIG_COMPUTE_SLICES
    memory_fraction = part.memory_slices / MIG_MEMORY_SLICES
    # A slice occupies the larger of its compute and memory share of the GPU, so it costs that share.
    price_share = max(compute_fraction, memory_fraction)
    base = parent.default_price_per_hour
    price = None if base is None else round(base * price_share, 4)
    return Accelerator(
        id=f"{parent.id}/{profile}",
        vendor=parent.vendor,
        display_name=f"{parent.display_name} MIG {profile}",
        memory_bytes=int(parent.memory_bytes * memory_fraction),
        mem_bandwidth_bytes_per_s=parent.mem_bandwidth_bytes_per_s * memory_fraction,
        dense_flops_per_s=MappingProxyType(
            {p: f * compute_fraction for p, f in parent.dense_flops_per_s.items()}
        ),
        # MIG instances have no peer-to-peer NVLink: one slice is one replica (max_tp 1).
        interconnect_bytes_per_s=PCIE4_X16_BYTES_PER_S,
        precisions=parent.precisions,
        # Device plugin "mixed" MIG strategy advertises one resource per profile.
        resource_name=f"nvidia.com/mig-{profile}",
        resource_units_per_device=1,
        product_label_key=parent.product_label_key,
        product_label=parent.product_label,
        default_price_per_hour=price,
        price_source=f"parent default x max(compute {part.compute_slices}/7, memory {part.memory_slices}/8)",
        max_tp=1,
        sources=(*parent.sources, f"partition {profile}: NVIDIA MIG user guide (supported profiles)"),
        parent=parent.id,
        mig_profile=profile,
        mig_compute_fraction=compute_fraction,
        mig_memory_fraction=memory_fraction,
        mig_max_instances=part.max_instances,
        origin=parent.origin,
    )


# MIG instances reach the host over the GPU's PCIe link only (no peer-to-peer NVLink between slices).
PCIE4_X16_BYTES_PER_S: Final = 32 * GB


def _load_toml() -> dict[str, Any]:
    """The catalog data file, parsed."""
    text = resources.files("placement").joinpath("data", ACCELERATORS_TOML).read_text(encoding="utf-8")
    return tomllib.loads(text)


_VENDOR_DEFAULTS: dict[str, dict[str, Any]] = {}


def _vendor_defaults() -> dict[str, dict[str, Any]]:
    """Per-vendor device-plugin resource, units per device and node label key (from the data file)."""
    if not _VENDOR_DEFAULTS:
        _VENDOR_DEFAULTS.update(_load_toml()[VENDOR_DEFAULTS_KEY])
    return _VENDOR_DEFAULTS


def _figure_bytes(entry: Mapping[str, Any], stem: str, unit_suffix: str) -> float:
    """A figure given in decimal (GB) or binary (GiB) units, exactly one of them."""
    decimal = entry.get(f"{stem}_gb{unit_suffix}")
    binary = entry.get(f"{stem}_gib{unit_suffix}")
    if (decimal is None) == (binary is None):
        units = f"{stem}_gb{unit_suffix}, {stem}_gib{unit_suffix}"
        raise SpecError(f"{entry.get('id')}: give exactly one of {units}")
    return float(decimal) * GB if decimal is not None else float(str(binary)) * GIB


def _catalog_chip(entry: Mapping[str, Any], partitions: Mapping[str, Any]) -> Accelerator:
    """One [[chip]] table of the data file."""
    chip_id = str(entry["id"])
    missing = [f"{f}_source" for f in _SPEC_FIGURES if not entry.get(f"{f}_source")]
    if missing:
        raise SpecError(f"{ACCELERATORS_TOML}: {chip_id}: every figure needs a source ({missing[0]} missing)")
    geometry = tuple(Partition(*row) for row in partitions.get(str(entry.get("partitions", "")), ()))
    return accelerator_from_spec(
        id=chip_id,
        vendor=str(entry["vendor"]),
        display_name=str(entry["display_name"]),
        memory_bytes=int(_figure_bytes(entry, "memory", "")),
        mem_bandwidth_bytes_per_s=_figure_bytes(entry, "mem_bandwidth", "_per_s"),
        dense_tflops=dict(entry["dense_tflops"]),
        interconnect_bytes_per_s=float(entry["interconnect_gb_per_s"]) * GB,
        precisions=tuple(entry["precisions"]),
        max_tp=int(entry["max_tp"]),
        resource_name=entry.get("resource_name"),
        resource_units_per_device=entry.get("resource_units_per_device"),
        product_label_key=entry.get("product_label_key"),
        product_label=str(entry.get("product_label", "")),
        price_per_hour=entry.get("price_per_hour"),
        price_source=str(entry.get("price_source", "none: set pricePerDeviceHour on the pool")),
        sources=tuple(f"{f}: {entry[f + '_source']}" for f in _SPEC_FIGURES),
        partitions=geometry,
        origin="catalog",
    )


def _build_accelerators() -> dict[str, Accelerator]:
    """Whole chips first, then every partition of the partitionable ones."""
    data = _load_toml()
    partitions = data.get("partitions", {})
    table: dict[str, Accelerator] = {}
    for entry in data["chip"]:
        chip = _catalog_chip(entry, partitions)
        table[chip.id] = chip
    for chip in list(table.values()):
        for part in chip.partitions:
            mig = partition_of(chip, part.profile)
            table[mig.id] = mig
    return table


ACCELERATORS: Final[Mapping[str, Accelerator]] = MappingProxyType(_build_accelerators())

# --- Models ----------------------------------------------------------------------------------------------

_HF: Final = "https://huggingface.co"

_MODEL_LIST: Final[tuple[ModelArch, ...]] = (
    ModelArch(
        id="llama-2-7b",
        layers=32,
        hidden_size=4096,
        heads=32,
        kv_heads=32,
        head_dim=128,
        intermediate_size=11008,
        vocab_size=32000,
        max_context_tokens=4096,
        source=f"{_HF}/meta-llama/Llama-2-7b-hf/blob/main/config.json",
    ),
    ModelArch(
        id="llama-2-70b",
        layers=80,
        hidden_size=8192,
        heads=64,
        kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        vocab_size=32000,
        max_context_tokens=4096,
        source=f"{_HF}/meta-llama/Llama-2-70b-hf/blob/main/config.json",
    ),
    ModelArch(
        id="llama-3.1-8b",
        layers=32,
        hidden_size=4096,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
        max_context_tokens=131072,
        source=f"{_HF}/meta-llama/Llama-3.1-8B/blob/main/config.json",
    ),
    ModelArch(
        id="llama-3.1-70b",
        layers=80,
        hidden_size=8192,
        heads=64,
        kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        vocab_size=128256,
        max_context_tokens=131072,
        source=f"{_HF}/meta-llama/Llama-3.1-70B/blob/main/config.json",
    ),
    ModelArch(
        id="llama-3.1-405b",
        layers=126,
        hidden_size=16384,
        heads=128,
        kv_heads=8,
        head_dim=128,
        intermediate_size=53248,
        vocab_size=128256,
        max_context_tokens=131072,
        source=f"{_HF}/meta-llama/Llama-3.1-405B/blob/main/config.json",
    ),
    ModelArch(
        id="mistral-7b",
        layers=32,
        hidden_size=4096,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=32768,
        max_context_tokens=32768,
        source=f"{_HF}/mistralai/Mistral-7B-v0.3/blob/main/config.json",
    ),
    ModelArch(
        id="mixtral-8x7b",
        layers=32,
        hidden_size=4096,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=32000,
        max_context_tokens=32768,
        experts=8,
        active_experts=2,
        source=f"{_HF}/mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
    ),
    ModelArch(
        id="mixtral-8x22b",
        layers=56,
        hidden_size=6144,
        heads=48,
        kv_heads=8,
        head_dim=128,
        intermediate_size=16384,
        vocab_size=32768,
        max_context_tokens=65536,
        experts=8,
        active_experts=2,
        source=f"{_HF}/mistralai/Mixtral-8x22B-Instruct-v0.1/blob/main/config.json",
    ),
)

MODELS: Final[Mapping[str, ModelArch]] = MappingProxyType({m.id: m for m in _MODEL_LIST})


def get_accelerator(accelerator_id: str) -> Accelerator:
    """The catalog entry for an accelerator or MIG slice id; UnknownIdError names the valid ids."""
    try:
        return ACCELERATORS[accelerator_id]
    except KeyError:
        raise UnknownIdError(
            f"unknown accelerator {accelerator_id!r}; valid: {', '.join(ACCELERATORS)}"
        ) from None


def get_model(model_id: str) -> ModelArch:
    """The catalog entry for a model id; UnknownIdError names the valid ids."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise UnknownIdError(f"unknown model {model_id!r}; valid: {', '.join(MODELS)}") from None


def mig_slices_of(parent_id: str) -> tuple[Accelerator, ...]:
    """Every MIG slice of a parent GPU, smallest first (empty for chips without MIG)."""
    return tuple(a for a in ACCELERATORS.values() if a.parent == parent_id)


def resolve_accelerator(accelerator_id: str, parent_spec: Accelerator | None = None) -> Accelerator:
    """The chip a pool names: `parent_spec` (a pool's inline spec of the whole chip) over the catalog.

    A slice id `<parent>/<profile>` is cut from the declared parent's partitions.
    """
    if parent_spec is None:
        return get_accelerator(accelerator_id)
    parent_id, _, profile = accelerator_id.partition("/")
    if parent_id != parent_spec.id:
        raise SpecError(f"accelerator {accelerator_id!r} is not the declared chip {parent_spec.id!r}")
    return partition_of(parent_spec, profile) if profile else parent_spec


def engine_supports(engine: str, accelerator: Accelerator, role: str = "aggregated") -> bool:
    """True when `engine` runs replicas of `role` (aggregated, prefill, decode) on this vendor's chips."""
    return engine_supports_vendor(engine, accelerator.vendor, role)


def engine_supports_vendor(engine: str, vendor: str, role: str = "aggregated") -> bool:
    """True when `engine` runs replicas of `role` on chips of `vendor`."""
    table = ENGINE_VENDORS if role == "aggregated" else ENGINE_DISAGGREGATED_VENDORS
    return vendor in table.get(engine, frozenset())
