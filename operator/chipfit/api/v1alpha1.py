"""chipfit.io/v1alpha1 API types: the single source of truth for the CRDs in crds/.

Field names are snake_case in Python and camelCase on the wire (`ttft_p99_ms` <-> `ttftP99Ms`). Cross-field
rules are CEL expressions attached to the schema (`x-kubernetes-validations`): the API server enforces them,
and `chipfit validate` evaluates the very same expressions offline (chipfit.validation).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from placement import catalog

GROUP: Final = "chipfit.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "chipfit.io/v1alpha1"

# Kubernetes object names: RFC 1123 DNS subdomain (what metadata.name accepts for most kinds).
DNS_SUBDOMAIN_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX_LENGTH = 253
# Label values and condition reasons, as metav1 defines them.
CONDITION_REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# Upper bounds that keep CEL cost estimates inside the API server's budget and reject absurd input.
MAX_LIST_ITEMS = 64
MAX_PROFILE_POINTS = 256
MAX_BUCKETS = 32
MAX_NAME_LENGTH = 253
MAX_TEXT_LENGTH = 4096
# The dearest device in docs/prices.md costs ~$12/device-hour on demand; 1,000 rejects a typo off by orders
# of magnitude (an absurd price overflows the solver's $/h sums) and leaves room for any real chip.
MAX_PRICE_PER_DEVICE_HOUR = 1000.0
# Largest context any catalog model supports is 128k (Llama 3.1); 10M leaves room for inline models.
MAX_CONTEXT_TOKENS = 10_000_000


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry; field_path points the API server's error at the right field."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def _cel_list(values: list[str]) -> str:
    """A CEL list literal of strings."""
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def _enum_schema(values: list[str], description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": values, "description": description})


# Any chip id: a whole device (h100, b200, my-npu) or a partition of one written <parent>/<profile>
# (h100/1g.10gb). Catalog ids need nothing more; any other id is declared by a pool's acceleratorSpec.
ACCELERATOR_ID_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(/[1-7]g\.[0-9]{1,4}gb)?$"
ACCELERATOR_ID_MAX_LENGTH = 80
# Whole chips and slices of the built-in catalog (placement/data/accelerators.toml): the CEL rule below
# lets these through without an inline spec.
CATALOG_ACCELERATOR_IDS: Final = sorted(catalog.ACCELERATORS)
# Catalog ids with a default price; any other pool states pricePerDeviceHour.
PRICED_ACCELERATOR_IDS: Final = sorted(
    a.id for a in catalog.ACCELERATORS.values() if a.default_price_per_hour is not None
)

AcceleratorId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=ACCELERATOR_ID_MAX_LENGTH,
        pattern=ACCELERATOR_ID_RE,
        description="Accelerator id: a whole device (h100, mi300x, b200, or any id a pool declares with "
        "acceleratorSpec) or a MIG slice written <parent>/<profile> (h100/1g.10gb).",
    ),
]
ModelId = Annotated[
    str, _enum_schema(sorted(catalog.MODELS), "Model id from the chipfit catalog (llama-3.1-8b, ...).")
]
Precision = Literal["bf16", "fp16", "fp8", "int8", "int4"]
Engine = Literal["vllm", "sglang", "trtllm", "tgi", "neuron"]
EngineVersion = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=r"^v?[0-9]+\.[0-9]+([.][0-9]+)?([-+.]?[0-9A-Za-z.]+)?$",
        description="Engine release (e.g. 1.0, v0.17.0): efficiency depends on it; a measured profile "
        "applies only to the release it was measured on.",
    ),
]
ServingMode = Literal["aggregated", "disaggregated", "auto"]
Role = Literal["aggregated", "prefill", "decode"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
ConditionStatus = Literal["True", "False", "Unknown"]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_SUBDOMAIN_RE)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, validated on assignment."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ObjectMeta(BaseModel):
    """The part of metav1.ObjectMeta chipfit reads; server-populated fields are kept as they are."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="allow"
    )

    name: Name
    namespace: Name | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None


class Condition(ApiModel):
    """metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_RE)]
    message: Annotated[str, Field(max_length=32768)] = ""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    observed_generation: Annotated[int, Field(ge=0)] | None = None


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=MAX_LIST_ITEMS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


# ---------------------------------------------------------------------------------------------------------
# AcceleratorPool
# ---------------------------------------------------------------------------------------------------------


class Taint(ApiModel):
    """A taint the pool's nodes carry; serving pods placed there get the matching toleration."""

    key: Annotated[str, Field(min_length=1, max_length=316)]
    value: Annotated[str, Field(max_length=63)] = ""
    effect: TaintEffect = "NoSchedule"


