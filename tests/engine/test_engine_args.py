"""Every engine command line the renderer produces passes that engine's own parser (and, for vLLM, its engine
configuration build), checked offline in one subprocess per engine.

Rendered: every engine x pool (chip) x tensor parallel x precision x role x chunk the renderer accepts,
plus the lines `chipfit render` produces for examples/ (the sizes the plan really chose). vLLM lines go
through `vllm serve`'s parser and, mapped to this CPU by tests/engine/cpu_equivalents.py, through
`create_engine_config()` against the generated model; SGLang lines through `ServerArgs`' parser (of the
rendered image's version). TensorRT-LLM, TGI and vLLM-on-Neuron lines cannot be checked here (see
UNCHECKED and e2e/README.md); the test lists them instead of passing them silently.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest

from chipfit import engines, render
from engine import cpu_equivalents, harness
from placement import catalog
from tests.unit.chipfit_builders import POOLS, SERVICES, placement

pytestmark = pytest.mark.engine

HERE: Final = pathlib.Path(__file__).resolve().parent
REPO: Final = HERE.parents[1]
ENGINES: Final = ("vllm", "sglang", "trtllm", "tgi", "neuron")
TENSOR_PARALLEL: Final = (1, 2, 4, 8)
PRECISIONS: Final = ("bf16", "fp16", "fp8", "int8", "int4")
ROLES: Final = ("aggregated", "prefill", "decode")
# Chunk budgets: the engine's default (no flag) and a budget the performance model picks.
CHUNKS: Final = (None, 2048)
SIZING_LEN: Final = 8192
SIZING_SEQS: Final = 64
# Images whose parser cannot be installed here, and why (also in e2e/README.md).
UNCHECKED: Final = {
    # PyPI's tensorrt-llm 1.0.0 is a 1.6 kB sdist built by NVIDIA's wheel_stub, which fetches the real wheel
    # from NVIDIA's own package index (not reachable here); trtllm-serve also needs CUDA to import.
    "trtllm": "PyPI's tensorrt-llm is a wheel_stub sdist fetching from NVIDIA's index (unreachable here)",
    "tgi": "text-generation-launcher is a Rust binary only in TGI's images (not on PyPI nor crates.io)",
    "neuron": "vLLM for Neuron (vllm-neuronx, Neuron DLC) installs only from AWS's Neuron package index",
}
CHECK_TIMEOUT_S: Final = 900


@dataclasses.dataclass(frozen=True)
class Line:
    """One rendered engine container: which case, and the command it runs."""

    case: str
    engine: str
    vendor: str
    command: tuple[str, ...]
    args: tuple[str, ...]


def _container_line(case: str, engine: str, vendor: str, deployment: dict[str, Any]) -> Line:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return Line(case, engine, vendor, tuple(container["command"]), tuple(container["args"]))


def _service(engine: str) -> Any:
    service = SERVICES["chat-8b"].model_copy(deep=True)
    service.spec.engine = engine
    return service


def matrix_lines() -> Iterator[Line]:
    """Every combination the renderer accepts (RenderError: the combination does not exist)."""
    for engine in ENGINES:
        service = _service(engine)
        for pool_name in sorted(POOLS):
            chip = catalog.get_accelerator(POOLS[pool_name].spec.accelerator)
            for tp in (t for t in TENSOR_PARALLEL if t <= chip.max_tp):
                for precision in PRECISIONS:
                    for role in ROLES:
                        for chunk in CHUNKS:
                            p = placement(role, pool_name, tp=tp, precision=precision)
                            sizing = engines.Sizing(SIZING_LEN, SIZING_SEQS, chunk)
                            try:
                                deployment = render.render_deployment(service, p, POOLS[pool_name], sizing)
                            except render.RenderError:
                                continue
                            case = f"{engine}/{pool_name}/tp{tp}/{precision}/{role}/chunk={chunk}"
                            yield _container_line(case, engine, chip.vendor, deployment)


def example_lines(objects: Sequence[tuple[str, dict[str, Any]]]) -> Iterator[Line]:
    """The engine containers `chipfit render -f examples/` prints (the plan's own sizes)."""
    for sid, obj in objects:
        role = obj["metadata"]["labels"].get(render.LABEL_ROLE)
        if obj["kind"] != "Deployment" or role == render.ROUTER_ROLE:
            continue
        engine = obj["metadata"]["labels"]["app.kubernetes.io/name"]
        accelerator = obj["metadata"]["annotations"]["chipfit.io/accelerator"]
        vendor = catalog.get_accelerator(accelerator).vendor
        yield _container_line(f"examples:{sid}:{obj['metadata']['name']}", engine, vendor, obj)


@pytest.fixture(scope="module")
def lines(rendered_examples: list[tuple[str, dict[str, Any]]]) -> list[Line]:
    return [*matrix_lines(), *example_lines(rendered_examples)]


def _run_checker(
    python: pathlib.Path, script: str, cases: list[dict[str, Any]], tmp: pathlib.Path
) -> list[Any]:
    """One subprocess checks the whole batch; results by case id."""
    out = tmp / f"{script}.results.json"
    result = subprocess.run(
        [str(python), str(HERE / script), str(out)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT_S,
        cwd=tmp,
        env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    results: list[Any] = json.loads(out.read_text())
    return results


def _failures(results: Sequence[dict[str, Any]], ids: dict[str, list[str]]) -> list[str]:
    """One line per failing case: the cases that rendered it, the unknown flags named, or the error."""
    failures = []
    for r in results:
        if r["unknown"]:
            failures.append(
                f"{ids[r['id']][0]} (+{len(ids[r['id']]) - 1} more): unknown flag(s) {r['unknown']}"
            )
        elif r["error"]:
            failures.append(f"{ids[r['id']][0]} (+{len(ids[r['id']]) - 1} more): {r['error']}")
    return failures


def vllm_cases(
    lines: Sequence[Line], model: pathlib.Path
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Distinct vLLM command lines (after `vllm`), each with its CPU-mapped twin for the config build."""
    cases: dict[tuple[str, ...], dict[str, Any]] = {}
    ids: dict[str, list[str]] = {}
    for line in lines:
        if line.engine != "vllm" or line.vendor == "aws":
            continue
        assert line.command == ("vllm", "serve"), line
        argv = ("serve", *line.args)
        if argv not in cases:
            cpu = cpu_equivalents.vllm_cpu_args(line.args, model_dir=str(model), port=8000)
            cases[argv] = {"id": str(len(cases)), "argv": list(argv), "config_argv": ["serve", *cpu]}
        ids.setdefault(cases[argv]["id"], []).append(line.case)
    return list(cases.values()), ids


def sglang_cases(lines: Sequence[Line]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    cases: dict[tuple[str, ...], dict[str, Any]] = {}
    ids: dict[str, list[str]] = {}
    for line in lines:
        if line.engine != "sglang":
            continue
        assert line.command == ("python3", "-m", "sglang.launch_server"), line
        if line.args not in cases:
            cases[line.args] = {"id": str(len(cases)), "argv": list(line.args)}
        ids.setdefault(cases[line.args]["id"], []).append(line.case)
    return list(cases.values()), ids


def test_matrix_covers_every_engine_role_and_precision(lines: list[Line]) -> None:
    """The matrix is not vacuous: every engine renders, split roles and quantized precisions too."""
    assert {line.engine for line in lines} == set(ENGINES)
    by_engine = {e: [line.case for line in lines if line.engine == e] for e in ENGINES}
    for engine in ("vllm", "sglang", "trtllm"):
        assert any("/prefill/" in c for c in by_engine[engine]), engine
        assert any("/fp8/" in c for c in by_engine[engine]), engine
    assert any(c.startswith("examples:") for c in by_engine["vllm"])


def _wrong_lines(lines: Sequence[Line]) -> tuple[list[Line], list[Line]]:
    """Deliberately wrong lines, checked in the same batch: they must fail, naming what is wrong."""
    vllm_line = next(line for line in lines if line.engine == "vllm" and line.vendor == "nvidia")
    sglang_line = next(line for line in lines if line.engine == "sglang")
    vllm_wrong = [
        dataclasses.replace(vllm_line, case="WRONG misspelt", args=(*vllm_line.args, "--max-num-seq=8")),
        dataclasses.replace(
            vllm_line, case="WRONG abbreviated", args=(*vllm_line.args, "--max-num-batched=64")
        ),
        dataclasses.replace(vllm_line, case="WRONG bad value", args=(*vllm_line.args, "--dtype=bfloat17")),
        # Parses, but the engine configuration refuses it: the chunk budget below the sequence cap.
        dataclasses.replace(
            vllm_line, case="WRONG bad config", args=(*vllm_line.args, "--max-num-batched-tokens=8")
        ),
    ]
    sglang_wrong = [
        dataclasses.replace(sglang_line, case="WRONG sglang misspelt", args=(*sglang_line.args, "--tp=2")),
        dataclasses.replace(
            sglang_line, case="WRONG sglang bad value", args=(*sglang_line.args, "--dtype=fp7")
        ),
    ]
    return vllm_wrong, sglang_wrong


@pytest.fixture(scope="module")
def vllm_failures(
    lines: list[Line], engine_install: harness.EngineInstall, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """(failures, cases, results) of every vLLM line plus the wrong ones, in one subprocess."""
    wrong, _ = _wrong_lines(lines)
    cases, ids = vllm_cases([*lines, *wrong], engine_install.model)
    results = _run_checker(
        engine_install.python, "check_vllm_args.py", cases, tmp_path_factory.mktemp("vllm")
    )
    assert len(results) == len(cases)
    return _failures(results, ids), cases, results


@pytest.fixture(scope="module")
def sglang_failures(
    lines: list[Line], engine_install: harness.EngineInstall, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    _, wrong = _wrong_lines(lines)
    cases, ids = sglang_cases([*lines, *wrong])
    assert engine_install.sglang_python is not None
    results = _run_checker(
        engine_install.sglang_python, "check_sglang_args.py", cases, tmp_path_factory.mktemp("sg")
    )
    return _failures(results, ids)


def test_every_vllm_line_passes_vllms_parser_and_engine_config(
    vllm_failures: tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    failures, cases, results = vllm_failures
    assert [f for f in failures if not f.startswith("WRONG")] == []
    # The engine configuration keeps what the renderer asked for (nothing silently clamped).
    for case, r in zip(cases, results, strict=True):
        if r["config"] is None:
            continue
        flags = dict(a.split("=", 1) for a in case["argv"][2:] if "=" in a)
        assert r["config"]["max_model_len"] == int(flags["--max-model-len"]), case["argv"]
        assert r["config"]["max_num_seqs"] == int(flags["--max-num-seqs"]), case["argv"]
        if "--max-num-batched-tokens" in flags:
            assert r["config"]["max_num_batched_tokens"] == int(flags["--max-num-batched-tokens"]), case[
                "argv"
            ]


def test_every_sglang_line_passes_sglangs_parser(sglang_failures: list[str]) -> None:
    assert [f for f in sglang_failures if not f.startswith("WRONG")] == []


def test_a_wrong_flag_fails_each_checker_naming_the_flag(
    vllm_failures: tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]], sglang_failures: list[str]
) -> None:
    """The checks can fail: a misspelt flag, an abbreviation, a bad value, a bad config: each reported."""
    wrong = sorted(f for f in vllm_failures[0] if f.startswith("WRONG"))
    assert len(wrong) == 4, wrong
    abbreviated, bad_config, bad_value, misspelt = wrong
    assert "--max-num-seq'" in misspelt
    assert "--max-num-batched'" in abbreviated
    assert "bfloat17" in bad_value
    assert "max_num_batched_tokens" in bad_config
    s_wrong = sorted(f for f in sglang_failures if f.startswith("WRONG"))
    assert len(s_wrong) == 2, s_wrong
    assert "fp7" in s_wrong[0] and "'--tp'" in s_wrong[1]


def test_engines_that_cannot_be_checked_here_are_named(lines: list[Line]) -> None:
    """No engine is silently skipped: what is not checked is listed with the reason (and in e2e/README.md)."""
    checked = {"vllm", "sglang"}
    unchecked = {
        line.engine if line.engine != "vllm" else "neuron" for line in lines if line.engine not in checked
    }
    unchecked |= {"neuron" for line in lines if line.engine == "vllm" and line.vendor == "aws"}
    assert unchecked == set(UNCHECKED)
    readme = (REPO / "e2e" / "README.md").read_text()
    for engine in UNCHECKED:
        assert f"| {engine} |" in readme, f"e2e/README.md does not say why {engine} lines are not checked"
