"""Validate manifests the way the API server will, then with the checks only chipfit can make.

Three layers, in the order the API server applies the first two:
1. the generated CRD schema (types, enums, bounds, required fields, unknown fields as with kubectl's
   default strict field validation), via jsonschema;
2. the CRD's CEL rules (`x-kubernetes-validations`), evaluated with the same expressions by cel-python,
   after the schema's defaults are applied, as the API server does;
3. semantic checks against the catalog and across objects (context longer than the model supports,
   a precision no allowed chip runs, an engine that cannot drive any allowed chip, unknown pools).
The operator reuses layer 3 (`service_problems`) for objects it reads from the cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import celpy
import celpy.adapter
import celpy.evaluation
import jsonschema
import pydantic

from chipfit import manifests, planning, rules
from chipfit.api import crd, v1alpha1
from chipfit.manifests import Document, Problem
from placement import catalog, engine_version

_KIND_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "InferenceService": v1alpha1.InferenceService,
    "AcceleratorPool": v1alpha1.AcceleratorPool,
    "PerformanceProfile": v1alpha1.PerformanceProfile,
}
# HGX and OAM baseboards carry 8 GPUs: the most MIG-capable GPUs one node has.
GPUS_PER_NODE_MAX = 8
# Beyond this many allowed values an enum error names the first few only, to stay one readable line.
_ENUM_VALUES_SHOWN = 30


@dataclasses.dataclass(frozen=True)
class FieldError:
    """A problem with one field of one object: dotted path (`spec.slo.ttftP99Ms`) and reason."""

    field: str
    reason: str


@dataclasses.dataclass
class Validated:
    """Typed objects that passed every check, and the problems of those that did not."""

    services: list[v1alpha1.InferenceService] = dataclasses.field(default_factory=list)
    pools: list[v1alpha1.AcceleratorPool] = dataclasses.field(default_factory=list)
    profiles: list[v1alpha1.PerformanceProfile] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    documents_checked: int = 0
    # The document each typed object came from (by object identity), so a problem names its own file.
    origins: dict[int, Document] = dataclasses.field(default_factory=dict, repr=False)


# ---------------------------------------------------------------------------------------------------------
# Layer 1 and 2: the CRD itself
# ---------------------------------------------------------------------------------------------------------


@functools.cache
def _crd_schema(kind: str) -> dict[str, Any]:
    rendered = crd.render_crd(crd.KINDS_BY_NAME[kind])
    schema: dict[str, Any] = rendered["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of a structural schema that rejects unknown fields, as strict field validation does."""
    out = {k: v for k, v in schema.items() if k != "x-kubernetes-validations"}
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    return out


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_error(error: jsonschema.ValidationError) -> FieldError:
    field = _dotted(error.absolute_path)
    value = cast(Any, error.instance)
    schema = cast(dict[str, Any], error.schema)
    expected = cast(Any, error.validator_value)
    if error.validator == "required":
        missing = str(error.message).split("'")[1]
        return FieldError(f"{field}.{missing}" if field else missing, "required field is missing")
    if error.validator == "additionalProperties":
        extra = sorted(set(value) - set(schema.get("properties", {})))
        name = extra[0] if extra else "?"
        return FieldError(f"{field}.{name}" if field else name, "unknown field")
    if error.validator == "type":
        return FieldError(field, f"expected {expected}, got {_json_type(value)} {value!r}")
    if error.validator == "enum":
        allowed = [str(v) for v in expected]
        shown = ", ".join(allowed[:_ENUM_VALUES_SHOWN]) + (
            ", ..." if len(allowed) > _ENUM_VALUES_SHOWN else ""
        )
        return FieldError(field, f"unsupported value {value!r}; valid values: {shown}")
    if error.validator in ("minimum", "maximum"):
        exclusive = schema.get(f"exclusive{error.validator.capitalize()}", False)
        relation = {("minimum", False): ">=", ("minimum", True): ">", ("maximum", False): "<="}
        op = relation.get((str(error.validator), bool(exclusive)), "<")
        return FieldError(field, f"must be {op} {expected}, got {value!r}")
    if error.validator == "pattern":
        return FieldError(field, f"{value!r} does not match {expected}")
    if error.validator in (
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
    ):
        return FieldError(field, f"{error.validator} is {expected}")
    return FieldError(field, str(error.message))


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _with_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """The value with the schema's defaults filled in and numbers as floats, as the API server sees it."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = _with_defaults(out[name], sub)
        return out
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: _with_defaults(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(v, schema["items"]) for v in value]
    return value


@functools.cache
def _cel_program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel_errors(value: Any, schema: dict[str, Any], path: str) -> Iterator[FieldError]:
    for rule in schema.get("x-kubernetes-validations", ()):
        try:
            ok = bool(_cel_program(rule["rule"]).evaluate({"self": celpy.adapter.json_to_cel(value)}))
        except (
            celpy.evaluation.CELEvalError
        ) as exc:  # the API server reports an evaluation error the same way
            ok = False
            rule = {**rule, "message": f"{rule['message']} (rule failed to evaluate: {exc.args[0]})"}
        if not ok:
            sub = rule.get("fieldPath", "")
            yield FieldError(f"{path}{sub}" if path else sub.lstrip("."), rule["message"])
    if isinstance(value, dict):
        for name, sub_schema in schema.get("properties", {}).items():
            if name in value:
                yield from _cel_errors(value[name], sub_schema, f"{path}.{name}" if path else name)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _cel_errors(item, schema["items"], f"{path}[{index}]")


def _list_type_errors(value: Any, schema: dict[str, Any], path: str) -> Iterator[FieldError]:
    """Duplicates in `x-kubernetes-list-type: set` and `map` lists, as the API server reports them."""
    if isinstance(value, dict):
        for name, sub_schema in schema.get("properties", {}).items():
            if name in value:
                yield from _list_type_errors(value[name], sub_schema, f"{path}.{name}" if path else name)
        return
    if not isinstance(value, list) or not isinstance(schema.get("items"), dict):
        return
    list_type = schema.get("x-kubernetes-list-type")
    keys = schema.get("x-kubernetes-list-map-keys", ())
    seen: set[str] = set()
    for index, item in enumerate(value):
        if list_type == "set":
            identity: Any = item
        elif list_type == "map" and isinstance(item, dict):
            identity = {k: item.get(k) for k in keys}
        else:
            identity = None
        if identity is not None:
            token = repr(identity)
            if token in seen:
                yield FieldError(f"{path}[{index}]", f"Duplicate value: {identity!r}")
            seen.add(token)
        yield from _list_type_errors(item, schema["items"], f"{path}[{index}]")


def schema_errors(schema: dict[str, Any], body: dict[str, Any]) -> list[FieldError]:
    """What the API server rejects in `body` under an openAPIV3Schema: schema errors, else CEL rules."""
    # OpenAPI v3.0 numeric bounds use draft-4's boolean exclusiveMinimum.
    errors = [_schema_error(e) for e in jsonschema.Draft4Validator(_strict(schema)).iter_errors(body)]
    if errors:
        return sorted(errors, key=lambda e: e.field)
    defaulted = _with_defaults(body, schema)
    # List sets and maps are checked on the defaulted object (a map key may be defaulted, as a taint's
    # effect is), before CEL, as the API server's structural validation does.
    duplicates = list(_list_type_errors(defaulted, schema, ""))
    if duplicates:
        return duplicates
    return list(_cel_errors(defaulted, schema, ""))


def crd_errors(kind: str, body: dict[str, Any]) -> list[FieldError]:
    """`schema_errors` under the CRD generated for `kind`."""
    return schema_errors(_crd_schema(kind), body)


def _metadata_errors(kind: str, body: dict[str, Any]) -> list[FieldError]:
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return [FieldError("metadata", "required field is missing")]
    errors = [
        FieldError(f"metadata.{e.field}", e.reason)
        for e in (_schema_error(err) for err in _METADATA_VALIDATOR.iter_errors(metadata))
    ]
    scope = crd.KINDS_BY_NAME[kind].scope
    if scope == "Cluster" and "namespace" in metadata:
        errors.append(FieldError("metadata.namespace", f"{kind} is cluster-scoped and takes no namespace"))
    return errors


_METADATA_VALIDATOR = jsonschema.Draft4Validator(
    {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": v1alpha1.DNS_SUBDOMAIN_RE,
                "maxLength": v1alpha1.DNS_SUBDOMAIN_MAX_LENGTH,
            },
            "namespace": {"type": "string", "pattern": v1alpha1.DNS_SUBDOMAIN_RE},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
)


# ---------------------------------------------------------------------------------------------------------
# Layer 3: semantics
# ---------------------------------------------------------------------------------------------------------


def known_accelerators(
    chips: Mapping[str, catalog.Accelerator] | None = None,
) -> dict[str, catalog.Accelerator]:
    """The catalog's chips, overlaid by the chips the fleet's pools declare by their specs."""
    return {**catalog.ACCELERATORS, **(chips or {})}


def allowed_accelerators(
    spec: v1alpha1.InferenceServiceSpec, chips: Mapping[str, catalog.Accelerator] | None = None
) -> list[catalog.Accelerator]:
    """Known accelerators (catalog and pool-declared) the service's placement constraints admit."""
    known = known_accelerators(chips)
    constraints = spec.placement or v1alpha1.PlacementConstraints()
    allowed = set(constraints.allowed_accelerators or known) & set(known)
    excluded = set(constraints.excluded_accelerators or ())
    return [known[a] for a in sorted(allowed - excluded)]