class DenseTflops(ApiModel):
    """Dense (no sparsity) peak tensor throughput per compute precision, TFLOPS (TOPS for int8)."""

    bf16: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    fp16: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    fp8: Annotated[float, Field(gt=0, le=1_000_000)] | None = None
    int8: Annotated[float, Field(gt=0, le=1_000_000)] | None = None


class NodeLabel(ApiModel):
    """A node label (key, value) that marks nodes carrying this chip (e.g. nvidia.com/gpu.product)."""

    key: Annotated[str, Field(min_length=1, max_length=316)]
    value: Annotated[str, Field(max_length=63)]


class ChipPartition(ApiModel):
    """One way the chip can be cut (an NVIDIA MIG profile): GPC slices of 7, memory slices of 8."""

    profile: Annotated[str, Field(pattern=r"^[1-7]g\.[0-9]{1,4}gb$", description="e.g. 1g.23gb")]
    compute_slices: Annotated[int, Field(ge=1, le=7)]
    memory_slices: Annotated[int, Field(ge=1, le=8)]
    max_instances: Annotated[int, Field(ge=1, le=7, description="Instances of this profile per chip.")]


class AcceleratorSpec(ApiModel):
    """A chip described by its specs: what the performance model predicts from when it has no calibration.

    Given inline on the pool that runs it, so a pool is self-contained: the spec is validated, versioned and
    deleted with the capacity it describes.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.denseTflops.bf16) || has(self.denseTflops.fp16)",
                    "denseTflops needs bf16 or fp16 (the rate 16-bit and int4 weights compute at)",
                    ".denseTflops",
                ),
                cel(
                    "self.precisions.all(p, !(p in ['bf16', 'fp16', 'fp8']) || "
                    "(p == 'bf16' && has(self.denseTflops.bf16)) "
                    "|| (p == 'fp16' && has(self.denseTflops.fp16)) "
                    "|| (p == 'fp8' && has(self.denseTflops.fp8)))",
                    "every served bf16, fp16 or fp8 precision needs its denseTflops figure",
                    ".precisions",
                ),
            ]
        }
    )

    vendor: Annotated[
        Literal["nvidia", "amd", "aws"],
        Field(
            description="Whose chip: picks the engines that drive it and the efficiency family it is "
            "predicted with until calibrated."
        ),
    ]
    display_name: Annotated[str, Field(max_length=253)] | None = None
    memory_gib: Annotated[float, Field(gt=0, le=65536, description="Device memory, GiB.")]
    memory_bandwidth_gbps: Annotated[
        float, Field(gt=0, le=1_000_000, description="Peak device memory bandwidth, GB/s (decimal).")
    ]
    dense_tflops: DenseTflops
    precisions: Annotated[
        list[Precision],
        Field(
            min_length=1,
            max_length=5,
            description="Weight precisions the chip and its engines serve.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ]
    interconnect_gbps: Annotated[
        float,
        Field(
            ge=0, le=1_000_000, description="Device-to-device bandwidth within a node, per direction, GB/s."
        ),
    ]
    max_tensor_parallel: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_LIST_ITEMS,
            description="Devices one replica may span over that interconnect (the node's devices, e.g. 8 "
            "on an HGX board, 4 on a GB200 tray).",
        ),
    ]
    resource_name: (
        Annotated[
            str,
            Field(
                max_length=253,
                pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
                description="Extended resource the vendor's device plugin advertises; defaults to the "
                "vendor's (nvidia.com/gpu, amd.com/gpu, aws.amazon.com/neuroncore).",
            ),
        ]
        | None
    ) = None
    resource_units_per_device: (
        Annotated[
            int,
            Field(
                ge=1,
                le=MAX_LIST_ITEMS,
                description="Units of that resource per device (2 NeuronCores per Inferentia2).",
            ),
        ]
        | None
    ) = None
    node_label: NodeLabel | None = None
    partitions: Annotated[list[ChipPartition], Field(max_length=16)] | None = None
    source: Annotated[
        str, Field(min_length=1, max_length=MAX_TEXT_LENGTH, description="Where the figures come from.")
    ]

    def to_catalog(self, accelerator_id: str, price_per_hour: float | None) -> catalog.Accelerator:
        """The placement layer's accelerator for this spec (the whole chip `accelerator_id`)."""
        tflops = {k: v for k, v in self.dense_tflops.model_dump(by_alias=False).items() if v is not None}
        return catalog.accelerator_from_spec(
            id=accelerator_id,
            vendor=self.vendor,
            display_name=self.display_name,
            memory_bytes=int(self.memory_gib * catalog.GIB),
            mem_bandwidth_bytes_per_s=self.memory_bandwidth_gbps * catalog.GB,
            dense_tflops=tflops,
            interconnect_bytes_per_s=self.interconnect_gbps * catalog.GB,
            precisions=tuple(self.precisions),
            max_tp=self.max_tensor_parallel,
            resource_name=self.resource_name,
            resource_units_per_device=self.resource_units_per_device,
            product_label_key=self.node_label.key if self.node_label else None,
            product_label=self.node_label.value if self.node_label else "",
            price_per_hour=price_per_hour,
            price_source="the pool's pricePerDeviceHour",
            sources=(f"inline acceleratorSpec: {self.source}",),
            partitions=tuple(
                catalog.Partition(p.profile, p.compute_slices, p.memory_slices, p.max_instances)
                for p in self.partitions or ()
            ),
            origin="inline",
        )


