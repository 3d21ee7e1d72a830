"""docs/operations.md lists exactly the metrics the operator exports, with their types and labels."""

from __future__ import annotations

import pathlib
import re
from typing import Final

from chipfit import metrics

DOC: Final = pathlib.Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# A row of the metrics table: | `name` | type | labels | meaning |
ROW_RE: Final = re.compile(r"^\|\s*`(chipfit_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")


def _documented() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name -> (type, labels) from the table in docs/operations.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW_RE.match(line)
        if match:
            labels = frozenset(label.strip() for label in match.group(3).split(",") if label.strip())
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def _exported() -> dict[str, tuple[str, frozenset[str]]]:
    """Exposed name (counters with _total) -> (type, labels), read from samples after one of each call."""
    m = metrics.OperatorMetrics()
    placement = metrics.PlannedRole("decode", "l4", "l4-pool", 1, 0.8, 100.0)
    m.record_plan(
        metrics.ServicePlan("ns", "svc", 1.0, 2.0, 300.0, 40.0, 500.0, 50.0, 1.0, 100.0, 2.0, (placement,))
    )
    m.record_pool(metrics.PoolUsage("l4-pool", "l4", 4, 1, 0.8))
    m.record_placement_change("ns", "svc", "decode")
    m.record_autoscale_decision("ns", "svc", "ScaledUp")
    m.record_autoscale_attainment("ns", "svc", 0.99)
    m.observe_solve(0.1, "optimal", gap_ratio=0.0, objective_dollars_per_hour=0.8)
    m.observe_reconcile("fleet", 0.1)
    out = {}
    for family in m.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = frozenset(key for sample in family.samples for key in sample.labels) - {"le"}
        out[name] = (family.type, labels)
    return out


def test_the_metrics_table_matches_the_registry() -> None:
    documented, exported = _documented(), _exported()
    assert len(documented) >= 25
    assert documented.keys() == exported.keys(), (
        f"undocumented: {sorted(exported.keys() - documented.keys())}; "
        f"not exported: {sorted(documented.keys() - exported.keys())}"
    )
    for name, (kind, labels) in exported.items():
        assert documented[name] == (kind, labels), (
            f"{name}: docs say {documented[name]}, code {kind} {labels}"
        )
