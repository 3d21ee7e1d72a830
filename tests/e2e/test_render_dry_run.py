"""What `chipfit render` prints is accepted by the real API server (server-side dry run, strict fields)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from .conftest import REPO_DIR, Cluster

pytestmark = pytest.mark.e2e

CHIPFIT = pathlib.Path(sys.executable).parent / "chipfit"


def test_rendered_examples_pass_the_api_servers_dry_run(cluster: Cluster) -> None:
    result = subprocess.run(
        [str(CHIPFIT), "render", "-f", str(REPO_DIR / "examples"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    kinds = {item["kind"] for item in listed["items"]}
    assert {"Deployment", "Service"} <= kinds
    namespaces = sorted({item["metadata"]["namespace"] for item in listed["items"]})
    for namespace in namespaces:
        cluster.kubectl("create", "namespace", namespace, check=False)
    # Server-side: admission, defaulting and schema validation of every object, strict about unknown fields.
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=result.stdout, check=False
    )
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(listed["items"])
