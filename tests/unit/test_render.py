"""Renderers: per engine and vendor, checked with plain asserts and kubernetes-validate --strict."""

from __future__ import annotations

from typing import Any

import hypothesis
import hypothesis.strategies as st
import kubernetes_validate
import pytest

from chipfit import engines, render, rules
from chipfit.api import v1alpha1
from placement import catalog
from tests.unit.chipfit_builders import POOLS, SERVICES, UID, placement

# The e2e control plane runs Kubernetes 1.33 (e2e/go.mod); validate against the same schema.
KUBERNETES_VERSION = "1.33.0"
SIZING = engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=64)


def with_engine(name: str, engine: str) -> v1alpha1.InferenceService:
    service = SERVICES[name].model_copy(deep=True)
    service.spec.engine = engine  # type: ignore[assignment]
    return service


def validate_strict(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


# (service, engine, pool, tp, resource name, units)
CASES = [
    ("chat-8b", "vllm", "l4-g6", 1, "nvidia.com/gpu", "1"),
    ("chat-8b", "vllm", "h100-mig-1g10gb", 1, "nvidia.com/mig-1g.10gb", "1"),
    ("rag-70b", "vllm", "mi300x-nd", 2, "amd.com/gpu", "2"),
    ("code-complete", "sglang", "h100-p5", 2, "nvidia.com/gpu", "2"),
    ("code-complete", "sglang", "mi300x-nd", 1, "amd.com/gpu", "1"),
    ("chat-8b", "trtllm", "h200-p5e", 4, "nvidia.com/gpu", "4"),
    ("chat-8b", "tgi", "l40s-g6e", 2, "nvidia.com/gpu", "2"),
    ("chat-8b", "tgi", "mi300x-nd", 1, "amd.com/gpu", "1"),
    ("internal-helpdesk", "neuron", "inf2-48xl", 2, "aws.amazon.com/neuroncore", "4"),
    ("internal-helpdesk", "tgi", "inf2-48xl", 1, "aws.amazon.com/neuroncore", "2"),
]


@pytest.mark.parametrize(("name", "engine", "pool", "tp", "resource", "units"), CASES)
def test_deployment_per_engine_and_vendor(
    name: str, engine: str, pool: str, tp: int, resource: str, units: str
) -> None:
    service = with_engine(name, engine)
    deployment = render.render_deployment(service, placement("aggregated", pool, tp=tp), POOLS[pool], SIZING)
    validate_strict(deployment)
    c = container(deployment)
    assert c["resources"]["limits"] == {resource: units}
    assert c["resources"]["requests"] == {resource: units}
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["namespace"] == "ml-serving"
    assert deployment["metadata"]["name"] == f"{name}-aggregated-{pool}-bf16-tp{tp}"


def test_affinity_tolerations_shm_probes_labels_owner() -> None:
    service = SERVICES["chat-8b"]
    pool = POOLS["l4-g6-spot"]
    deployment = render.render_deployment(service, placement("aggregated", "l4-g6-spot"), pool, SIZING)
    pod = deployment["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert len(terms) == 1
    required = {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}
    assert required == {k: [v] for k, v in pool.spec.node_selector.items()}
    assert {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]} == {
        ("nvidia.com/gpu", "present", "NoSchedule"),
        ("chipfit.io/spot", "true", "NoSchedule"),
    }
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    c = container(deployment)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == render.STARTUP_BUDGET_S
    template = deployment["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert template["annotations"]["prometheus.io/port"] == str(engines.VLLM_PORT)
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    labels = template["labels"]
    assert labels["chipfit.io/service"] == "chat-8b"
    assert labels["chipfit.io/role"] == "aggregated"
    assert labels["chipfit.io/pool"] == "l4-g6-spot"
    assert labels["app.kubernetes.io/managed-by"] == "chipfit"
    assert labels["app.kubernetes.io/instance"] == "chat-8b"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "InferenceService",
        "name": "chat-8b",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_engine_args_come_from_spec_and_sizing() -> None:
    service = SERVICES["chat-8b"]
    deployment = render.render_deployment(
        service, placement("aggregated", "h100-p5", precision="fp8"), POOLS["h100-p5"], SIZING
    )
    args = container(deployment)["args"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--quantization=fp8" in args
    assert "--max-model-len=8192" in args and "--max-num-seqs=64" in args
    assert "--served-model-name=llama-3.1-8b" in args


def test_catalog_source_when_spec_has_none() -> None:
    service = SERVICES["chat-8b"].model_copy(deep=True)
    service.spec.model = v1alpha1.ModelRef(id="mistral-7b")
    assert rules.model_source(service.spec.model) == "mistralai/Mistral-7B-v0.3"


def test_overrides_replace_image_append_args_and_env() -> None:
    service = SERVICES["chat-8b"].model_copy(deep=True)
    service.spec.overrides = v1alpha1.EngineOverrides(
        image="registry.example/vllm:patched",
        extra_args=["--enable-prefix-caching"],
        env=[
            v1alpha1.EnvVar(name="VLLM_LOGGING_LEVEL", value="DEBUG"),
            v1alpha1.EnvVar(name="HF_TOKEN", value="x"),
        ],
    )
    deployment = render.render_deployment(service, placement("aggregated", "l4-g6"), POOLS["l4-g6"], SIZING)
    validate_strict(deployment)
    c = container(deployment)
    assert c["image"] == "registry.example/vllm:patched"
    assert c["args"][-1] == "--enable-prefix-caching"
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "value": "x"}


def test_shell_wrapped_launch_takes_extra_args_inside_the_script() -> None:
    service = with_engine("assistant-70b", "trtllm")
    service.spec.overrides = v1alpha1.EngineOverrides(extra_args=["--kv_cache_free_gpu_memory_fraction=0.85"])
    deployment = render.render_deployment(
        service, placement("prefill", "h100-p5", tp=2, precision="fp8"), POOLS["h100-p5"], SIZING
    )
    (script,) = container(deployment)["args"]
    assert script.endswith("--kv_cache_free_gpu_memory_fraction=0.85")


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_disaggregated_service_renders_roles_services_and_router(engine: str) -> None:
    service = with_engine("assistant-70b", engine)
    placements = [
        placement("prefill", "h100-p5", tp=2, precision="fp8"),
        placement("decode", "h200-p5e", tp=2, precision="fp8"),
    ]
    sizings = {render.placement_key(p): SIZING for p in placements}
    objects = render.render_all(service, placements, POOLS, sizings)
    for obj in objects:
        validate_strict(obj)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    # SGLang's router discovers the pods itself: it runs as a ServiceAccount allowed to watch pods.
    discovery = (
        {
            ("ServiceAccount", "assistant-70b-router"),
            ("Role", "assistant-70b-router"),
            ("RoleBinding", "assistant-70b-router"),
        }
        if engine == "sglang"
        else set()
    )
    assert names == {
        ("Deployment", "assistant-70b-prefill-h100-p5-fp8-tp2"),
        ("Deployment", "assistant-70b-decode-h200-p5e-fp8-tp2"),
        ("Deployment", "assistant-70b-router"),
        ("Service", "assistant-70b-prefill"),
        ("Service", "assistant-70b-decode"),
        ("Service", "assistant-70b"),
        *discovery,
    }
    user_service = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "assistant-70b"
    )
    assert user_service["spec"]["selector"] == {
        "chipfit.io/service": "assistant-70b",
        "chipfit.io/role": "router",
    }
    router = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "assistant-70b-router"
    )
    assert "resources" not in container(router)
    assert "affinity" not in router["spec"]["template"]["spec"]


