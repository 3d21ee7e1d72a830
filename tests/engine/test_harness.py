"""The engine harness stops exactly what it started, whatever the engine does, and reports failed starts."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time

import pytest

from engine import harness

# A stand-in executable for the process-group tests below: a parent that ignores SIGTERM with two
# children (one also ignoring it), as an engine's API server with its EngineCore and helpers would look.
STUBBORN_TREE = """#!/bin/sh
trap '' TERM
sh -c "trap '' TERM; sleep 600" &
sleep 600 &
wait
"""


def _fake_install(tmp_path: pathlib.Path, script: str) -> harness.EngineInstall:
    exe = tmp_path / "fake-vllm"
    exe.write_text(script)
    exe.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "chipfit-model.json").write_text('{"served_name": "fake"}')
    return harness.EngineInstall(home=tmp_path, python=exe, vllm=exe, model=model)


def test_stop_kills_the_whole_group_even_when_it_ignores_sigterm(tmp_path: pathlib.Path) -> None:
    install = _fake_install(tmp_path, STUBBORN_TREE)
    engine = harness.start(install, harness.EngineSpec(name="stubborn"), tmp_path / "logs")
    deadline = time.monotonic() + 10
    while len(engine.group_pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = engine.group_pids()
    assert len(members) >= 3, members
    harness.stop(engine, grace_s=1.0)
    assert engine.group_pids() == []
    assert not [pid for pid in members if harness._group_members(pid)]


def test_engine_that_exits_is_reported_with_its_log_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    script = "#!/bin/sh\necho 'error: unrecognized arguments: --bogus' >&2\nexit 2\n"
    install = _fake_install(tmp_path, script)
    spec = harness.EngineSpec(name="broken", extra_args=("--bogus",))
    expected = r"(?s)broken exited with 2.*--bogus.*unrecognized arguments"
    with (
        pytest.raises(harness.EngineError, match=expected),
        harness.running(install, [spec], tmp_path / "logs", timeout_s=30),
    ):
        pytest.fail("a broken engine was reported ready")


def test_engines_die_with_the_process_that_started_them(tmp_path: pathlib.Path) -> None:
    """PR_SET_PDEATHSIG: an engine whose test process is killed gets SIGTERM (no orphan engines)."""
    install = _fake_install(tmp_path, "#!/bin/sh\nexec sleep 600\n")
    starter = (
        "import pathlib, sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from engine import harness\n"
        "home, exe, model = (pathlib.Path(a) for a in sys.argv[2:5])\n"
        "install = harness.EngineInstall(home=home, python=exe, vllm=exe, model=model)\n"
        "e = harness.start(install, harness.EngineSpec(), home)\n"
        "print(e.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    tests_dir = str(pathlib.Path(__file__).resolve().parents[1])
    parent = subprocess.Popen(
        ["python3", "-c", starter, tests_dir, str(tmp_path), str(install.vllm), str(install.model)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    engine_pid = int(parent.stdout.readline())
    assert harness._group_members(engine_pid) == [engine_pid]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while harness._group_members(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness._group_members(engine_pid) == []


def test_free_port_is_bindable() -> None:
    import socket

    port = harness.free_port()
    with socket.socket() as sock:
        sock.bind((harness.LOOPBACK, port))