def _unknown_accelerator_errors(
    spec: v1alpha1.InferenceServiceSpec, chips: Mapping[str, catalog.Accelerator] | None
) -> list[FieldError]:
    """allowed/excludedAccelerators entries that name no catalog chip and no chip a pool declares."""
    known = known_accelerators(chips)
    constraints = spec.placement or v1alpha1.PlacementConstraints()
    errors = []
    for field, ids in (
        ("allowedAccelerators", constraints.allowed_accelerators),
        ("excludedAccelerators", constraints.excluded_accelerators),
    ):
        for index, acc_id in enumerate(ids or ()):
            if acc_id not in known:
                errors.append(
                    FieldError(
                        f"spec.placement.{field}[{index}]",
                        f"unknown accelerator {acc_id!r}: not in the catalog and no AcceleratorPool "
                        "declares it with acceleratorSpec",
                    )
                )
    return errors


def model_max_context(model: v1alpha1.ModelRef) -> int:
    """Longest context the model supports (catalog or inline)."""
    return rules.model_arch(model).max_context_tokens


def service_problems(
    service: v1alpha1.InferenceService,
    pool_names: Sequence[str] | None = None,
    chips: Mapping[str, catalog.Accelerator] | None = None,
) -> list[FieldError]:
    """Checks the schema cannot express; `pool_names`, when known, are the pools that exist, `chips` the
    chips they declare by their specs (None: the pools are not known here, so accelerator ids outside the
    catalog are not checked)."""
    spec = service.spec
    errors: list[FieldError] = [] if chips is None else _unknown_accelerator_errors(spec, chips)
    if errors:
        return errors
    try:
        # What the engine loads and runs: the same rules the planner prices and the renderer deploys.
        rules.model_source(spec.model)
        max_context = model_max_context(spec.model)
    except rules.RuleError as exc:
        return [FieldError(exc.field, exc.reason)]
    workload = spec.workload
    if workload.max_context_tokens is not None and workload.max_context_tokens > max_context:
        errors.append(
            FieldError(
                "spec.workload.maxContextTokens",
                f"{workload.max_context_tokens} exceeds the model's maximum context of {max_context} tokens",
            )
        )
    longest = rules.tokens_p99(workload.prompt_tokens) + workload.output_tokens.mean
    if workload.max_context_tokens is None and longest > max_context:
        errors.append(
            FieldError(
                "spec.workload.promptTokens",
                f"p99 prompt plus mean output ({longest:.0f} tokens) exceeds the model's maximum context "
                f"of {max_context} tokens",
            )
        )
    allowed = allowed_accelerators(spec, chips)
    if not allowed:
        errors.append(FieldError("spec.placement.excludedAccelerators", "excludes every allowed accelerator"))
        return errors
    usable = [c for c in allowed if catalog.engine_supports(spec.engine, c)]
    if not usable:
        errors.append(
            FieldError(
                "spec.engine",
                f"engine {spec.engine} runs on none of the allowed accelerators "
                f"({', '.join(c.id for c in allowed[:8])}{', ...' if len(allowed) > 8 else ''})",
            )
        )
        return errors
    own_image = spec.overrides is not None and bool(spec.overrides.image)
    refused = [
        why
        for c in usable
        if (why := engine_version.undeployable_release(spec.engine, c.vendor, spec.engine_version, own_image))
    ]
    if len(refused) == len(usable):
        # The planner rules out the same chips (placement.candidates.pool_allowed): nothing could be placed.
        errors.append(FieldError("spec.engineVersion", refused[0]))
        return errors
    if spec.serving == "disaggregated" and not any(
        catalog.engine_supports(spec.engine, c, "prefill") for c in usable
    ):
        errors.append(
            FieldError(
                "spec.serving",
                f"engine {spec.engine} splits prefill and decode on none of the allowed accelerators "
                f"({', '.join(c.id for c in usable[:8])}{', ...' if len(usable) > 8 else ''})",
            )
        )
    if not any(p in c.precisions for c in usable for p in spec.precisions):
        errors.append(
            FieldError(
                "spec.precisions",
                f"none of {', '.join(spec.precisions)} is supported by an allowed accelerator that "
                f"{spec.engine} drives",
            )
        )
    if pool_names is not None:
        known = set(pool_names)
        constraints = spec.placement or v1alpha1.PlacementConstraints()
        for index, name in enumerate(constraints.allowed_pools or ()):
            if name not in known:
                errors.append(
                    FieldError(f"spec.placement.allowedPools[{index}]", f"no AcceleratorPool {name!r}")
                )
    return errors


