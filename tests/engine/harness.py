"""Real vLLM engine processes for tests: find the engine e2e/install-engine.sh installed, start N engines on
loopback with given flags, wait until they serve, and stop exactly what was started.

Every engine runs in its own session (process group), so a stop reaches its API server, its EngineCore and
any helper they spawned, and nothing else. A stop is SIGTERM to the group, then SIGKILL after a grace
period; it fails if any process of the group survives. The engines also die with the test process
(PR_SET_PDEATHSIG), so even a killed pytest leaves no engine behind.

The engine environment is separate from the project's .venv (torch and vLLM are not its dependencies):
these functions only run its executables.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

REPO_DIR: Final = pathlib.Path(__file__).resolve().parents[2]
INSTALL_SCRIPT: Final = REPO_DIR / "e2e" / "install-engine.sh"
LOOPBACK: Final = "127.0.0.1"
# Start-up on this 2-core machine: 40-75 s with --enforce-eager, more when other work shares the cores.
# This bounds a broken engine; it is not a timing assertion.
READY_TIMEOUT_S: Final = 420.0
POLL_INTERVAL_S: Final = 0.5
STOP_GRACE_S: Final = 30.0
HTTP_TIMEOUT_S: Final = 10.0
# CPU KV cache per engine in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE; its default takes a share of all memory).
# 1 GiB holds ~500k tokens of the tiny model (2 KiB/token); an engine is then ~2.4 GB resident.
DEFAULT_KV_CACHE_GIB: Final = 1
# Flags every test engine gets unless a test says otherwise: no graph compilation (start-up ~2x faster).
FAST_START_FLAGS: Final = ("--enforce-eager",)
LOG_TAIL_LINES: Final = 30
# prctl(2) option: signal sent to this process when its parent thread dies.
_PR_SET_PDEATHSIG: Final = 1


class EngineError(RuntimeError):
    """An engine did not install, start, serve or stop as asked; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class EngineInstall:
    """Where e2e/install-engine.sh put the engine and the tiny model."""

    home: pathlib.Path
    python: pathlib.Path
    vllm: pathlib.Path
    model: pathlib.Path
    # SGLang's argument parser (a venv on top of the engine's; no SGLang engine runs here).
    sglang_python: pathlib.Path | None = None

    @property
    def served_name(self) -> str:
        """The model name the generator recorded (clients send it as `model`)."""
        meta = json.loads((self.model / "chipfit-model.json").read_text())
        return str(meta["served_name"])


def find_install(install: bool = False) -> EngineInstall:
    """The installed engine (`install-engine.sh --check`), or install it first when `install` is set.

    Raises EngineError with the installer's message when there is none.
    """
    args = ["bash", str(INSTALL_SCRIPT)] + ([] if install else ["--check"])
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=3600)
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise EngineError(f"{' '.join(args[1:])} exited {result.returncode}: {tail}")
    values: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        values[key] = shlex.split(value)[0] if value else ""
    return EngineInstall(
        home=pathlib.Path(values["CHIPFIT_ENGINE_HOME"]),
        python=pathlib.Path(values["CHIPFIT_ENGINE_PYTHON"]),
        vllm=pathlib.Path(values["CHIPFIT_ENGINE_VLLM"]),
        model=pathlib.Path(values["CHIPFIT_ENGINE_MODEL"]),
        sglang_python=pathlib.Path(values["CHIPFIT_SGLANG_PYTHON"]),
    )


def free_port() -> int:
    """A TCP port free on loopback right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine to start: `argv` after the executable, with {model}, {port}, {host} filled in.

    The default is `vllm serve {model} --host {host} --port {port} --served-model-name <name>` plus
    FAST_START_FLAGS; `args` replaces everything after `serve` when given (the e2e test passes the rendered
    command line), `extra_args` is appended either way.
    """

    args: tuple[str, ...] | None = None
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kv_cache_gib: int = DEFAULT_KV_CACHE_GIB
    name: str = "engine"


