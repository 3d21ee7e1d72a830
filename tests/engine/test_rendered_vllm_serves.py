"""The vLLM command the operator renders for a service really starts, serves and exports chipfit's metrics.

The service is examples/' first vLLM service on NVIDIA chips, planned and rendered exactly as the operator
does (`chipfit render`); its container's command line is mapped to this CPU by cpu_equivalents.py (the one
place for that) and started as a real `vllm serve` of the generated tiny model. Then: streaming
completions and chat, the rendered limits enforced by the engine, and every engine metric name chipfit's
dashboards and code use present in the engine's own /metrics.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chipfit import engines, render
from engine import cpu_equivalents, harness

pytestmark = pytest.mark.engine

REPO: Final = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS: Final = sorted((REPO / "charts" / "chipfit" / "dashboards").glob("*.json"))
ENGINE_METRIC_RE: Final = re.compile(
    r"(?<![\w/.-])vllm:[a-zA-Z_][a-zA-Z0-9_]*"
)  # not image tags (rocm/vllm:rocm6...)
REQUEST_TIMEOUT_S: Final = 120.0
OUTPUT_TOKENS: Final = 12


@pytest.fixture(scope="module")
def rendered(rendered_examples: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The engine container of the first aggregated vLLM Deployment on NVIDIA chips chipfit renders."""
    for _, obj in rendered_examples:
        labels = obj["metadata"]["labels"]
        if (
            obj["kind"] == "Deployment"
            and labels["app.kubernetes.io/name"] == "vllm"
            and labels[render.LABEL_ROLE] == "aggregated"
            and obj["metadata"]["annotations"]["chipfit.io/accelerator"]
            in {"h100", "h200", "a100-80gb", "l40s"}
        ):
            (container,) = obj["spec"]["template"]["spec"]["containers"]
            container_copy: dict[str, Any] = json.loads(json.dumps(container))
            return container_copy
    pytest.fail("chipfit render -f examples/ printed no aggregated vLLM Deployment on NVIDIA chips")


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return value


@pytest.fixture(scope="module")
def served(
    rendered: dict[str, Any], engine_install: harness.EngineInstall, engine_log_dir: pathlib.Path
) -> Iterator[harness.EngineProcess]:
    """The rendered command, CPU-mapped, running as a real engine (stopped after this module)."""
    assert rendered["command"] == ["vllm", "serve"]
    args = cpu_equivalents.vllm_cpu_args(rendered["args"], model_dir=str(engine_install.model), port="{port}")
    # The pod's literal environment too (secret references have no value outside a cluster).
    env = {e["name"]: e["value"] for e in rendered["env"] if "value" in e}
    spec = harness.EngineSpec(name="rendered-vllm", args=args, env=env)
    with harness.running(engine_install, [spec], engine_log_dir) as (engine,):
        yield engine


def _stream(engine: harness.EngineProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST with stream=true; the server-sent events' JSON payloads, up to [DONE] (which must come)."""
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", engine.base_url + path, json={**body, "stream": True}, timeout=REQUEST_TIMEOUT_S
    ) as response:
        assert response.status_code == 200, response.read().decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        done = False
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                break
            events.append(json.loads(data))
    assert done, "the stream ended without [DONE]"
    return events