def pool_problems(pool: v1alpha1.AcceleratorPool) -> list[FieldError]:
    """Checks of a pool against the catalog or its own acceleratorSpec."""
    try:
        chip = planning.pool_accelerator(pool)
    except planning.PlanningError as error:
        return [_planning_field_error(error)]
    errors: list[FieldError] = []
    try:
        rules.price_per_device_hour(pool.spec)
    except rules.RuleError as exc:
        errors.append(FieldError(exc.field, exc.reason))
    if chip.parent is not None:
        most = GPUS_PER_NODE_MAX * chip.mig_max_instances
        if pool.spec.devices_per_node > most:
            errors.append(
                FieldError(
                    "spec.devicesPerNode",
                    f"{pool.spec.devices_per_node} {chip.mig_profile} slices exceed what a node of "
                    f"{GPUS_PER_NODE_MAX} {chip.parent} GPUs can be cut into ({most})",
                )
            )
    if pool.spec.resource_name is not None and chip.parent is not None:
        expected = chip.resource_name
        if pool.spec.resource_name != expected:
            errors.append(FieldError("spec.resourceName", f"a {chip.id} slice is advertised as {expected}"))
    return errors


def _planning_field_error(error: planning.PlanningError) -> FieldError:
    """`AcceleratorPool x: spec.field: reason` as a FieldError."""
    _, _, rest = str(error).partition(": ")
    field, _, reason = rest.partition(": ")
    return FieldError(field or "spec", reason or str(error))