class AcceleratorPoolSpec(ApiModel):
    """A homogeneous group of nodes: one accelerator type (or MIG slice), a price, a capacity."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.accelerator.contains('/') || !has(self.resourceName) "
                    "|| self.resourceName.startsWith('nvidia.com/mig-')",
                    "a MIG slice pool must use an nvidia.com/mig-* resource name",
                    ".resourceName",
                ),
                cel(
                    f"has(self.acceleratorSpec) || self.accelerator in {CATALOG_ACCELERATOR_IDS!r}",
                    "an accelerator outside the built-in catalog needs acceleratorSpec (its specs)",
                    ".accelerator",
                ),
                cel(
                    f"has(self.pricePerDeviceHour) || self.accelerator in {PRICED_ACCELERATOR_IDS!r}",
                    "pricePerDeviceHour is required: the catalog has no price for this accelerator",
                    ".pricePerDeviceHour",
                ),
            ]
        }
    )

    accelerator: AcceleratorId
    accelerator_spec: Annotated[
        AcceleratorSpec | None,
        Field(
            description="The chip's specs. Required for an id outside the built-in catalog; for a catalog id "
            "it replaces the catalog's figures for this pool. For a slice id it describes the whole chip "
            "and must list the slice's profile in partitions."
        ),
    ] = None
    devices_per_node: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_LIST_ITEMS,
            description="Devices (or MIG slices, for a slice pool) each node offers; a TP-N replica needs "
            "N of them on one node.",
        ),
    ]
    nodes: Annotated[
        int,
        Field(
            ge=0,
            le=100_000,
            description="Nodes in the pool, used by `chipfit plan`; the operator uses the ready, "
            "schedulable nodes it sees.",
        ),
    ]
    price_per_device_hour: Annotated[
        float | None,
        Field(
            ge=0,
            le=MAX_PRICE_PER_DEVICE_HOUR,
            description="US dollars per device-hour; defaults to the catalog's price.",
        ),
    ] = None
    spot: Annotated[bool, Field(description="Spot / preemptible capacity.")] = False
    instance_type: Annotated[str, Field(max_length=63, description="Cloud instance type, informational.")] | (
        None
    ) = None
    node_selector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]],
        Field(max_length=MAX_LIST_ITEMS, description="Labels selecting this pool's nodes."),
    ] = Field(default_factory=dict)
    taints: Annotated[
        list[Taint],
        Field(
            max_length=MAX_LIST_ITEMS,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["key", "effect"],
            },
        ),
    ] = Field(default_factory=list)
    resource_name: (
        Annotated[
            str,
            Field(
                max_length=253,
                pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
                description="Extended resource the device plugin advertises; defaults to the catalog's.",
            ),
        ]
        | None
    ) = None


class AcceleratorPoolStatus(ApiModel):
    """What the operator sees of the pool's nodes."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    nodes_ready: Annotated[int, Field(ge=0)] | None = None
    devices_total: Annotated[int, Field(ge=0)] | None = None
    devices_allocated: Annotated[int, Field(ge=0)] | None = None
    devices_free: Annotated[int, Field(ge=0)] | None = None
    dollars_per_hour: Annotated[float, Field(ge=0)] | None = None
    conditions: Conditions | None = None