def test_rendered_command_serves_streaming_completions(
    served: harness.EngineProcess, rendered: dict[str, Any]
) -> None:
    model = _flag(rendered["args"], "--served-model-name")
    body = {
        "model": model,
        "prompt": "The operator places large language model inference on",
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    events = _stream(served, "/v1/completions", body)
    text_chunks = [e["choices"][0]["text"] for e in events if e.get("choices")]
    # Streamed token by token: more than one chunk carries text.
    assert sum(1 for t in text_chunks if t) > 1
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == OUTPUT_TOKENS
    assert usage["prompt_tokens"] > 0
    assert all(e["model"] == model for e in events)


def test_rendered_command_serves_streaming_chat(
    served: harness.EngineProcess, rendered: dict[str, Any]
) -> None:
    model = _flag(rendered["args"], "--served-model-name")
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "How does continuous batching work?"}],
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
    }
    events = _stream(served, "/v1/chat/completions", body)
    deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
    assert deltas[0].get("role") == "assistant"
    assert sum(1 for d in deltas if d.get("content")) > 1
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_engine_enforces_the_rendered_limits(served: harness.EngineProcess, rendered: dict[str, Any]) -> None:
    """--max-model-len reached the engine: /v1/models reports it and a longer request is refused."""
    max_len = int(_flag(rendered["args"], "--max-model-len"))
    status, body = served.get("/v1/models")
    assert status == 200
    (model,) = json.loads(body)["data"]
    assert model["id"] == _flag(rendered["args"], "--served-model-name")
    assert model["max_model_len"] == max_len
    response = httpx.post(
        served.base_url + "/v1/completions",
        json={"model": model["id"], "prompt": "hello", "max_tokens": max_len + 1},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 400, response.text
    assert "max" in response.text.lower()


def exposed_names(text: str) -> set[str]:
    """Every family and sample name in a Prometheus text exposition (a histogram's own name, its
    _bucket/_sum/_count; a counter's name with and without _total)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _exprs(node: Any) -> Iterator[str]:
    """Every PromQL `expr` of a dashboard (panel targets; descriptions and titles are prose)."""
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def _code_strings(source: str) -> Iterator[str]:
    """String literals of a module that are not docstrings (queries and series names, not prose)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def chipfit_engine_metric_names() -> dict[str, str]:
    """vLLM series chipfit uses -> where: its declared set, its dashboards' queries, its code's strings."""
    used = {name: "chipfit.engines.VLLM_METRICS" for name in engines.VLLM_METRICS}
    for path in DASHBOARDS:
        for expr in _exprs(json.loads(path.read_text())):
            for name in ENGINE_METRIC_RE.findall(expr):
                used.setdefault(name, f"charts/chipfit/dashboards/{path.name}")
    for path in sorted((REPO / "operator" / "chipfit").rglob("*.py")):
        for text in _code_strings(path.read_text()):
            for name in ENGINE_METRIC_RE.findall(text):
                used.setdefault(name, str(path.relative_to(REPO)))
    return used


def _current_name(name: str) -> str:
    """The name the current engine exports for `name` (an older release's name as a fallback is renamed)."""
    for suffix in ("_bucket", "_sum", "_count", ""):
        base = name[: len(name) - len(suffix)] if name.endswith(suffix) else None
        if base in engines.VLLM_RENAMED_METRICS:
            return engines.VLLM_RENAMED_METRICS[base] + suffix
    return name


def missing_metrics(used: dict[str, str], exposed: set[str]) -> list[str]:
    """'name (used in where)' for each used series the engine lacks (a renamed one: by its new name)."""
    return sorted(
        f"{name} (used in {where})" for name, where in used.items() if _current_name(name) not in exposed
    )


def test_every_engine_metric_chipfit_uses_is_in_the_engines_metrics(
    served: harness.EngineProcess, rendered: dict[str, Any]
) -> None:
    # Traffic first, so histograms have observations, not only declared families.
    model = _flag(rendered["args"], "--served-model-name")
    _stream(served, "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 4, "ignore_eos": True})
    text = served.metrics_text()
    exposed = exposed_names(text)
    used = chipfit_engine_metric_names()
    assert set(engines.VLLM_METRICS) <= set(used)
    assert missing_metrics(used, exposed) == []
    # The series carry what the dashboards group by, and the latency histograms counted real requests.
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["vllm:time_to_first_token_seconds_count"].labels["model_name"] == model
    assert samples["vllm:time_to_first_token_seconds_count"].value >= 1
    assert samples["vllm:inter_token_latency_seconds_count"].value >= 1


def test_a_missing_metric_is_named() -> None:
    """The check above can fail: a name the engine lacks is reported with where chipfit uses it."""
    exposed = {"vllm:num_requests_running"}
    used = {"vllm:num_requests_running": "a", "vllm:num_requests_swapped": "charts/x.json"}
    assert missing_metrics(used, exposed) == ["vllm:num_requests_swapped (used in charts/x.json)"]
    # An older release's name read as a fallback counts when its current name is exported.
    assert missing_metrics({"vllm:gpu_cache_usage_perc": "b"}, exposed) == [
        "vllm:gpu_cache_usage_perc (used in b)"
    ]
    assert missing_metrics({"vllm:gpu_cache_usage_perc": "b"}, {"vllm:kv_cache_usage_perc"}) == []
