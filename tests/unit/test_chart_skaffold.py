"""skaffold.yaml: builds the Dockerfile's image and installs the chart with values the chart accepts.

No skaffold binary here (it needs Docker anyway); the test applies each profile's JSON patches the way
skaffold does and renders the chart with the resulting --set values through the real helm.
"""

from __future__ import annotations

import copy
import itertools
import pathlib
import re
import subprocess
from typing import Any, Final

import jsonpatch
import pytest
import yaml

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
SKAFFOLD: Final = REPO_DIR / "skaffold.yaml"
INSTALL_HELM: Final = REPO_DIR / "e2e" / "install-helm.sh"
HELM_TIMEOUT_S: Final = 120
INSTALL_TIMEOUT_S: Final = 600
# What skaffold substitutes into setValueTemplates after a build (the values themselves are arbitrary).
BUILT_IMAGE: Final = {"IMAGE_REPO_chipfit": "localhost/chipfit", "IMAGE_TAG_chipfit": "abc1234"}


def _config() -> dict[str, Any]:
    """skaffold.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return data


def _profiles() -> dict[str, dict[str, Any]]:
    """Profile name -> profile."""
    return {p["name"]: p for p in _config()["profiles"]}


def effective(active: tuple[str, ...]) -> dict[str, Any]:
    """The config with the named profiles applied in order (their build sections and JSON patches)."""
    config = copy.deepcopy(_config())
    profiles = _profiles()
    for name in active:
        profile = profiles[name]
        if "build" in profile:
            config["build"] = {**config["build"], **profile["build"]}
        if "patches" in profile:
            config = jsonpatch.apply_patch(config, profile["patches"])
    return config


@pytest.fixture(scope="module")
def helm() -> pathlib.Path:
    """The pinned real helm binary (e2e/install-helm.sh, idempotent)."""
    result = subprocess.run(
        ["bash", str(INSTALL_HELM)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"e2e/install-helm.sh failed: {result.stderr.strip()[-500:]}", pytrace=False)
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def test_builds_the_dockerfile_image_and_deploys_the_chart() -> None:
    config = _config()
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    assert config["kind"] == "Config"
    (artifact,) = config["build"]["artifacts"]
    assert (REPO_DIR / artifact["context"] / artifact["docker"]["dockerfile"]).is_file()
    assert config["build"]["local"]["useBuildkit"] is True  # the Dockerfile uses RUN --mount
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO_DIR / release["chartPath"] / "Chart.yaml").is_file()
    image = artifact["image"]
    assert release["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{image}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{image}}}}}",
    }


def test_kind_profile_sideloads_the_image() -> None:
    config = effective(("kind",))
    assert config["build"]["local"]["push"] is False
    assert config["deploy"]["helm"]["releases"][0]["setValues"]["image.pullPolicy"] == "Never"


def _set_args(release: dict[str, Any]) -> list[str]:
    """The --set flags skaffold passes for a release, with the built image substituted."""
    args = []
    for key, template in release.get("setValueTemplates", {}).items():
        value = re.sub(r"\{\{\.(\w+)\}\}", lambda m: BUILT_IMAGE[m.group(1)], template)
        args += ["--set", f"{key}={value}"]
    for key, value in release.get("setValues", {}).items():
        rendered = str(value).lower() if isinstance(value, bool) else str(value)
        args += ["--set", f"{key}={rendered}"]
    return args


PROFILE_NAMES: Final = [p["name"] for p in yaml.safe_load(SKAFFOLD.read_text())["profiles"]]
PROFILE_SETS: Final = [
    combo for size in range(len(PROFILE_NAMES) + 1) for combo in itertools.combinations(PROFILE_NAMES, size)
]


@pytest.mark.parametrize("active", PROFILE_SETS, ids=lambda c: "+".join(c) or "default")
def test_every_profile_combination_renders(helm: pathlib.Path, active: tuple[str, ...]) -> None:
    (release,) = effective(active)["deploy"]["helm"]["releases"]
    chart = str(REPO_DIR / release["chartPath"])
    command = [str(helm), "template", release["name"], chart, "-n", release["namespace"], *_set_args(release)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/chipfit:abc1234"
    if "ha" in active:
        assert deployment["spec"]["replicas"] == 2
        assert any(a.startswith("--peering=") for a in container["args"])
    if "kind" in active:
        assert container["imagePullPolicy"] == "Never"
