"""Bad input is bounded before it is parsed and never slips through: crafted cases and a fuzz test.

Crafted: alias bombs ("billion laughs"), deep nesting, object and file-size bounds, values JSON cannot
carry. Fuzz: hypothesis mutates the example manifests (drops, replaces and duplicates fields, with odd
values) and each mutant is either rejected with a field named or accepted and planned, under a memory
bound (tracemalloc) and hypothesis' per-example deadline.
"""

from __future__ import annotations

import copy
import math
import tracemalloc
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import pytest
import yaml

from chipfit import cli, manifests, planning, validation
from placement.solver import inputs

ROOT = Path(__file__).resolve().parents[2]
# Validation of one mutated manifest allocates well under this (peak measured ~2 MB).
VALIDATE_PEAK_BYTES = 64 * 1024 * 1024
# Bounded so CI stays fast; each example validates (ms) and sometimes plans (~0.1-1 s).
FUZZ_EXAMPLES = 60
FUZZ_DEADLINE_MS = 20_000
SOLVE_TIME_LIMIT_S = 5.0


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _laughs(levels: int) -> str:
    """Each level names the previous one nine times: 9**levels scalars once expanded, ~100 bytes a level."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for level in range(levels):
        name = f"l{level}"
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


def _pool(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "chipfit.io/v1alpha1",
        "kind": "AcceleratorPool",
        "metadata": {"name": f"pool-{index}"},
        "spec": {"accelerator": "l4", "devicesPerNode": 8, "nodes": 1, "pricePerDeviceHour": 0.8},
    }


def test_alias_bomb_is_refused_before_expansion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "laughs.yaml", _laughs(9))
    tracemalloc.start()
    try:
        code = cli.main(["validate", "-f", str(path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 1
    assert "YAML nodes (aliases counted at the size of what they name)" in capsys.readouterr().out
    assert peak < VALIDATE_PEAK_BYTES


def test_small_aliases_are_fine(tmp_path: Path) -> None:
    documents, problems = manifests.load_documents([_write(tmp_path, "few.yaml", _laughs(2))])
    assert problems == [] and len(documents) == 1


def test_deep_nesting_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "deep.yaml", "a: " + "[" * 500 + "]" * 500 + "\n")
    _, problems = manifests.load_documents([path])
    assert [p.reason for p in problems] == [f"nested deeper than {manifests.MAX_YAML_DEPTH} levels"]


def test_ten_thousand_pools_are_refused_with_the_bound(tmp_path: Path) -> None:
    items = [_pool(i) for i in range(10_000)]
    path = _write(
        tmp_path,
        "pools.yaml",
        yaml.dump({"apiVersion": "v1", "kind": "List", "items": items}, Dumper=yaml.CSafeDumper),
    )
    result = validation.load_and_validate([path])
    assert [p.reason for p in result.problems] == [
        f"more than {manifests.MAX_OBJECTS} objects (documents and List items) in one run: split the input"
    ]
    assert result.documents_checked == 0


def test_the_object_bound_counts_list_items_not_the_list(tmp_path: Path) -> None:
    items = [_pool(i) for i in range(manifests.MAX_OBJECTS)]
    path = _write(
        tmp_path,
        "pools.yaml",
        yaml.dump({"apiVersion": "v1", "kind": "List", "items": items}, Dumper=yaml.CSafeDumper),
    )
    result = validation.load_and_validate([path])
    assert result.problems == [] and len(result.pools) == manifests.MAX_OBJECTS


def test_the_object_bound_holds_across_files(tmp_path: Path) -> None:
    half = manifests.MAX_OBJECTS // 2 + 1
    for name in ("a.yaml", "b.yaml"):
        body = "".join("---\n" + yaml.safe_dump(_pool(i)) for i in range(half))
        _write(tmp_path, name, body.replace("pool-", f"{name[0]}-"))
    _, problems = manifests.load_documents([tmp_path])
    assert [Path(p.file).name for p in problems] == ["b.yaml"]


def test_file_size_is_bounded_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 1000)
    path = _write(tmp_path, "big.yaml", "# padding\n" * 200)
    _, problems = manifests.load_documents([path])
    assert problems[0].reason == "2000 bytes: larger than the 1000-byte limit"


@pytest.mark.parametrize(
    ("value", "field", "reason"),
    [
        (".nan", "spec.pricePerDeviceHour", "nan is not a number JSON can carry"),
        (".inf", "spec.pricePerDeviceHour", "inf is not a number JSON can carry"),
        ("9" * 5000, "", "Exceeds the limit"),
    ],
)
def test_values_json_cannot_carry_are_problems(tmp_path: Path, value: str, field: str, reason: str) -> None:
    text = (
        "apiVersion: chipfit.io/v1alpha1\nkind: AcceleratorPool\nmetadata: {name: p}\n"
        f"spec: {{accelerator: h100, devicesPerNode: 8, nodes: 1, pricePerDeviceHour: {value}}}\n"
    )
    _, problems = manifests.load_documents([_write(tmp_path, "x.yaml", text)])
    assert len(problems) == 1
    assert problems[0].field == field and reason in problems[0].reason


def test_non_string_keys_are_named(tmp_path: Path) -> None:
    text = "apiVersion: chipfit.io/v1alpha1\nkind: AcceleratorPool\nmetadata: {name: p}\nspec: {3: 4}\n"
    _, problems = manifests.load_documents([_write(tmp_path, "x.yaml", text)])
    assert [(p.field, p.reason) for p in problems] == [("spec.3", "keys must be strings")]


def test_timestamps_become_strings_as_kubectl_sends_them(tmp_path: Path) -> None:
    text = "a: 2025-01-02T03:04:05Z\nb: 2025-01-02\n"
    documents, _ = manifests.load_documents([_write(tmp_path, "x.yaml", text)])
    assert documents[0].body == {"a": "2025-01-02T03:04:05Z", "b": "2025-01-02"}


# --- fuzz ---------------------------------------------------------------------------------------------


def _example_bodies() -> list[dict[str, Any]]:
    documents, problems = manifests.load_documents([ROOT / "examples"])
    assert not problems
    return [d.body for d in documents if d.body.get("apiVersion", "").startswith("chipfit.io/")]


EXAMPLES = _example_bodies()
EXAMPLE_POOLS = [b for b in EXAMPLES if b["kind"] == "AcceleratorPool"]
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 1e300, 1e-300, "", "h100", "bf16", "x" * 5000, [], {}, ["bf16", "bf16"]]),
    st.text(max_size=20),
    st.lists(st.integers(-5, 5), max_size=4),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


def _parent(body: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        body = body[part]
    return body


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    body = copy.deepcopy(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(body) if p and p[0] in ("spec", "metadata")]
        path = draw(st.sampled_from(paths))
        parent, key = _parent(body, path), path[-1]
        action = draw(st.sampled_from(["replace", "drop", "duplicate", "rename"]))
        if action == "replace":
            parent[key] = draw(ODD_VALUES)
        elif action == "drop":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["speck", "Nodes", "ttftP99", key + "s"]))] = parent.pop(key)
    return body


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=FUZZ_DEADLINE_MS,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
@hypothesis.given(body=mutants())
def test_mutated_manifests_are_rejected_with_a_field_or_planned(body: dict[str, Any]) -> None:
    hypothesis.assume(_finite(body))
    pools = [] if body["kind"] == "AcceleratorPool" else EXAMPLE_POOLS
    documents = [manifests.Document("mutant.yaml", 0, body)]
    documents += [manifests.Document("pools.yaml", i, p) for i, p in enumerate(pools)]
    tracemalloc.start()
    try:
        result = validation.validate_documents(documents)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < VALIDATE_PEAK_BYTES
    if result.problems:
        hypothesis.event("rejected")
        assert all(p.field for p in result.problems), result.problems
        return
    hypothesis.event("accepted")
    if not result.services:
        return
    options = inputs.SolveOptions(time_limit_s=SOLVE_TIME_LIMIT_S)
    try:
        planning.plan_fleet(
            result.services, result.pools, result.profiles, options=options, with_baseline=False
        )
    except inputs.InfeasibleError:
        replicas = result.services[0].spec.replicas
        assert replicas is not None and replicas.min > 0