def profile_problems(
    profile: v1alpha1.PerformanceProfile, chips: Mapping[str, catalog.Accelerator] | None = None
) -> list[FieldError]:
    """Checks of a measured profile against the catalog and the chips pools declare."""
    spec = profile.spec
    errors: list[FieldError] = []
    chip = known_accelerators(chips).get(spec.accelerator)
    if chip is None:
        # A chip neither in the catalog nor declared (yet) by a pool's acceleratorSpec: the profile applies
        # to the pools that declare it, so it is checked against the chip once one does.
        return errors
    if spec.precision not in chip.precisions:
        errors.append(FieldError("spec.precision", f"{chip.id} does not support {spec.precision}"))
    if spec.tensor_parallel > chip.max_tp:
        errors.append(
            FieldError("spec.tensorParallel", f"{chip.id} allows tensor parallel up to {chip.max_tp}")
        )
    if spec.bucket_table is not None:
        for axis in ("prompt_token_buckets", "output_token_buckets"):
            edges = getattr(spec.bucket_table, axis)
            if any(b <= a for a, b in itertools.pairwise(edges)):
                alias = v1alpha1.BucketTable.model_fields[axis].alias
                errors.append(FieldError(f"spec.bucketTable.{alias}", "bucket edges must increase"))
    return errors