class AcceleratorPool(ApiModel):
    """AcceleratorPool (cluster-scoped)."""

    api_version: Literal["chipfit.io/v1alpha1"] = API_VERSION
    kind: Literal["AcceleratorPool"] = "AcceleratorPool"
    metadata: ObjectMeta
    spec: AcceleratorPoolSpec
    status: AcceleratorPoolStatus | None = None


# ---------------------------------------------------------------------------------------------------------
# InferenceService
# ---------------------------------------------------------------------------------------------------------


class ModelArchitecture(ApiModel):
    """A transformer defined inline, for models outside the catalog."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.numHeads % self.numKvHeads == 0",
                    "numHeads must be a multiple of numKvHeads",
                    ".numKvHeads",
                ),
                cel(
                    "self.expertsPerToken <= self.numExperts",
                    "expertsPerToken must not exceed numExperts",
                    ".expertsPerToken",
                ),
            ]
        }
    )

    num_layers: Annotated[int, Field(ge=1, le=1024)]
    hidden_size: Annotated[int, Field(ge=1, le=1_000_000)]
    num_heads: Annotated[int, Field(ge=1, le=4096)]
    num_kv_heads: Annotated[int, Field(ge=1, le=4096)]
    head_dim: Annotated[int, Field(ge=1, le=4096)]
    intermediate_size: Annotated[int, Field(ge=1, le=10_000_000)]
    vocab_size: Annotated[int, Field(ge=1, le=10_000_000)]
    num_experts: Annotated[int, Field(ge=1, le=1024)] = 1
    experts_per_token: Annotated[int, Field(ge=1, le=1024)] = 1
    max_context_tokens: Annotated[int, Field(ge=1, le=MAX_CONTEXT_TOKENS)]

    def to_catalog(self, name: str) -> catalog.ModelArch:
        """The architecture as the performance model's type, under the service's model name."""
        return catalog.ModelArch(
            id=name,
            layers=self.num_layers,
            hidden_size=self.hidden_size,
            heads=self.num_heads,
            kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            max_context_tokens=self.max_context_tokens,
            experts=self.num_experts,
            active_experts=self.experts_per_token,
        )


class ModelRef(ApiModel):
    """Either a catalog model (`id`) or an inline one (`name` + `architecture`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.id) != has(self.architecture)", "set exactly one of id and architecture"),
                cel(
                    "!has(self.architecture) || has(self.name)",
                    "an inline architecture needs a name",
                    ".architecture",
                ),
                cel(
                    "!has(self.architecture) || has(self.source)",
                    "an inline architecture needs a source: where the engine loads its weights from",
                    ".source",
                ),
            ]
        }
    )

    id: ModelId | None = None
    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")] | (
        None
    ) = None
    architecture: ModelArchitecture | None = None
    source: (
        Annotated[
            str,
            Field(
                max_length=MAX_TEXT_LENGTH,
                description="Where the engine loads weights from (Hugging Face repo id or URI); defaults to "
                "the catalog's repo.",
            ),
        ]
        | None
    ) = None


class Slo(ApiModel):
    """Latency objectives, both p99."""

    ttft_p99_ms: Annotated[float, Field(gt=0, le=3_600_000, description="Time to first token, p99, ms.")]
    itl_p99_ms: Annotated[float, Field(gt=0, le=60_000, description="Inter-token latency, p99, ms.")]


class TokenDistribution(ApiModel):
    """Tokens per request: mean and (optionally) p99; chipfit fits a log-normal to them."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.p99) || self.p99 >= self.mean", "p99 must be at least mean", ".p99"),
            ]
        }
    )

    mean: Annotated[float, Field(ge=1, le=MAX_CONTEXT_TOKENS)]
    p99: Annotated[float, Field(ge=1, le=MAX_CONTEXT_TOKENS)] | None = None


class Workload(ApiModel):
    """Expected traffic."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                # A p99 defaults to the mean, as chipfit.rules.tokens_p99 says (the planner needs the p99
                # request to fit).
                cel(
                    "!has(self.maxContextTokens) || double(self.maxContextTokens) >= "
                    "(has(self.promptTokens.p99) ? self.promptTokens.p99 : self.promptTokens.mean) + "
                    "(has(self.outputTokens.p99) ? self.outputTokens.p99 : self.outputTokens.mean)",
                    "maxContextTokens must hold a p99 prompt plus a p99 output (a missing p99 is the mean)",
                    ".maxContextTokens",
                ),
            ]
        }
    )

    requests_per_second: Annotated[float, Field(ge=0, le=1_000_000, description="Mean arrival rate.")]
    prompt_tokens: TokenDistribution
    output_tokens: TokenDistribution
    max_context_tokens: (
        Annotated[
            int,
            Field(
                ge=1,
                le=MAX_CONTEXT_TOKENS,
                description="Longest prompt + output to serve; engine max length.",
            ),
        ]
        | None
    ) = None


