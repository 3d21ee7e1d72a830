"""What a spec field means, written once for `chipfit validate`, `chipfit plan` and the operator.

Which model a service runs and where its weights come from, which price a pool costs, which p99 a token
distribution has and how long a sequence the engine must hold: validation reports a `RuleError` as a
field problem, planning prices with the same answer and the renderer deploys it. A rule written twice
drifts (an inline model once validated and planned, then failed to render for want of a source).
"""

from __future__ import annotations

import math

from chipfit.api import v1alpha1
from placement import catalog

_HF_PREFIX = "https://huggingface.co/"


class RuleError(ValueError):
    """A spec the rules cannot resolve; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def model_name(model: v1alpha1.ModelRef) -> str:
    """The model's name: the catalog id, or the inline model's name (what clients send and profiles key)."""
    name = model.id or model.name
    if name is None:
        raise RuleError("spec.model.name", "an inline architecture needs a name")
    return name


def model_arch(model: v1alpha1.ModelRef) -> catalog.ModelArch:
    """The model's architecture: the catalog entry, or the inline definition under the model's name."""
    if model.id is not None:
        try:
            return catalog.get_model(model.id)
        except catalog.UnknownIdError as exc:
            raise RuleError("spec.model.id", str(exc)) from None
    if model.architecture is None:
        raise RuleError("spec.model", "set exactly one of id and architecture")
    return model.architecture.to_catalog(model_name(model))


def model_source(model: v1alpha1.ModelRef) -> str:
    """Where the engine loads weights from: spec.model.source, else the catalog model's Hugging Face repo."""
    if model.source:
        return model.source
    if model.id is None:
        raise RuleError("spec.model.source", "is required for an inline architecture")
    source = model_arch(model).source
    if not source.startswith(_HF_PREFIX):
        raise RuleError("spec.model.source", f"catalog model {model.id} names no Hugging Face repo")
    # https://huggingface.co/<org>/<repo>/blob/main/config.json -> <org>/<repo>
    return "/".join(source[len(_HF_PREFIX) :].split("/")[:2])


def tokens_p99(tokens: v1alpha1.TokenDistribution) -> float:
    """The distribution's p99; without one every request is the mean."""
    return tokens.p99 if tokens.p99 is not None else tokens.mean


def max_model_len_tokens(spec: v1alpha1.InferenceServiceSpec) -> int:
    """Longest sequence the engine holds: maxContextTokens, else p99 prompt + p99 output (model-capped)."""
    workload = spec.workload
    if workload.max_context_tokens is not None:
        return workload.max_context_tokens
    longest = math.ceil(tokens_p99(workload.prompt_tokens) + tokens_p99(workload.output_tokens))
    return min(model_arch(spec.model).max_context_tokens, longest)


def price_per_device_hour(pool: v1alpha1.AcceleratorPoolSpec) -> float:
    """The pool's $/device-hour: its own price, else the catalog's default for its accelerator."""
    if pool.price_per_device_hour is not None:
        return float(pool.price_per_device_hour)
    chip = catalog.ACCELERATORS.get(pool.accelerator)
    if chip is None or chip.default_price_per_hour is None:
        raise RuleError(
            "spec.pricePerDeviceHour", f"required for {pool.accelerator}, which has no catalog price"
        )
    return chip.default_price_per_hour
