"""Accelerator and model catalogs: the physical figures the performance model starts from.

Every figure carries its source. Spec figures come from placement/data/specs/*.csv (URL per row there;
copied from the project's shared reference data), prices from docs/prices.md (URL and date per price);
model shapes from each model's published Hugging Face `config.json`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

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
    default_price_per_hour: float
    price_source: str
    # Largest tensor-parallel degree one replica may use on this device type (devices in one node).
    max_tp: int
    sources: tuple[str, ...]
    parent: str | None = None
    mig_profile: str | None = None
    mig_compute_fraction: float = 1.0
    mig_memory_fraction: float = 1.0
    mig_max_instances: int = 1

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

_SPECS_CSV: Final = "placement/data/specs/accelerator_specs_seen.csv"
_MIG_CSV: Final = "placement/data/specs/mig_profiles_seen.csv"
_PRICES_CSV: Final = "docs/prices.md"

# Per-direction interconnect figures (half the bidirectional figure vendors quote).
NVLINK4_BYTES_PER_S: Final = 450 * GB  # H100/H200 SXM: 900 GB/s bidirectional NVLink 4 (NVIDIA datasheet)
NVLINK3_BYTES_PER_S: Final = 300 * GB  # A100 SXM: 600 GB/s bidirectional NVLink 3 (NVIDIA datasheet)
PCIE4_X16_BYTES_PER_S: Final = 32 * GB  # L4, L40S: PCIe Gen4 x16, 64 GB/s bidirectional (no NVLink)
# MI300X: 7 Infinity Fabric links, "each GPU features 400 GB/s of interconnect bandwidth"
# (oracle-quickstart/oci-gpu-quickstarts, MI300X onboarding notes).
INFINITY_FABRIC_MI300X_BYTES_PER_S: Final = 400 * GB
# Inferentia2: NeuronLink-v2 ring between the chips of an inf2.24xlarge/48xlarge; AWS does not state a
# per-chip figure on the architecture page, so this is a low-confidence estimate (PCIe-Gen4-class x3).
NEURONLINK_V2_BYTES_PER_S: Final = 96 * GB

# Default prices, $/device-hour (a pool's pricePerDeviceHour overrides them). See _PRICES_CSV.
PRICE_L4_PER_HOUR: Final = 0.81  # AWS g6 (1x L4) on-demand, secondary table (low confidence)
PRICE_L40S_PER_HOUR: Final = 1.84  # AWS g6e (1x L40S) on-demand, secondary table (low confidence)
PRICE_A100_PER_HOUR: Final = 3.67  # Mélange authors' eval notebook (litone01/melange-release @3d13f19)
PRICE_H100_PER_HOUR: Final = 6.234  # same notebook; between AWS capacity block 4.92 and list 12.29
# H200: the H100 default scaled by the AWS capacity-block ratio p5e/p5 = 5.408 / 4.916 (same page).
PRICE_H200_PER_HOUR: Final = round(PRICE_H100_PER_HOUR * 5.408 / 4.916, 3)
PRICE_MI300X_PER_HOUR: Final = 6.0  # Azure ND MI300X v5 per GPU, 2026 research note (low confidence)
# inf2: no price in the shared corpus; AWS lists inf2.48xlarge (12 chips) at about $12.98/h on demand in
# us-east-1, i.e. ~$1.08 per chip (estimate, not verified here).
PRICE_INF2_PER_HOUR: Final = 1.08

_NVIDIA_GPU_RESOURCE: Final = "nvidia.com/gpu"
_NVIDIA_PRODUCT_KEY: Final = "nvidia.com/gpu.product"

_FULL_CHIPS: Final[tuple[Accelerator, ...]] = (
    Accelerator(
        id="l4",
        vendor="nvidia",
        display_name="NVIDIA L4 24GB",
        # GDDR6 boards: "24 GB" is decimal (nvidia-smi reports 23034 MiB = 24.15e9 bytes).
        memory_bytes=24 * GB,
        mem_bandwidth_bytes_per_s=300 * GB,
        dense_flops_per_s=MappingProxyType(
            {"bf16": 121 * TERA, "fp16": 121 * TERA, "fp8": 242.5 * TERA, "int8": 242.5 * TERA}
        ),
        interconnect_bytes_per_s=PCIE4_X16_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8", "int4"),
        resource_name=_NVIDIA_GPU_RESOURCE,
        resource_units_per_device=1,
        product_label_key=_NVIDIA_PRODUCT_KEY,
        product_label="NVIDIA-L4",
        default_price_per_hour=PRICE_L4_PER_HOUR,
        price_source=f"{_PRICES_CSV}: AWS L4 (g6) on-demand",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: L4 (datasheet sparse figures halved)",),
    ),
    Accelerator(
        id="l40s",
        vendor="nvidia",
        display_name="NVIDIA L40S 48GB",
        # "48 GB" is decimal (nvidia-smi reports 46068 MiB = 48.3e9 bytes).
        memory_bytes=48 * GB,
        mem_bandwidth_bytes_per_s=864 * GB,
        dense_flops_per_s=MappingProxyType(
            {"bf16": 362 * TERA, "fp16": 362 * TERA, "fp8": 733 * TERA, "int8": 733 * TERA}
        ),
        interconnect_bytes_per_s=PCIE4_X16_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8", "int4"),
        resource_name=_NVIDIA_GPU_RESOURCE,
        resource_units_per_device=1,
        product_label_key=_NVIDIA_PRODUCT_KEY,
        product_label="NVIDIA-L40S",
        default_price_per_hour=PRICE_L40S_PER_HOUR,
        price_source=f"{_PRICES_CSV}: AWS L40S (g6e) on-demand",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: L40S",),
    ),
    Accelerator(
        id="a100-80gb",
        vendor="nvidia",
        display_name="NVIDIA A100-SXM4-80GB",
        memory_bytes=80 * GIB,
        mem_bandwidth_bytes_per_s=2039 * GB,
        dense_flops_per_s=MappingProxyType({"bf16": 312 * TERA, "fp16": 312 * TERA, "int8": 624 * TERA}),
        interconnect_bytes_per_s=NVLINK3_BYTES_PER_S,
        # Ampere has no FP8 tensor cores.
        precisions=("bf16", "fp16", "int8", "int4"),
        resource_name=_NVIDIA_GPU_RESOURCE,
        resource_units_per_device=1,
        product_label_key=_NVIDIA_PRODUCT_KEY,
        product_label="NVIDIA-A100-SXM4-80GB",
        default_price_per_hour=PRICE_A100_PER_HOUR,
        price_source=f"{_PRICES_CSV}: Mélange notebook A100 price",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: A100-SXM4-80GB",),
    ),
    Accelerator(
        id="h100",
        vendor="nvidia",
        display_name="NVIDIA H100-SXM5-80GB",
        memory_bytes=80 * GIB,
        mem_bandwidth_bytes_per_s=3350 * GB,
        dense_flops_per_s=MappingProxyType(
            {"bf16": 989 * TERA, "fp16": 989 * TERA, "fp8": 1979 * TERA, "int8": 1979 * TERA}
        ),
        interconnect_bytes_per_s=NVLINK4_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8", "int4"),
        resource_name=_NVIDIA_GPU_RESOURCE,
        resource_units_per_device=1,
        product_label_key=_NVIDIA_PRODUCT_KEY,
        product_label="NVIDIA-H100-80GB-HBM3",
        default_price_per_hour=PRICE_H100_PER_HOUR,
        price_source=f"{_PRICES_CSV}: Mélange notebook H100 price",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: H100-SXM5-80GB",),
    ),
    Accelerator(
        id="h200",
        vendor="nvidia",
        display_name="NVIDIA H200-SXM5-141GB",
        memory_bytes=141 * GIB,
        mem_bandwidth_bytes_per_s=4800 * GB,
        dense_flops_per_s=MappingProxyType(
            {"bf16": 989 * TERA, "fp16": 989 * TERA, "fp8": 1979 * TERA, "int8": 1979 * TERA}
        ),
        interconnect_bytes_per_s=NVLINK4_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8", "int4"),
        resource_name=_NVIDIA_GPU_RESOURCE,
        resource_units_per_device=1,
        product_label_key=_NVIDIA_PRODUCT_KEY,
        product_label="NVIDIA-H200",
        default_price_per_hour=PRICE_H200_PER_HOUR,
        price_source=f"{_PRICES_CSV}: H100 default x AWS capacity-block ratio p5e/p5",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: H200-SXM5-141GB",),
    ),
    Accelerator(
        id="mi300x",
        vendor="amd",
        display_name="AMD Instinct MI300X 192GB",
        memory_bytes=192 * GIB,
        mem_bandwidth_bytes_per_s=5300 * GB,
        # INT8 is not in the specs CSV; CDNA3 matrix cores run INT8 at the FP8 rate (AMD CDNA3 white paper).
        dense_flops_per_s=MappingProxyType(
            {"bf16": 1307 * TERA, "fp16": 1307 * TERA, "fp8": 2615 * TERA, "int8": 2615 * TERA}
        ),
        interconnect_bytes_per_s=INFINITY_FABRIC_MI300X_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8", "int4"),
        resource_name="amd.com/gpu",
        resource_units_per_device=1,
        # Set by the ROCm node labeller (ROCm/k8s-device-plugin), e.g. AMD_Instinct_MI300X_OAM.
        product_label_key="amd.com/gpu.product-name",
        product_label="AMD_Instinct_MI300X_OAM",
        default_price_per_hour=PRICE_MI300X_PER_HOUR,
        price_source=f"{_PRICES_CSV}: Azure MI300X per GPU",
        max_tp=8,
        sources=(f"{_SPECS_CSV}: MI300X",),
    ),
    Accelerator(
        id="inf2",
        vendor="aws",
        display_name="AWS Inferentia2 (2 NeuronCore-v2)",
        memory_bytes=32 * GIB,
        mem_bandwidth_bytes_per_s=820 * GIB,
        dense_flops_per_s=MappingProxyType(
            {"bf16": 190 * TERA, "fp16": 190 * TERA, "fp8": 190 * TERA, "int8": 380 * TERA}
        ),
        interconnect_bytes_per_s=NEURONLINK_V2_BYTES_PER_S,
        precisions=("bf16", "fp16", "fp8", "int8"),
        # The Neuron device plugin advertises NeuronCores; one Inferentia2 chip is two of them.
        resource_name="aws.amazon.com/neuroncore",
        resource_units_per_device=2,
        # Karpenter's well-known instance-family label (EKS managed nodes carry instance-type instead).
        product_label_key="karpenter.k8s.aws/instance-family",
        product_label="inf2",
        default_price_per_hour=PRICE_INF2_PER_HOUR,
        price_source="estimate: AWS inf2.48xlarge on-demand / 12 chips (not in the shared price corpus)",
        # inf2.48xlarge holds 12 chips; tensor parallel degrees used in practice are powers of two.
        max_tp=8,
        sources=(
            f"{_SPECS_CSV}: Inferentia2",
            "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/general/arch/neuron-hardware/inferentia2.html",
        ),
    ),
)

# MIG profiles per parent: (profile, compute slices of 7, memory slices of 8, max instances per GPU).
# NVIDIA MIG user guide (supported profiles); H200 names: aws/sagemaker-hyperpod-cli PR 403 (_MIG_CSV).
_MIG_PROFILES: Final[Mapping[str, tuple[tuple[str, int, int, int], ...]]] = MappingProxyType(
    {
        "a100-80gb": (
            ("1g.10gb", 1, 1, 7),
            ("1g.20gb", 1, 2, 4),
            ("2g.20gb", 2, 2, 3),
            ("3g.40gb", 3, 4, 2),
            ("4g.40gb", 4, 4, 1),
            ("7g.80gb", 7, 8, 1),
        ),
        "h100": (
            ("1g.10gb", 1, 1, 7),
            ("1g.20gb", 1, 2, 4),
            ("2g.20gb", 2, 2, 3),
            ("3g.40gb", 3, 4, 2),
            ("4g.40gb", 4, 4, 1),
            ("7g.80gb", 7, 8, 1),
        ),
        "h200": (
            ("1g.18gb", 1, 1, 7),
            ("1g.35gb", 1, 2, 4),
            ("2g.35gb", 2, 2, 3),
            ("3g.71gb", 3, 4, 2),
            ("4g.71gb", 4, 4, 1),
            ("7g.141gb", 7, 8, 1),
        ),
    }
)


def _mig_slice(
    parent: Accelerator, profile: str, compute_slices: int, memory_slices: int, max_instances: int
) -> Accelerator:
    """A MIG slice as a fraction of its parent: memory and bandwidth follow memory slices, compute GPCs."""
    compute_fraction = compute_slices / MIG_COMPUTE_SLICES
    memory_fraction = memory_slices / MIG_MEMORY_SLICES
    # A slice occupies the larger of its compute and memory share of the GPU, so it costs that share.
    price_share = max(compute_fraction, memory_fraction)
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
        default_price_per_hour=round(parent.default_price_per_hour * price_share, 4),
        price_source=f"parent default x max(compute {compute_slices}/7, memory {memory_slices}/8)",
        max_tp=1,
        sources=(*parent.sources, f"{_MIG_CSV}: {profile}"),
        parent=parent.id,
        mig_profile=profile,
        mig_compute_fraction=compute_fraction,
        mig_memory_fraction=memory_fraction,
        mig_max_instances=max_instances,
    )


def _build_accelerators() -> dict[str, Accelerator]:
    """Whole chips first, then every MIG slice of the MIG-capable ones."""
    table = {chip.id: chip for chip in _FULL_CHIPS}
    for parent_id, profiles in _MIG_PROFILES.items():
        for profile, compute_slices, memory_slices, max_instances in profiles:
            mig = _mig_slice(table[parent_id], profile, compute_slices, memory_slices, max_instances)
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


def engine_supports(engine: str, accelerator: Accelerator, role: str = "aggregated") -> bool:
    """True when `engine` runs replicas of `role` (aggregated, prefill, decode) on this vendor's chips."""
    return engine_supports_vendor(engine, accelerator.vendor, role)


def engine_supports_vendor(engine: str, vendor: str, role: str = "aggregated") -> bool:
    """True when `engine` runs replicas of `role` on chips of `vendor`."""
    table = ENGINE_VENDORS if role == "aggregated" else ENGINE_DISAGGREGATED_VENDORS
    return vendor in table.get(engine, frozenset())