# ---------------------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------------------


def document_errors(document: Document) -> list[FieldError]:
    """Layers 1 and 2 for one document; an empty list means the API server would accept it."""
    body = document.body
    kind = body.get("kind")
    if body.get("apiVersion") != v1alpha1.API_VERSION:
        return [FieldError("apiVersion", f"expected {v1alpha1.API_VERSION}, got {body.get('apiVersion')!r}")]
    if kind not in _KIND_MODELS:
        return [FieldError("kind", f"unknown kind {kind!r}; expected one of {', '.join(_KIND_MODELS)}")]
    return _metadata_errors(kind, body) + crd_errors(kind, body)


def _is_chipfit(document: Document) -> bool:
    api_version = document.body.get("apiVersion")
    return isinstance(api_version, str) and api_version.split("/")[0] == v1alpha1.GROUP


def validate_documents(documents: Sequence[Document]) -> Validated:
    """All three layers over a set of documents; documents of other API groups are left alone."""
    out = Validated()
    for document in documents:
        if not _is_chipfit(document):
            continue
        out.documents_checked += 1
        errors = document_errors(document)
        if errors:
            out.problems.extend(Problem(document.file, document.label, e.field, e.reason) for e in errors)
            continue
        model = _KIND_MODELS[document.body["kind"]]
        try:
            parsed = model.model_validate(document.body)
        except pydantic.ValidationError as exc:  # the schema and the models disagree: report, don't crash
            for err in exc.errors():
                out.problems.append(Problem(document.file, document.label, _dotted(err["loc"]), err["msg"]))
            continue
        out.origins[id(parsed)] = document
        if isinstance(parsed, v1alpha1.InferenceService):
            out.services.append(parsed)
        elif isinstance(parsed, v1alpha1.AcceleratorPool):
            out.pools.append(parsed)
        elif isinstance(parsed, v1alpha1.PerformanceProfile):
            out.profiles.append(parsed)
    _semantic(out, documents)
    return out


def _semantic(out: Validated, documents: Sequence[Document]) -> None:
    pool_names = [p.metadata.name for p in out.pools] or None

    def report(obj: pydantic.BaseModel, errors: Iterable[FieldError]) -> None:
        document = out.origins[id(obj)]
        out.problems.extend(Problem(document.file, document.label, e.field, e.reason) for e in errors)

    # Pools whose own chip does not resolve are reported by pool_problems; the rest must agree per id.
    resolvable = []
    for pool in out.pools:
        try:
            planning.pool_accelerator(pool)
        except planning.PlanningError:
            continue
        resolvable.append(pool)
    chips: dict[str, catalog.Accelerator]
    try:
        chips = planning.fleet_accelerators(resolvable)
    except planning.PlanningError as error:
        name = str(error).split(":", 1)[0].removeprefix("AcceleratorPool ")
        culprit = next(p for p in resolvable if p.metadata.name == name)
        report(culprit, [_planning_field_error(error)])
        chips = {}
        for pool in resolvable:
            if pool.spec.accelerator_spec is not None:
                chips.setdefault(pool.spec.accelerator, planning.pool_accelerator(pool))
    for service in out.services:
        report(service, service_problems(service, pool_names, chips))
    for pool in out.pools:
        report(pool, pool_problems(pool))
    for profile in out.profiles:
        report(profile, profile_problems(profile, chips))
    seen: dict[tuple[str, str | None, str], str] = {}
    for document in documents:
        body = document.body
        if not _is_chipfit(document) or not isinstance(body.get("metadata"), dict):
            continue
        key = (str(body.get("kind")), body["metadata"].get("namespace"), str(body["metadata"].get("name")))
        if key in seen:
            out.problems.append(
                Problem(
                    document.file, document.label, "metadata.name", f"duplicate of the one in {seen[key]}"
                )
            )
        seen.setdefault(key, document.file)


def load_and_validate(paths: Iterable[str | Path]) -> Validated:
    """Read manifests from files and directories and validate them; never raises on bad input."""
    documents, problems = manifests.load_documents(paths)
    out = validate_documents(documents)
    out.problems[:0] = problems
    return out