class Replicas(ApiModel):
    """Bounds on replicas per role."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!has(self.max) || self.min <= self.max", "min must not exceed max", ".min"),
                cel("!self.scaleToZero || self.min == 0", "scaleToZero needs min 0", ".scaleToZero"),
            ]
        }
    )

    min: Annotated[int, Field(ge=0, le=10_000)] = 0
    max: Annotated[int, Field(ge=1, le=10_000)] | None = None
    scale_to_zero: bool = False


AcceleratorList = Annotated[
    list[AcceleratorId], Field(max_length=MAX_LIST_ITEMS, json_schema_extra={"x-kubernetes-list-type": "set"})
]
PoolList = Annotated[
    list[Name], Field(max_length=MAX_LIST_ITEMS, json_schema_extra={"x-kubernetes-list-type": "set"})
]


class PlacementConstraints(ApiModel):
    """Where the service may run, and how much it matters when capacity is short."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.allowedAccelerators) || !has(self.excludedAccelerators) || "
                    "!self.allowedAccelerators.exists(a, a in self.excludedAccelerators)",
                    "an accelerator cannot be both allowed and excluded",
                    ".excludedAccelerators",
                ),
                cel(
                    "!has(self.allowedPools) || !has(self.excludedPools) || "
                    "!self.allowedPools.exists(p, p in self.excludedPools)",
                    "a pool cannot be both allowed and excluded",
                    ".excludedPools",
                ),
            ]
        }
    )

    allowed_accelerators: AcceleratorList | None = None
    excluded_accelerators: AcceleratorList | None = None
    allowed_pools: PoolList | None = None
    excluded_pools: PoolList | None = None
    spot_allowed: Annotated[bool, Field(description="May run on spot pools.")] = True
    priority: Annotated[
        int,
        Field(ge=0, le=1000, description="Higher wins when capacity is short; 0 is served last."),
    ] = 100


class Budget(ApiModel):
    """Spending cap for this service."""

    max_dollars_per_hour: Annotated[float, Field(gt=0, le=1_000_000)]


