"""Fixtures of the engine tier: real vLLM CPU engines serving the tiny generated model (see e2e/README.md).

`engine_install` finds what e2e/install-engine.sh installed (tests/run.sh runs it first). Without it the
engine tests fail on CI (CI=true) and are skipped locally with the reason, as the e2e tier does.
`tiny_engine` is one engine shared by the whole session; `start_engines` starts engines with a test's own
flags and stops them when the test ends. At most two engines run at once (the machine has 2 cores).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import pytest

from chipfit import handlers, planning, validation
from chipfit.commands import render as render_command
from engine import harness

REPO_DIR = pathlib.Path(__file__).resolve().parents[2]

# More than two engines on 2 cores starve each other (and everything else on the machine).
MAX_ENGINES_AT_ONCE = 2


def on_ci() -> bool:
    """True on CI, where a missing engine is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    if on_ci():
        pytest.fail(f"vLLM engine unavailable on CI: {reason}", pytrace=False)
    pytest.skip(f"vLLM engine unavailable: {reason} (install it: bash e2e/install-engine.sh)")


@pytest.fixture(scope="session")
def engine_install() -> harness.EngineInstall:
    """The engine and model e2e/install-engine.sh installed."""
    try:
        return harness.find_install()
    except harness.EngineError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def engine_log_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def tiny_engine(
    engine_install: harness.EngineInstall, engine_log_dir: pathlib.Path
) -> Iterator[harness.EngineProcess]:
    """One engine with the default flags, shared by the session's tests that only need to talk to one."""
    spec = harness.EngineSpec(name="tiny", extra_args=("--max-model-len=4096",))
    with harness.running(engine_install, [spec], engine_log_dir) as (engine,):
        yield engine


@pytest.fixture
def start_engines(
    engine_install: harness.EngineInstall, engine_log_dir: pathlib.Path
) -> Iterator[Callable[[Sequence[harness.EngineSpec]], list[harness.EngineProcess]]]:
    """start_engines([EngineSpec(...), ...]) -> ready engines; all stopped when the test ends."""
    stack: list[object] = []

    def start(specs: Sequence[harness.EngineSpec]) -> list[harness.EngineProcess]:
        if len(specs) > MAX_ENGINES_AT_ONCE:
            raise ValueError(f"at most {MAX_ENGINES_AT_ONCE} engines at once here, not {len(specs)}")
        context = harness.running(engine_install, specs, engine_log_dir)
        engines = context.__enter__()
        stack.append(context)
        return engines

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def rendered_examples() -> list[tuple[str, dict[str, Any]]]:
    """(service id, object) of all `chipfit render -f examples/` prints (the operator's plan and render)."""
    loaded = validation.load_and_validate([str(REPO_DIR / "examples")])
    assert not loaded.problems, loaded.problems
    solved = handlers.plan_outcomes(
        loaded.services, loaded.pools, loaded.profiles, planning.Planner(handlers.solve_options())
    )
    objects, _, _ = render_command.rendered_objects(loaded, solved)
    return objects