@dataclasses.dataclass
class EngineProcess:
    """One running engine: its process group, address and log."""

    spec: EngineSpec
    argv: tuple[str, ...]
    process: subprocess.Popen[bytes]
    port: int
    log_path: pathlib.Path
    served_name: str

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        """GET a path: (status, body); status 0 when the server does not answer."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=HTTP_TIMEOUT_S) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def metrics_text(self) -> str:
        """The Prometheus text the engine serves on /metrics."""
        status, body = self.get("/metrics")
        if status != 200:
            raise EngineError(f"{self.spec.name}: GET /metrics -> {status}")
        return body

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def group_pids(self) -> list[int]:
        """Live processes of the engine's process group (its session), zombies excluded."""
        return _group_members(self.pid)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state is the first, pgrp the third.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _die_with_parent() -> None:
    """In the child before exec: a new session, and SIGTERM when the test process goes away."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def engine_argv(install: EngineInstall, spec: EngineSpec, port: int) -> tuple[str, ...]:
    """The full command line of one engine."""
    fill = {"model": str(install.model), "port": str(port), "host": LOOPBACK}
    if spec.args is None:
        tail: tuple[str, ...] = (
            "{model}",
            "--host={host}",
            "--port={port}",
            f"--served-model-name={install.served_name}",
            *FAST_START_FLAGS,
        )
    else:
        tail = spec.args
    return (str(install.vllm), "serve", *(a.format(**fill) for a in (*tail, *spec.extra_args)))


def start(install: EngineInstall, spec: EngineSpec, log_dir: pathlib.Path) -> EngineProcess:
    """Start one engine in its own process group; returns at once (see wait_ready)."""
    port = free_port()
    argv = engine_argv(install, spec, port)
    served = _flag_value(argv, "--served-model-name") or str(install.model)
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": str(spec.kv_cache_gib),
        # Nothing is fetched at run time: the model is local, and usage stats stay home.
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        **spec.env,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_dir,
            preexec_fn=_die_with_parent,  # only setsid and prctl: no locks taken
        )
    return EngineProcess(spec, argv, process, port, log_path, served)


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
    return None


def wait_ready(engines: Sequence[EngineProcess], timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until every engine answers /health 200 and lists its model on /v1/models; EngineError otherwise."""
    deadline = time.monotonic() + timeout_s
    pending = list(engines)
    while pending:
        for engine in list(pending):
            code = engine.process.poll()
            if code is not None:
                raise EngineError(
                    f"{engine.spec.name} exited with {code} before it was ready; "
                    f"command: {shlex.join(engine.argv)}\n{engine.log_tail()}"
                )
            if engine.get("/health")[0] != 200:
                continue
            status, body = engine.get("/v1/models")
            if status == 200 and engine.served_name in {m["id"] for m in json.loads(body)["data"]}:
                pending.remove(engine)
        if pending and time.monotonic() > deadline:
            names = ", ".join(e.spec.name for e in pending)
            raise EngineError(
                f"not ready after {timeout_s:.0f} s: {names}; last log lines:\n{pending[0].log_tail()}"
            )
        if pending:
            time.sleep(POLL_INTERVAL_S)


def stop(engine: EngineProcess, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the engine's process group, SIGKILL what is left after grace_s; EngineError if any survives."""
    pgid = engine.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        engine.process.poll()
        if not _group_members(pgid):
            break
        time.sleep(POLL_INTERVAL_S)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        engine.process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
    if left:
        raise EngineError(f"{engine.spec.name}: processes {left} of group {pgid} survived SIGKILL")


@contextlib.contextmanager
def running(
    install: EngineInstall,
    specs: Sequence[EngineSpec],
    log_dir: pathlib.Path,
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[list[EngineProcess]]:
    """Start every spec's engine, wait until all serve, yield them, stop all of them whatever happens."""
    started: list[EngineProcess] = []
    try:
        for spec in specs:
            started.append(start(install, spec, log_dir))
        wait_ready(started, timeout_s)
        yield started
    finally:
        errors = []
        for engine in started:
            try:
                stop(engine)
            except EngineError as exc:
                errors.append(str(exc))
        if errors:
            raise EngineError("; ".join(errors))