class EnvVar(ApiModel):
    """A plain environment variable for the engine container."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    value: Text = ""


class EngineOverrides(ApiModel):
    """Escape hatches: a different image, extra engine flags, extra environment."""

    image: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH)] | None = None
    extra_args: Annotated[list[Text], Field(max_length=MAX_LIST_ITEMS)] | None = None
    env: (
        Annotated[
            list[EnvVar],
            Field(
                max_length=MAX_LIST_ITEMS,
                json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
            ),
        ]
        | None
    ) = None


class InferenceServiceSpec(ApiModel):
    """A model to serve, its latency objectives and its traffic."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.serving != 'disaggregated' || self.engine in ['vllm', 'sglang', 'trtllm']",
                    "disaggregated serving needs engine vllm, sglang or trtllm",
                    ".serving",
                ),
            ]
        }
    )

    model: ModelRef
    precisions: Annotated[
        list[Precision],
        Field(
            min_length=1,
            max_length=5,
            description="Weight precisions chipfit may choose from.",
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = ["bf16"]
    engine: Engine = "vllm"
    engine_version: EngineVersion | None = None
    slo: Slo
    workload: Workload
    serving: ServingMode = "auto"
    replicas: Replicas | None = None
    placement: PlacementConstraints | None = None
    budget: Budget | None = None
    overrides: EngineOverrides | None = None


class PricedEngineConfig(ApiModel):
    """The engine settings the plan priced this placement's capacity with; its pods run exactly these."""

    prefill_chunk_tokens: (
        Annotated[
            int,
            Field(
                ge=1,
                le=MAX_CONTEXT_TOKENS,
                description="Chunked-prefill token budget per iteration (unset: the engine's default).",
            ),
        ]
        | None
    ) = None
    max_num_seqs: (
        Annotated[
            int,
            Field(ge=1, le=1_000_000, description="Concurrent sequence cap (unset: the engine's default)."),
        ]
        | None
    ) = None
    max_model_len: (
        Annotated[
            int,
            Field(ge=1, le=MAX_CONTEXT_TOKENS, description="Longest prompt + output the engine admits."),
        ]
        | None
    ) = None


class RolePlacement(ApiModel):
    """Where one role of the service runs."""

    role: Role
    pool: Name
    accelerator: AcceleratorId
    precision: Precision
    tensor_parallel: Annotated[int, Field(ge=1, le=64)]
    replicas: Annotated[int, Field(ge=0)]
    ready_replicas: Annotated[int, Field(ge=0)] | None = None
    engine_config: PricedEngineConfig | None = None


class Prediction(ApiModel):
    """What the performance model predicts for the placed service."""

    ttft_p99_ms: Annotated[float, Field(ge=0)] | None = None
    itl_p99_ms: Annotated[float, Field(ge=0)] | None = None
    max_requests_per_second: Annotated[float, Field(ge=0)] | None = None
    dollars_per_hour: Annotated[float, Field(ge=0)] | None = None
    dollars_per_million_output_tokens: Annotated[float, Field(ge=0)] | None = None
    trust: (
        Annotated[
            str,
            Field(
                max_length=MAX_TEXT_LENGTH,
                description="How far the prediction can be trusted: measured, calibrated, engine-derived "
                "or uncalibrated (predicted from specs), and whether the load is inside the calibrated "
                "range.",
            ),
        ]
        | None
    ) = None
    typical_error_percent: (
        Annotated[
            float,
            Field(
                ge=0, description="Typical |error| of predictions at this trust level (least trusted role)."
            ),
        ]
        | None
    ) = None


class AutoscalingStatus(ApiModel):
    """What the autoscaler saw and decided last (docs/autoscaling.md)."""

    observed_requests_per_second: Annotated[float, Field(ge=0)] | None = None
    observed_ttft_p99_ms: Annotated[float, Field(ge=0)] | None = None
    observed_itl_p99_ms: Annotated[float, Field(ge=0)] | None = None
    slo_attainment: (
        Annotated[float, Field(ge=0, le=1, description="Share of requests with TTFT within the SLO.")] | None
    ) = None
    sized_requests_per_second: Annotated[float, Field(ge=0)] | None = None
    capacity_correction: Annotated[float, Field(ge=0)] | None = None
    dollars_per_hour: Annotated[float, Field(ge=0)] | None = None
    observed_dollars_per_million_output_tokens: Annotated[float, Field(ge=0)] | None = None
    last_decision: Literal["up", "down", "move", "hold"] | None = None
    last_decision_reason: Text | None = None
    last_decision_time: Annotated[str, Field(max_length=64)] | None = None
    pending_requests: (
        Annotated[float, Field(ge=0, description="Requests the activator holds for a ready replica.")] | None
    ) = None
    cold_start_seconds: (
        Annotated[
            float,
            Field(ge=0, description="How long the first request of the last scale from zero waited."),
        ]
        | None
    ) = None


class InferenceServiceStatus(ApiModel):
    """Placement, predictions and conditions, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions | None = None
    placement: Annotated[list[RolePlacement], Field(max_length=MAX_LIST_ITEMS)] | None = None
    accelerator_summary: (
        Annotated[str, Field(max_length=MAX_TEXT_LENGTH, description="e.g. 'h100x2 + l4x3' for kubectl get.")]
        | None
    ) = None
    replicas_summary: (
        Annotated[str, Field(max_length=64, description="ready/desired over all roles, for kubectl get.")]
        | None
    ) = None
    predicted: Prediction | None = None
    autoscaling: AutoscalingStatus | None = None


class InferenceService(ApiModel):
    """InferenceService (namespaced)."""

    api_version: Literal["chipfit.io/v1alpha1"] = API_VERSION
    kind: Literal["InferenceService"] = "InferenceService"
    metadata: ObjectMeta
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None


# ---------------------------------------------------------------------------------------------------------
# PerformanceProfile
# ---------------------------------------------------------------------------------------------------------


class ProfilePoint(ApiModel):
    """One measured load point of one replica: a fixed concurrency, or Poisson arrivals at a fixed rate."""

    concurrency: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="Requests in flight: the fixed concurrency of a sweep point, or the mean in flight "
            "(rounded, at least 1) under Poisson arrivals.",
        ),
    ]
    prompt_tokens: Annotated[int, Field(ge=1, le=MAX_CONTEXT_TOKENS)]
    output_tokens: Annotated[int, Field(ge=1, le=MAX_CONTEXT_TOKENS)]
    requests_per_second: Annotated[float, Field(gt=0)] | None = None
    output_tokens_per_second: Annotated[float, Field(gt=0)]
    ttft_p50_ms: Annotated[float, Field(gt=0)] | None = None
    ttft_p99_ms: Annotated[float, Field(gt=0)]
    itl_p50_ms: Annotated[float, Field(gt=0)] | None = None
    itl_p99_ms: Annotated[float, Field(gt=0)]
    # What `chipfit profile` records beyond the planner's needs (all optional, for published points).
    offered_requests_per_second: (
        Annotated[
            float, Field(gt=0, description="Poisson arrival rate offered (absent: a concurrency point).")
        ]
        | None
    ) = None
    ttft_mean_ms: Annotated[float, Field(gt=0)] | None = None
    ttft_p90_ms: Annotated[float, Field(gt=0)] | None = None
    itl_mean_ms: Annotated[float, Field(gt=0)] | None = None
    itl_p90_ms: Annotated[float, Field(gt=0)] | None = None
    requests: Annotated[int, Field(ge=0, description="Requests measured (warm-up excluded).")] | None = None
    errors: Annotated[int, Field(ge=0, description="Requests that failed within the measured window.")] | (
        None
    ) = None
    duration_seconds: Annotated[float, Field(gt=0, description="Length of the measured window.")] | None = (
        None
    )


class BucketTable(ApiModel):
    """Mélange-style table: max req/s one replica sustains under `slo`, per prompt x output bucket."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.maxRequestsPerSecond.size() == self.promptTokenBuckets.size()",
                    "maxRequestsPerSecond needs one row per prompt bucket",
                    ".maxRequestsPerSecond",
                ),
                cel(
                    "self.maxRequestsPerSecond.all(row, row.size() == self.outputTokenBuckets.size())",
                    "every row of maxRequestsPerSecond needs one value per output bucket",
                    ".maxRequestsPerSecond",
                ),
            ]
        }
    )

    slo: Slo
    prompt_token_buckets: Annotated[
        list[Annotated[int, Field(ge=1)]],
        Field(min_length=1, max_length=MAX_BUCKETS, description="Upper edge of each prompt-length bucket."),
    ]
    output_token_buckets: Annotated[
        list[Annotated[int, Field(ge=1)]],
        Field(min_length=1, max_length=MAX_BUCKETS, description="Upper edge of each output-length bucket."),
    ]
    max_requests_per_second: Annotated[
        list[Annotated[list[Annotated[float, Field(ge=0)]], Field(max_length=MAX_BUCKETS)]],
        Field(min_length=1, max_length=MAX_BUCKETS),
    ]


