"""The judged data (benchmarks/judged/) never feeds fitting or calibration, and the judge fits nothing.

Issue #13's done-when is measured on published results the model was not fitted to; this keeps it so:
- no code or build file in the repository but benchmarks/judge.py names the judged directory or file;
- every calibration input is loaded without opening anything under benchmarks/judged/ (an audit hook
  watches every file the loaders open), and no calibration point comes from a judged source;
- benchmarks/judge.py imports no fitting code and calls no fitting function.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import importlib.util
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from placement import calibration, engine_version, profile_fit

ROOT = Path(__file__).resolve().parents[2]
JUDGED_DIR = ROOT / "benchmarks" / "judged"
JUDGE = ROOT / "benchmarks" / "judge.py"
THIS = Path(__file__).resolve()
# Names by which code could reach the judged data.
NEEDLES = ("benchmarks/judged", "judged/", "published.csv", '"judged"', "'judged'")
# The only files allowed to name it: the judge and this test.
ALLOWED = {JUDGE, THIS}
CODE_SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".json"}
SKIPPED_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".cache", ".mypy_cache", ".ruff_cache"}
# Fitting entry points the judge must never touch.
FITTING_CALLS = {"fit_efficiency", "fit_sets", "log_errors", "fit", "calibrate", "refit", "least_squares"}
FITTING_MODULES = {
    "calibrate",
    "accuracy",
    "placement.calibration",
    "placement.profile_fit",
    "scipy.optimize",
}


def code_files(root: Path) -> Iterator[Path]:
    """Code and build files under `root` (not docs, not data, not virtualenvs or caches)."""
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(directory) / name
            if path.suffix in CODE_SUFFIXES or name in ("Makefile", "Dockerfile"):
                yield path


def naming_judged(root: Path, allowed: set[Path]) -> list[str]:
    """Files (relative to `root`) that name the judged data, other than `allowed` ones."""
    offenders = []
    for path in code_files(root):
        if path.resolve() in allowed:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if any(needle in text for needle in NEEDLES):
            offenders.append(str(path.relative_to(root)))
    return sorted(offenders)


def test_only_the_judge_names_the_judged_data() -> None:
    assert naming_judged(ROOT, ALLOWED) == []


def test_the_scan_finds_a_fitting_script_that_reads_the_judged_data(tmp_path: Path) -> None:
    (tmp_path / "benchmarks").mkdir()
    sneaky = tmp_path / "benchmarks" / "calibrate.py"
    sneaky.write_text('rows = open(ROOT / "benchmarks/judged/published.csv").read()\n')
    (tmp_path / "placement").mkdir()
    (tmp_path / "placement" / "calibration.py").write_text("DATA = 'judged/' + name\n")
    (tmp_path / "notes.md").write_text("benchmarks/judged/ is documentation, not code\n")
    assert naming_judged(tmp_path, set()) == ["benchmarks/calibrate.py", "placement/calibration.py"]


@contextlib.contextmanager
def opened_files() -> Iterator[list[str]]:
    """Every path opened while the block runs (Python's `open` audit event, which pathlib and
    importlib.resources go through too)."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            seen.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it goes quiet instead
    try:
        yield seen
    finally:
        active[0] = False


def test_the_file_watch_sees_a_read_of_the_judged_data() -> None:
    with opened_files() as seen:
        (JUDGED_DIR / "published.csv").read_text(encoding="utf-8")
    assert any(Path(p).resolve().is_relative_to(JUDGED_DIR) for p in seen)


def test_calibration_inputs_never_open_the_judged_data() -> None:
    with opened_files() as seen:
        sets = calibration.fit_sets()
        held_out = calibration.trtllm_points(calibration.HELDOUT_CSV)
        server = calibration.mlperf_points(("Offline", "Server"))
        ratios = calibration.engine_version_ratios()
    assert sets and held_out and server and ratios
    opened = {Path(p).resolve() for p in seen}
    assert opened, "the loaders read their CSV files: the watch must see them"
    assert not [p for p in opened if p.is_relative_to(JUDGED_DIR)]


def judged_sources() -> set[tuple[str, str, str]]:
    """(repo, path, commit) of every judged row."""
    with (JUDGED_DIR / "published.csv").open(encoding="utf-8", newline="") as handle:
        return {(r["repo"], r["path"], r["commit"]) for r in csv.DictReader(handle)}


def test_no_calibration_point_comes_from_a_judged_source() -> None:
    points = [p for ps in calibration.fit_sets().values() for p in ps]
    points += calibration.trtllm_points(calibration.HELDOUT_CSV) + calibration.mlperf_points(
        ("Offline", "Server", "Interactive")
    )
    # Judged sources: MLPerf v5.1 and the H200 column of TensorRT-LLM v1.0's table.
    assert not [p.dataset for p in points if "v5.1" in p.dataset]
    assert not [p.dataset for p in points if p.dataset.startswith("trtllm_v1.0") and p.accelerator == "h200"]
    # And no calibration CSV cites a file a judged row was read from.
    cited = set()
    for name in (calibration.TRTLLM_CSV, calibration.MLPERF_CSV, calibration.HELDOUT_CSV):
        with (ROOT / "placement" / "data" / name).open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                cited.add(row.get("repo", "") + "|" + row.get("path", ""))
                cited.update(v for v in row.values() if v and "inference_results_v5.1" in v)
    judged = {f"{repo}|{path}" for repo, path, _ in judged_sources() if repo != "NVIDIA/TensorRT-LLM"}
    assert not (cited & judged)
    assert not [c for c in cited if "inference_results_v5.1" in c]


