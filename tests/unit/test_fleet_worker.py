"""The fleet worker keeps going: failed work is retried with exponential back-off (nothing requested is
dropped), a failed solve is a failure to retry, re-plans read kopf's indexes instead of listing, and a
periodic resync is asked for once per interval however many timers tick."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from chipfit import handlers, kube

# Bound on how long a worker test may wait for the worker (it needs milliseconds; the bound only stops a
# broken worker from hanging the suite).
WAIT_BOUND_S = 20.0


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [handlers.retry_delay_s(n, base_s=5.0, cap_s=300.0) for n in range(0, 10)]
    assert delays == [0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert handlers.retry_delay_s(10_000) == handlers.RETRY_MAX_DELAY_S  # no overflow however long it fails


def test_resync_is_due_once_per_interval() -> None:
    assert handlers.resync_due(None, 0.0, interval_s=600.0)
    assert not handlers.resync_due(1000.0, 1100.0, interval_s=600.0)
    assert handlers.resync_due(1000.0, 1300.0, interval_s=600.0)


class NoCluster:
    """A cluster that must not be asked: re-plans read the indexes."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the re-plan called the API server ({name}) instead of reading the indexes")


@dataclasses.dataclass
class RecordingMetrics:
    reconciles: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def observe_reconcile(self, kind: str, seconds: float, outcome: str = "ok") -> None:
        self.reconciles.append((kind, outcome))

    def observe_solve(self, *_: Any, **__: Any) -> None:
        pass


@dataclasses.dataclass
class FlakyFleet(handlers.Fleet):
    """A Fleet whose re-plan fails `failures_left` times (with `error`) before it succeeds."""

    failures_left: int = 0
    error: type[Exception] = ValueError
    attempts: int = 0
    views: list[handlers.FleetView | None] = dataclasses.field(default_factory=list)

    def replan(self, view: handlers.FleetView | None = None, *, full: bool = True) -> None:
        self.attempts += 1
        self.views.append(view)
        if self.failures_left > 0:
            self.failures_left -= 1
            if self.error is kube.ApiError:
                raise kube.ApiError("list pools", 503, "unavailable")
            raise self.error("boom")


def _fleet(**kwargs: Any) -> FlakyFleet:
    return FlakyFleet(
        cluster=NoCluster(),  # type: ignore[arg-type]
        metrics=RecordingMetrics(),  # type: ignore[arg-type]
        debounce_s=0.0,
        retry_base_s=0.001,
        **kwargs,
    )


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT_BOUND_S):
        while not predicate():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("error", [ValueError, kube.ApiError, handlers.SolveFailedError])
def test_failed_replans_are_retried_until_one_succeeds(error: type[Exception]) -> None:
    fleet = _fleet(failures_left=3, error=error)

    async def scenario() -> None:
        fleet.start()
        fleet.request_replan("test")
        await _until(lambda: fleet.attempts == 4 and fleet.failures == 0)
        await fleet.stop()

    asyncio.run(scenario())
    assert fleet.attempts == 4  # three failures, then success: the request was never dropped
    assert not fleet.replan_requested


def test_failures_count_up_and_reset_on_success() -> None:
    fleet = _fleet(failures_left=2)
    seen: list[int] = []

    async def scenario() -> None:
        fleet.start()
        fleet.request_replan("test")
        await _until(lambda: fleet.attempts >= 2)
        seen.append(fleet.failures)
        await _until(lambda: fleet.attempts == 3 and fleet.failures == 0)
        await fleet.stop()

    asyncio.run(scenario())
    assert seen[0] >= 1


def test_a_service_request_made_during_a_failure_is_kept() -> None:
    fleet = _fleet(failures_left=1)
    reconciled: list[tuple[str, str]] = []
    fleet.reconcile_one = lambda ns, name, owned=None: reconciled.append((ns, name))  # type: ignore[method-assign]

    async def scenario() -> None:
        fleet.start()
        fleet.request_replan("test")
        fleet.request_service("team", "chat")
        await _until(lambda: reconciled)
        await fleet.stop()

    asyncio.run(scenario())
    assert reconciled == [("team", "chat")] and fleet.attempts == 2


class Store(list[Any]):
    """A kopf index store: the values one key holds."""


def _indexes(**kinds: list[Mapping[str, Any]]) -> dict[str, dict[Any, Store]]:
    names = {
        "services": "inferenceservice_index",
        "pools": "acceleratorpool_index",
        "profiles": "performanceprofile_index",
        "nodes": "node_index",
    }
    out: dict[str, dict[Any, Store]] = {name: {} for name in names.values()}
    for kind, bodies in kinds.items():
        for body in bodies:
            out[names[kind]][(None, body["metadata"]["name"])] = Store([body])
    return out


def test_the_view_is_a_copy_of_the_indexes() -> None:
    pool = {"metadata": {"name": "p"}, "spec": {}}
    node = {"metadata": {"name": "n"}}
    fleet = _fleet(indexes=_indexes(pools=[pool], nodes=[node]))
    view = fleet.view()
    assert view is not None
    assert view.pools == (pool,) and view.nodes == (node,) and view.services == () and view.profiles == ()
    assert fleet.indexes is not None
    fleet.indexes["acceleratorpool_index"].clear()  # the loop keeps updating: the copy does not move
    assert view.pools == (pool,)


def test_the_worker_hands_the_replan_the_indexed_view() -> None:
    pool = {"metadata": {"name": "p"}, "spec": {}}
    fleet = _fleet(indexes=_indexes(pools=[pool]))

    async def scenario() -> None:
        fleet.start()
        fleet.request_replan("test")
        await _until(lambda: fleet.attempts == 1)
        await fleet.stop()

    asyncio.run(scenario())
    (view,) = fleet.views
    assert view is not None and view.pools == (pool,)


def test_a_failed_solve_is_a_failure_the_worker_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = handlers.Fleet(cluster=NoCluster(), metrics=RecordingMetrics())  # type: ignore[arg-type]
    monkeypatch.setattr(fleet, "_solve", lambda *_: None)
    view = handlers.FleetView(services=(), pools=(), profiles=(), nodes=())
    with pytest.raises(handlers.SolveFailedError):
        fleet.replan(view)  # reads only the view: NoCluster would fail on any API call


def test_a_quiet_fleet_is_replanned_periodically() -> None:
    fleet = _fleet(resync_interval_s=0.01)

    async def scenario() -> None:
        fleet.start()  # nobody asks for anything
        await _until(lambda: fleet.attempts >= 1)
        await fleet.stop()

    asyncio.run(scenario())
    assert fleet.attempts >= 1


def test_the_periodic_resync_asks_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet(resync_interval_s=handlers.RESYNC_INTERVAL_S)
    now = [10_000.0]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: now[0])
    assert fleet.request_resync() and fleet.replan_requested
    fleet.replan_requested = False
    fleet.last_replan_s = now[0]
    now[0] += 60.0
    assert not fleet.request_resync() and not fleet.replan_requested  # a re-plan just happened
    now[0] += handlers.RESYNC_INTERVAL_S
    assert fleet.request_resync()
