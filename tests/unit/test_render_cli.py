"""`chipfit render`: the operator's plan and render path as a dry run over manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_solve_plan_cli import FLEET

from chipfit import cli, render

REPO = Path(__file__).resolve().parents[2]


def _render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["render", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_yaml_holds_the_planned_deployment_and_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    code, out, err = _render(capsys, "-f", str(tmp_path))
    assert code == 0, err
    assert out.startswith("---\n# Source: InferenceService team/chat\n")
    objects = [o for o in yaml.safe_load_all(out) if o]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds[-1] == "Service" and set(kinds[:-1]) == {"Deployment"}
    for obj in objects:
        assert obj["metadata"]["namespace"] == "team"
        assert obj["metadata"]["labels"][render.LABEL_SERVICE] == "chat"
        # Filled in by the cluster only: the owner's uid and the hash over it.
        assert "ownerReferences" not in obj["metadata"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["metadata"]["name"] == "chat"
    # The plan's placement (chipfit plan --json) is what is rendered: same pools, same replica counts.
    assert cli.main(["plan", "-f", str(tmp_path), "-o", "json"]) == 0
    (planned,) = json.loads(capsys.readouterr().out)["services"]
    by_pool: dict[str, int] = {}
    for a in planned["assignments"]:
        by_pool[a["pool"]] = by_pool.get(a["pool"], 0) + a["replicas"]
    rendered = {d["metadata"]["labels"][render.LABEL_POOL]: d["spec"]["replicas"] for d in deployments}
    assert rendered == by_pool
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][0] == "meta-llama/Llama-3.1-8B"  # the catalog's repo: FLEET names no source


def test_json_is_one_list_of_the_same_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    code, out_yaml, _ = _render(capsys, "-f", str(tmp_path))
    assert code == 0
    code, out_json, _ = _render(capsys, "-f", str(tmp_path), "-o", "json")
    assert code == 0
    listed = json.loads(out_json)
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert listed["items"] == [o for o in yaml.safe_load_all(out_yaml) if o]


def test_examples_render_every_service_they_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _render(capsys, "-f", str(REPO / "examples"), "-o", "json")
    assert code == 0, err
    items = json.loads(out)["items"]
    services = {o["metadata"]["labels"][render.LABEL_SERVICE] for o in items}
    declared = {
        d["metadata"]["name"]
        for f in sorted((REPO / "examples").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
        if d and d.get("kind") == "InferenceService"
    }
    unplaced = {
        line.split(":")[1].strip().split("/")[-1] for line in err.splitlines() if "nothing to render" in line
    }
    assert services | unplaced == declared


def test_invalid_input_names_the_field_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text(FLEET.replace("ttftP99Ms: 2000", "ttftP99Ms: -5"))
    code, out, _ = _render(capsys, "-f", str(tmp_path))
    assert code == 1
    assert "spec.slo.ttftP99Ms" in out and "Deployment" not in out


def test_no_services_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pools.yaml").write_text(FLEET.split("---")[0])
    code, _, err = _render(capsys, "-f", str(tmp_path))
    assert code == 1 and "no InferenceService" in err


def test_a_service_no_pool_can_serve_is_named_not_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Pools without nodes: the plan places nothing, so nothing is rendered and stderr says why.
    tight = FLEET.replace("nodes: 1", "nodes: 0")
    (tmp_path / "fleet.yaml").write_text(tight)
    code, out, err = _render(capsys, "-f", str(tmp_path))
    assert code == 3, err  # as `chipfit plan` when demand is unserved
    assert out == ""
    assert "team/chat: nothing to render" in err


def test_a_service_that_cannot_be_rendered_is_named_and_the_rest_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the operator (RenderFailed for it, the others reconciled): exit 1, the rest printed."""
    second = FLEET.split("---")[-1].replace("name: chat,", "name: chat-two,")
    (tmp_path / "fleet.yaml").write_text(FLEET + "---" + second)
    real = render.render_planned

    def refuse_chat(service: Any, placements: Any, pools: Any) -> list[dict[str, Any]]:
        if service.metadata.name == "chat":
            raise render.RenderError("spec.engine", "engine vllm: no such launch")
        return real(service, placements, pools)

    monkeypatch.setattr(render, "render_planned", refuse_chat)
    code, out, err = _render(capsys, "-f", str(tmp_path))
    assert code == 1
    assert "cannot render team/chat: spec.engine: engine vllm: no such launch" in err
    names = {o["metadata"]["labels"][render.LABEL_SERVICE] for o in yaml.safe_load_all(out) if o}
    assert names == {"chat-two"}
