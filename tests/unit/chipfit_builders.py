"""Test builders for the operator's pure layers: the example fleet and services as typed objects."""

from __future__ import annotations

from pathlib import Path

import yaml

from chipfit.api import v1alpha1

REPO = Path(__file__).resolve().parents[2]
UID = "0f7c7a4e-1f0e-4d55-9a49-2c1f5f0d8b11"


def _examples() -> tuple[dict[str, v1alpha1.InferenceService], dict[str, v1alpha1.AcceleratorPool]]:
    services: dict[str, v1alpha1.InferenceService] = {}
    pools: dict[str, v1alpha1.AcceleratorPool] = {}
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] == "InferenceService":
                doc["metadata"]["uid"] = UID
                services[doc["metadata"]["name"]] = v1alpha1.InferenceService.model_validate(doc)
            elif doc["kind"] == "AcceleratorPool":
                pools[doc["metadata"]["name"]] = v1alpha1.AcceleratorPool.model_validate(doc)
    return services, pools


SERVICES, POOLS = _examples()


def placement(
    role: str, pool: str, tp: int = 1, replicas: int = 2, precision: str = "bf16"
) -> v1alpha1.RolePlacement:
    return v1alpha1.RolePlacement(
        role=role,  # type: ignore[arg-type]
        pool=pool,
        accelerator=POOLS[pool].spec.accelerator,
        precision=precision,  # type: ignore[arg-type]
        tensor_parallel=tp,
        replicas=replicas,
    )