class ProfileSource(ApiModel):
    """Where a measurement came from."""

    description: Text
    url: Annotated[str, Field(max_length=MAX_TEXT_LENGTH)] | None = None
    measured_at: Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None = None
    tool: (
        Annotated[str, Field(max_length=MAX_TEXT_LENGTH, description="Harness and version that measured it.")]
        | None
    ) = None
    endpoint: (
        Annotated[
            str, Field(max_length=MAX_TEXT_LENGTH, description="The serving endpoint that was measured.")
        ]
        | None
    ) = None


# A profile names its model by catalog id or, with an inline architecture, by the served model's name.
ProfileModelName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[a-z0-9]([-a-z0-9._/]*[a-z0-9])?$",
        description="Catalog model id (llama-3.1-8b, ...), or the served model's name when `architecture` "
        "describes it inline.",
    ),
]
# Accelerator of a profile: a catalog id or the id of a chip a pool declares by its specs.
ProfileAcceleratorId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[1-7]g\.[0-9]+gb)?$",
        description="Accelerator id: a catalog chip or MIG slice (h100, h100/1g.10gb), or a chip declared by "
        "its specs.",
    ),
]


class PerformanceProfileSpec(ApiModel):
    """Measured performance of one (model, accelerator, precision, engine, tp) replica."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.points) != has(self.bucketTable)", "set exactly one of points and bucketTable"),
                cel(
                    "has(self.architecture) || self.model in " + _cel_list(sorted(catalog.MODELS)),
                    "model must be a catalog id, or set architecture for a model outside the catalog",
                    ".model",
                ),
                cel(
                    "!has(self.partialReason) || (has(self.partial) && self.partial)",
                    "partialReason needs partial: true",
                    ".partialReason",
                ),
            ]
        }
    )

    model: ProfileModelName
    architecture: ModelArchitecture | None = None
    accelerator: ProfileAcceleratorId
    precision: Precision
    engine: Engine = "vllm"
    engine_version: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=128,
                description="Engine version measured (vLLM's /version); a profile applies to that version.",
            ),
        ]
        | None
    ) = None
    engine_image: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH)] | None = None
    tensor_parallel: Annotated[int, Field(ge=1, le=64)] = 1
    source: ProfileSource
    points: Annotated[list[ProfilePoint], Field(min_length=1, max_length=MAX_PROFILE_POINTS)] | None = None
    bucket_table: BucketTable | None = None
    partial: (
        Annotated[
            bool,
            Field(
                description="True when the run stopped early on an error: the points are what was measured."
            ),
        ]
        | None
    ) = None
    partial_reason: Text | None = None


class PerformanceProfileStatus(ApiModel):
    """How the operator used the profile."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: Conditions | None = None