def _selector_after(args: list[str], flag: str) -> dict[str, str]:
    """`--flag k=v k=v ...` up to the next flag, as a dict."""
    start = args.index(flag) + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return dict(a.split("=", 1) for a in args[start:end])


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_sglang_router_discovers_every_prefill_and_decode_pod() -> None:
    # Two prefill replicas on two pools: the router must reach each prefill pod (its bootstrap server is
    # per pod), so it discovers pods by label instead of calling the role's Service.
    service = with_engine("assistant-70b", "sglang")
    placements = [
        placement("prefill", "h100-p5", tp=2, precision="fp8", replicas=2),
        placement("prefill", "h200-p5e", tp=2, precision="fp8", replicas=1),
        placement("decode", "h200-p5e", tp=2, precision="fp8", replicas=2),
    ]
    sizings = {render.placement_key(p): SIZING for p in placements}
    objects = render.render_all(service, placements, POOLS, sizings)
    router = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "assistant-70b-router"
    )
    args = container(router)["args"]
    assert (
        "--service-discovery" in args
        and f"--service-discovery-namespace={service.metadata.namespace}" in args
    )
    assert not any(a.startswith("http://") for a in args), "no Service URL: it would mix prefill pods"
    prefill_selector = _selector_after(args, "--prefill-selector")
    decode_selector = _selector_after(args, "--decode-selector")
    engine_pods = [o for o in objects if o["kind"] == "Deployment" and o is not router]
    for deployment in engine_pods:
        template = deployment["spec"]["template"]["metadata"]
        role = template["labels"]["chipfit.io/role"]
        assert _matches(prefill_selector, template["labels"]) == (role == "prefill")
        assert _matches(decode_selector, template["labels"]) == (role == "decode")
        bootstrap = template["annotations"].get("sglang.ai/bootstrap-port")
        assert bootstrap == (str(engines.SGLANG_BOOTSTRAP_PORT) if role == "prefill" else None)
    account = router["spec"]["template"]["spec"]["serviceAccountName"]
    role = next(o for o in objects if o["kind"] == "Role")
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": service.metadata.namespace}
    ]


def test_aggregated_service_selects_all_pools_of_the_role() -> None:
    service = SERVICES["chat-8b"]
    placements = [placement("aggregated", "l4-g6"), placement("aggregated", "l40s-g6e")]
    sizings = {render.placement_key(p): SIZING for p in placements}
    objects = render.render_all(service, placements, POOLS, sizings)
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(services) == 1
    (svc,) = services
    validate_strict(svc)
    assert svc["metadata"]["name"] == "chat-8b"
    assert svc["spec"]["selector"] == {"chipfit.io/service": "chat-8b", "chipfit.io/role": "aggregated"}
    assert svc["spec"]["ports"][0]["port"] == render.SERVICE_HTTP_PORT


