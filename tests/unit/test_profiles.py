"""Bucket profiles: lookup, validation and the Mélange table layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from placement import profiles

MELANGE = Path(__file__).resolve().parents[3] / "shared" / "data" / "melange" / "melange_profiles.json"


def grid_profile(**overrides: object) -> profiles.BucketProfile:
    """A 2 x 2 profile."""
    fields: dict[str, object] = {
        "model": "llama-3.1-8b",
        "accelerator": "l4",
        "precision": "bf16",
        "tp": 1,
        "prompt_edges_tokens": (0, 100, 1000),
        "output_edges_tokens": (0, 50, 500),
        "max_rps": ((8.0, 2.0), (3.0, 0.5)),
    }
    fields.update(overrides)
    return profiles.BucketProfile(**fields)  # type: ignore[arg-type]


def test_lookup_uses_right_closed_buckets() -> None:
    p = grid_profile()
    assert p.max_rps_for(100, 50) == 8.0
    assert p.max_rps_for(101, 50) == 3.0
    assert p.max_rps_for(0, 51) == 2.0
    assert p.max_rps_for(1000, 500) == 0.5
    assert p.max_rps_for(1001, 10) == 0.0  # outside the measured grid: no claim


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompt_edges_tokens": (0,)}, "prompt_edges_tokens: needs at least two"),
        ({"output_edges_tokens": (0, 50, 50)}, "output_edges_tokens: edges must increase"),
        ({"max_rps": ((8.0, 2.0),)}, "1 rows, expected 2"),
        ({"max_rps": ((8.0, 2.0), (3.0,))}, r"max_rps\[1\] has 1 entries"),
        ({"max_rps": ((8.0, -2.0), (3.0, 1.0))}, r"max_rps\[0\]\[1\] must be finite"),
        ({"tp": 0}, "tp must be >= 1"),
    ],
)
def test_malformed_profiles_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(profiles.ProfileError, match=message):
        grid_profile(**overrides)


def test_duplicate_profiles_are_rejected() -> None:
    with pytest.raises(profiles.ProfileError, match="defined twice"):
        profiles.index_profiles([grid_profile(), grid_profile()])


def test_melange_table_pairs_cells_like_the_authors_solver() -> None:
    # tputs[i][j] meets distribution[i][j]; the distribution is histogram2d(prompt, output).T[::-1].
    tputs = [[1.0, 2.0], [3.0, 4.0]]
    p = profiles.from_melange_table(tputs, model="m", accelerator="a", edges_tokens=(0, 10, 20))
    dist = profiles.melange_distribution_to_grid([[0.1, 0.2], [0.3, 0.4]])
    # Row 0 of the distribution is the top output bucket: prompt bucket j, output bucket 1.
    assert dist[0][1] == 0.1 and dist[1][1] == 0.2 and dist[0][0] == 0.3 and dist[1][0] == 0.4
    assert p.max_rps[0][1] == 1.0 and p.max_rps[1][1] == 2.0 and p.max_rps[0][0] == 3.0


@pytest.mark.skipif(not MELANGE.exists(), reason="needs ../shared/data")
def test_melange_a100_extra_rows_are_dropped() -> None:
    data = json.loads(MELANGE.read_text())
    p = profiles.from_melange_table(
        data["gpu_info_llama7b"]["A100"]["tputs"], model="llama-2-7b", accelerator="a100"
    )
    assert len(p.max_rps) == 6 and all(len(r) == 6 for r in p.max_rps)