class PerformanceProfile(ApiModel):
    """PerformanceProfile (cluster-scoped)."""

    api_version: Literal["chipfit.io/v1alpha1"] = API_VERSION
    kind: Literal["PerformanceProfile"] = "PerformanceProfile"
    metadata: ObjectMeta
    spec: PerformanceProfileSpec
    status: PerformanceProfileStatus | None = None


# ---------------------------------------------------------------------------------------------------------
# ProfilingRun
# ---------------------------------------------------------------------------------------------------------

MAX_LOAD_LEVELS = 16


class ServiceRef(ApiModel):
    """An InferenceService by namespace and name."""

    namespace: Name
    name: Name


class ProfilingLoad(ApiModel):
    """What the profiler Job sends: `chipfit profile` options (concurrency sweep or Poisson rates)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.concurrency) && has(self.requestsPerSecond))",
                    "set at most one of concurrency and requestsPerSecond",
                ),
            ]
        }
    )

    concurrency: (
        Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=MAX_LOAD_LEVELS)]
        | None
    ) = None
    requests_per_second: (
        Annotated[
            list[Annotated[float, Field(gt=0, le=100_000)]], Field(min_length=1, max_length=MAX_LOAD_LEVELS)
        ]
        | None
    ) = None
    prompt_tokens: Annotated[int, Field(ge=1, le=MAX_CONTEXT_TOKENS)] = 256
    output_tokens: Annotated[int, Field(ge=2, le=MAX_CONTEXT_TOKENS)] = 64
    duration_seconds: Annotated[int, Field(ge=1, le=3600)] = 30
    warmup_seconds: Annotated[int, Field(ge=0, le=600)] = 5
    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 120
    api: Literal["completions", "chat"] = "completions"


class ProfilingRunSpec(ApiModel):
    """Profile one pool's serving Deployment of an InferenceService with a Job running `chipfit profile`."""

    service: ServiceRef
    pool: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=DNS_SUBDOMAIN_RE,
            description="AcceleratorPool whose Deployment of the service is measured (aggregated role).",
        ),
    ]
    load: ProfilingLoad = Field(default_factory=ProfilingLoad)
    image: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_TEXT_LENGTH,
                description="Profiler image (default: chipfit's own).",
            ),
        ]
        | None
    ) = None


class ProfilingRunStatus(ApiModel):
    """Progress of a run, the Job it created and the profile it produced."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] | None = None
    job: Annotated[str, Field(max_length=MAX_NAME_LENGTH)] | None = None
    profile: Annotated[str, Field(max_length=MAX_NAME_LENGTH)] | None = None
    target: (
        Annotated[str, Field(max_length=MAX_TEXT_LENGTH, description="The URL the Job measured.")] | None
    ) = None
    engine_image: Annotated[str, Field(max_length=MAX_TEXT_LENGTH)] | None = None
    replicas: Annotated[
        int, Field(ge=0, description="Ready replicas behind the URL when the Job started.")
    ] | (None) = None
    message: Text | None = None
    conditions: Conditions | None = None


class ProfilingRun(ApiModel):
    """ProfilingRun (cluster-scoped, like the PerformanceProfile it owns)."""

    api_version: Literal["chipfit.io/v1alpha1"] = API_VERSION
    kind: Literal["ProfilingRun"] = "ProfilingRun"
    metadata: ObjectMeta
    spec: ProfilingRunSpec
    status: ProfilingRunStatus | None = None


Resource = InferenceService | AcceleratorPool | PerformanceProfile | ProfilingRun