def test_render_errors_name_the_field() -> None:
    service = SERVICES["chat-8b"]
    with pytest.raises(render.RenderError, match=r"status.placement\[0\].pool: no AcceleratorPool 'gone'"):
        render.render_all(
            service, [placement("aggregated", "l4-g6").model_copy(update={"pool": "gone"})], POOLS, {}
        )
    with pytest.raises(render.RenderError, match=r"spec\.engine"):
        render.render_deployment(
            with_engine("chat-8b", "trtllm"), placement("aggregated", "mi300x-nd"), POOLS["mi300x-nd"], SIZING
        )
    no_uid = service.model_copy(deep=True)
    no_uid.metadata.uid = None
    with pytest.raises(render.RenderError, match=r"metadata\.uid"):
        render.render_deployment(no_uid, placement("aggregated", "l4-g6"), POOLS["l4-g6"], SIZING)


def test_long_and_odd_names_become_valid_dns_labels() -> None:
    long = render.object_name("a" * 60, "aggregated", "h100-mig-1g10gb")
    assert len(long) <= 63 and long[0].isalpha()
    assert long != render.object_name("a" * 60, "aggregated", "h100-mig-3g40gb")
    assert render.object_name("1st.model", "decode").startswith("x-1st-model-decode")
    assert render.label_value("h100/1g.10gb") == "h100_1g.10gb"


_ENGINE_CHIPS = [
    (engine, pool)
    for engine in ("vllm", "sglang", "trtllm", "tgi", "neuron")
    for pool in sorted(POOLS)
    if catalog.engine_supports(engine, catalog.get_accelerator(POOLS[pool].spec.accelerator))
]


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.example(
    case=("tgi", "inf2-48xl"), tp_exponent=0, replicas=1, precision="int8", max_len=4096, max_seqs=8
)
@hypothesis.example(
    case=("neuron", "inf2-48xl"), tp_exponent=3, replicas=2, precision="bf16", max_len=4096, max_seqs=8
)
@hypothesis.given(
    case=st.sampled_from(_ENGINE_CHIPS),
    tp_exponent=st.integers(min_value=0, max_value=3),
    replicas=st.integers(min_value=0, max_value=16),
    precision=st.sampled_from(["bf16", "fp16", "int8"]),
    max_len=st.integers(min_value=2, max_value=131072),
    max_seqs=st.integers(min_value=1, max_value=1024),
)
def test_any_supported_placement_renders_a_valid_deployment(
    case: tuple[str, str], tp_exponent: int, replicas: int, precision: str, max_len: int, max_seqs: int
) -> None:
    engine, pool_name = case
    pool = POOLS[pool_name]
    chip = catalog.get_accelerator(pool.spec.accelerator)
    tp = min(2**tp_exponent, chip.max_tp)
    service = with_engine("chat-8b", engine)
    p = placement("aggregated", pool_name, tp=tp, replicas=replicas, precision=precision)
    sizing = engines.Sizing(max_len, max_seqs)
    if engine == "tgi" and chip.vendor == "aws" and precision == "int8":
        # optimum-neuron's TGI serves 16-bit weights only: a clear error naming the precision.
        with pytest.raises(render.RenderError, match=r"spec\.engine: engine tgi: precision int8"):
            render.render_deployment(service, p, pool, sizing)
        return
    deployment = render.render_deployment(service, p, pool, sizing)
    validate_strict(deployment)
    resource = render.resource_name(pool, chip)
    assert container(deployment)["resources"]["limits"] == {
        resource: str(tp * chip.resource_units_per_device)
    }
    assert deployment["spec"]["replicas"] == replicas
    assert len(deployment["metadata"]["name"]) <= render.DNS_LABEL_MAX


# (engine, pool, flag the engine reads its chunked-prefill token budget from)
CHUNK_FLAGS = [
    ("vllm", "h100-p5", "--max-num-batched-tokens"),
    ("sglang", "h100-p5", "--chunked-prefill-size"),
    ("trtllm", "h100-p5", "--max_num_tokens"),
    ("tgi", "h100-p5", "--max-batch-prefill-tokens"),
]


@pytest.mark.parametrize(("engine", "pool", "flag"), CHUNK_FLAGS)
def test_prefill_chunk_budget_reaches_the_engine(engine: str, pool: str, flag: str) -> None:
    sized = engines.Sizing(max_model_len_tokens=8192, max_concurrent_sequences=64, prefill_chunk_tokens=768)
    deployment = render.render_deployment(
        with_engine("chat-8b", engine), placement("aggregated", pool), POOLS[pool], sized
    )
    assert f"{flag}=768" in container(deployment)["args"]
    default = render.render_deployment(
        with_engine("chat-8b", engine), placement("aggregated", pool), POOLS[pool], SIZING
    )
    assert not any(arg.startswith(flag) for arg in container(default)["args"])