def test_profile_fitting_reads_no_files() -> None:
    """profile_fit fits a user's measured profile, passed in memory; it opens nothing on its own."""
    tree = ast.parse(Path(profile_fit.__file__).read_text(encoding="utf-8"))
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert "open" not in calls and not ({"read_text", "read_bytes", "open"} & attrs)


def test_the_judge_imports_and_calls_no_fitting_code() -> None:
    tree = ast.parse(JUDGE.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    assert not (imported & FITTING_MODULES)
    called = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
    }
    assert not (called & FITTING_CALLS)
    # What it does import for the engine release (engine_version) only reads the calibration CSVs'
    # release ratios, which the check above proves contain no judged data.
    assert engine_version.efficiency.__module__ == "placement.engine_version"


def _judge_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("judge_under_test", JUDGE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_judged_row_carries_its_source() -> None:
    judge = _judge_module()
    rows = judge.load()
    assert len(rows) >= 60
    assert {r.chip for r in rows} >= {"h100", "h200", "l40s", "mi300x"}
    assert {r.scenario for r in rows} == {"offline", "server", "interactive"}


def test_a_row_without_a_source_is_refused(tmp_path: Path) -> None:
    judge = _judge_module()
    source = (JUDGED_DIR / "published.csv").read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([source[0]]))
    first = next(csv.DictReader(source[:2]))
    first["commit"] = ""
    bad = tmp_path / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerow(first)
    with pytest.raises(ValueError, match="has no source"):
        judge.load(bad)


def test_an_unservable_prediction_counts_as_an_infinite_error() -> None:
    judge = _judge_module()
    row = judge.load()[0]
    finite = [judge.Judged(row, "throughput", 100.0, 100.0 * (1 + k / 100), 1) for k in range(8)]
    missing = [judge.Judged(row, "throughput", 100.0, math.inf, None) for _ in range(2)]
    s = judge.stats(finite + missing)
    assert s["n"] == 10
    assert math.isinf(s["p90_abs_pct"]) and not math.isnan(s["p90_abs_pct"])
    assert s["median_abs_pct"] == pytest.approx(4.5)  # 0..7 % and two infinite: (4 + 5) / 2
    assert judge.verdict("throughput", s) == "misses"


def _synthetic_row(judge: ModuleType, **changes: object) -> object:
    """A made-up Server row (not judged data): Llama 3.1 8B on 8 H100s."""
    base = dict(
        row_id="synthetic",
        source=judge.MLPERF,
        system="synthetic",
        chip="h100",
        n_accel=8,
        accel_per_node=8,
        model="llama-3.1-8b",
        benchmark="llama3.1-8b",
        precision="fp8",
        engine="trtllm",
        engine_version=None,
        scenario="server",
        tp=2,
        prompt_tokens=1000.0,
        output_tokens=128.0,
        ttft_limit_ms=2000.0,
        tpot_limit_ms=100.0,
        tokens_per_s_per_accel=1000.0,
        rate_rps_system=16.0,
        ttft_mean_ms=100.0,
        tpot_mean_ms=20.0,
    )
    base.update(changes)
    return judge.Row(**base)


def test_latency_is_predicted_at_the_rate_one_replica_sees() -> None:
    judge = _judge_module()
    judged = {j.metric: j for j in judge.judge_loaded(_synthetic_row(judge))}
    assert set(judged) == {"capacity", "ttft_mean", "itl_mean"}
    # 16 req/s over 8 GPUs in tp2 replicas: 4 replicas, 4 req/s each.
    assert judged["ttft_mean"].note.startswith("4.00 req/s per tp2 replica")
    assert judged["ttft_mean"].tp == judged["capacity"].tp == 2


def test_a_load_the_model_cannot_sustain_is_an_infinite_error(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = _judge_module()
    # perf answers None for a rate one replica cannot keep up with: the judge must count it, not drop it.
    monkeypatch.setattr(judge.perf, "latency_at_rate", lambda *args, **kwargs: None)
    judged = {j.metric: j for j in judge.judge_loaded(_synthetic_row(judge))}
    assert math.isinf(judged["ttft_mean"].error_pct) and math.isinf(judged["itl_mean"].error_pct)
    assert "cannot keep up" in judged["ttft_mean"].note
    assert math.isfinite(judged["capacity"].error_pct)


def test_without_a_published_tp_the_choices_stay_within_a_node() -> None:
    judge = _judge_module()
    assert _synthetic_row(judge, tp=None, accel_per_node=2).tp_choices == (1, 2)
    assert _synthetic_row(judge, tp=None, n_accel=1, accel_per_node=1).tp_choices == (1,)
    assert _synthetic_row(judge, tp=4).tp_choices == (4,)
