"""The CLI's contract: typed plan output with its schema, exit codes, flags checked before any work,
errors attributed to the right file, a fast --help, and a `crds --write` that stays in its checkout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from chipfit import cli, plan_output, validation
from chipfit.commands import plan as plan_command
from tests.unit.test_solve_plan_cli import FLEET

ROOT = Path(__file__).resolve().parents[2]
# Digits after the point a rounded figure may have (dollars and rates: 4; shares: 4; ms: 1).
MAX_DECIMALS = 4
# Modules `chipfit --help` must not load: the solver stack, the cluster clients, the validators.
HEAVY_MODULES = ("scipy", "numpy", "kopf", "kubernetes", "celpy", "jsonschema", "chipfit.planning")


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    return path


def test_json_output_matches_the_committed_schema_and_is_rounded(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["plan", "-f", str(fleet), "-o", "json"]) == plan_command.EXIT_SERVED
    out = json.loads(capsys.readouterr().out)
    committed = json.loads((ROOT / "docs" / "plan-output.schema.json").read_text())
    jsonschema.Draft202012Validator(committed).validate(out)
    for value in _floats(out):
        assert round(value, MAX_DECIMALS) == value, value


def test_yaml_output_is_the_same_document(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "-f", str(fleet), "-o", "yaml"]) == 0
    from_yaml = yaml.safe_load(capsys.readouterr().out)
    assert cli.main(["plan", "-f", str(fleet), "--json"]) == 0  # the deprecated alias still works
    from_json = json.loads(capsys.readouterr().out)
    from_yaml["solver"]["seconds"] = from_json["solver"]["seconds"]
    assert from_yaml == from_json


def test_committed_schema_is_fresh() -> None:
    committed = (ROOT / "docs" / "plan-output.schema.json").read_text()
    assert committed == plan_output.schema_json(), (
        "stale: run `python -m chipfit.plan_output > docs/plan-output.schema.json`"
    )


def test_unserved_demand_has_its_own_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One L40S node cannot carry 2,000 req/s of an 8B model within a 100 ms ITL.
    (tmp_path / "fleet.yaml").write_text(
        FLEET.replace("requestsPerSecond: 2", "requestsPerSecond: 2000").replace(
            "spec: {accelerator: h100, devicesPerNode: 8, nodes: 1}",
            "spec: {accelerator: h100, devicesPerNode: 1, nodes: 1}",
        )
    )
    assert cli.main(["plan", "-f", str(tmp_path), "-o", "json"]) == plan_command.EXIT_UNSERVED
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["allServed"] is False
    assert out["services"][0]["status"] in ("partial", "unserved")
    assert cli.main(["plan", "-f", str(tmp_path)]) == plan_command.EXIT_UNSERVED
    assert "unserved team/chat" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-utilization", "0"], "argument --max-utilization: must be > 0 and <= 1, got 0"),
        (["--max-utilization", "1.5"], "argument --max-utilization: must be > 0 and <= 1, got 1.5"),
        (["--time-limit", "0"], "argument --time-limit: must be > 0, got 0"),
        (["--time-limit", "-5"], "argument --time-limit: must be > 0, got -5"),
        (["--time-limit", "nan"], "argument --time-limit: must be a finite number, got nan"),
        (["--move-penalty", "-1"], "argument --move-penalty: must be >= 0, got -1"),
        (["-o", "xml"], "argument -o/--output: invalid choice: 'xml'"),
    ],
)
def test_flags_are_checked_before_any_work(
    fleet: Path,
    flags: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_work(*_: Any, **__: Any) -> Any:
        raise AssertionError("manifests were read before the flags were checked")

    monkeypatch.setattr(validation, "load_and_validate", no_work)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["plan", "-f", str(fleet), *flags])
    assert exit_info.value.code == plan_command.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_a_file_without_pools_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "-f", str(ROOT / "examples" / "20-services.yaml")]) == plan_command.EXIT_INVALID
    err = capsys.readouterr().err
    assert "no AcceleratorPool found in" in err and "no configuration fits" not in err


def test_help_documents_flags_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "manifest files or directories" in text  # -f
    assert "wall-clock budget of each solver call" in text  # --time-limit
    assert "exit codes: 0 every service's demand is served; 3" in text


def test_help_loads_no_heavy_module() -> None:
    code = (
        "import sys\nfrom chipfit import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_validate_attributes_each_problem_to_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same service in two files (a duplicate, reported on the second); only a.yaml's has a context
    # too long for the model: that problem belongs to a.yaml, not to the last file with that name.
    service = FLEET.split("---")[2]
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(
        service.replace("outputTokens: {mean: 100, p99: 400}", "outputTokens: {mean: 200000, p99: 400000}")
    )
    b.write_text(service)
    assert cli.main(["validate", "-f", str(a), str(b)]) == 1
    lines = capsys.readouterr().out.splitlines()
    context = [line for line in lines if "maximum context" in line]
    duplicate = [line for line in lines if "duplicate" in line]
    assert context and all(line.startswith(f"{a}: InferenceService team/chat: ") for line in context), lines
    assert duplicate and all(line.startswith(f"{b}: ") for line in duplicate), lines


def test_validate_attributes_duplicates_across_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = FLEET.split("---")[0]
    (tmp_path / "a.yaml").write_text(pool)
    (tmp_path / "b.yaml").write_text(pool.replace("nodes: 1", "nodes: 0"))
    assert cli.main(["validate", "-f", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{tmp_path / 'b.yaml'}: AcceleratorPool h100s: metadata.name: duplicate")


def test_predict_reports_every_flag_error_by_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "predict",
            *("--model", "llama-3.1-8b", "--chip", "h100", "--isl", "0", "--osl", "100"),
            *("--rps", "1", "--ttft-p99-ms", "0", "--itl-p99-ms", "-3"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    for flag in ("--isl", "--ttft-p99-ms", "--itl-p99-ms"):
        assert f"{flag}: " in err
    assert "slo." not in err and "_ms" not in err


def test_crds_write_outside_a_checkout_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["crds", "--write"]) == 2
    assert "--dir" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["crds", "--write", "--dir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "chipfit.io_acceleratorpools.yaml",
        "chipfit.io_inferenceservices.yaml",
        "chipfit.io_performanceprofiles.yaml",
    ]


def test_crds_write_inside_the_checkout_finds_its_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT / "docs")
    assert cli.main(["crds", "--write"]) == 0
    written = capsys.readouterr().out.splitlines()
    assert f"wrote {ROOT / 'crds' / 'chipfit.io_acceleratorpools.yaml'}" in written
