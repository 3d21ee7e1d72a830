"""chipfit.activator: holds requests while the upstream has no ready replica, forwards once it has, and
reports the demand and the cold start on its metrics (the upstream here is a small aiohttp server that
turns ready when the test says; the e2e test runs it in front of real vLLM engines)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest

from chipfit import activator, observe


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Upstream:
    """/health is 503 until `ready` is set; /v1/completions echoes the body, streamed in two chunks."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.served = 0

    def app(self) -> web.Application:
        async def health(_: web.Request) -> web.Response:
            return web.Response(status=200 if self.ready.is_set() else 503)

        async def completions(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.served += 1
            response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: " + body + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/v1/completions", completions)
        return app


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported:\n{text}")


async def _scenario() -> dict[str, Any]:
    upstream = Upstream()
    up_runner = web.AppRunner(upstream.app())
    await up_runner.setup()
    up_port = _port()
    await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
    registry = activator.ActivatorMetrics()
    metrics = registry.service("ml", "chat")
    # The hold bound also bounds the test: the last request stays held until it, and cleanup waits for it.
    act = activator.Activator(f"http://127.0.0.1:{up_port}", metrics, hold_timeout_s=10.0)
    runner = web.AppRunner(activator.app(act))
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as client:
            first = asyncio.create_task(
                client.post(f"http://127.0.0.1:{port}/v1/completions", data=b'{"prompt": "hi"}')
            )
            # Held while the upstream is not ready: counted and pending, nothing served.
            for _ in range(100):
                if metrics.pending._value.get() == 1:
                    break
                await asyncio.sleep(0.05)
            out["held"] = generate_latest(registry.registry).decode()
            out["served_while_held"] = upstream.served
            await asyncio.sleep(1.0)
            upstream.ready.set()
            response = await first
            out["status"] = response.status
            out["body"] = await response.text()
            second = await client.post(f"http://127.0.0.1:{port}/v1/completions", data=b"x")
            out["second"] = second.status
            out["after"] = generate_latest(registry.registry).decode()
            out["served"] = upstream.served
            # The upstream goes away (scaled to zero): the next request is held, not failed.
            upstream.ready.clear()
            await up_runner.cleanup()
            third = asyncio.create_task(client.post(f"http://127.0.0.1:{port}/v1/completions", data=b"y"))
            for _ in range(100):
                if metrics.pending._value.get() == 1:
                    break
                await asyncio.sleep(0.05)
            out["held_again"] = metrics.pending._value.get()
            third.cancel()
    finally:
        await runner.cleanup()
        await up_runner.cleanup()
    return out


def test_holds_until_ready_then_forwards_and_reports_the_cold_start():
    out = asyncio.run(_scenario())
    assert _metric(out["held"], "chipfit_activator_pending_requests") == 1.0
    assert _metric(out["held"], "chipfit_activator_requests_total") == 1.0
    assert out["served_while_held"] == 0
    assert out["status"] == 200 and '"prompt": "hi"' in out["body"] and "[DONE]" in out["body"]
    assert out["second"] == 200 and out["served"] == 2
    assert _metric(out["after"], "chipfit_activator_pending_requests") == 0.0
    assert _metric(out["after"], "chipfit_activator_requests_total") == 2.0
    # The held request waited at least the second the upstream took to turn ready.
    cold = _metric(out["after"], "chipfit_activator_last_cold_start_seconds")
    assert cold >= 1.0
    assert _metric(out["after"], "chipfit_activator_cold_start_seconds_count") == 1.0
    assert out["held_again"] == 1


def test_the_autoscaler_reads_the_activators_series_as_demand():
    """The names the activator exports are the names observe queries (one place each)."""
    rate_q, pending_q, cold_q, up_q = observe.gateway_queries("ml", "chat", "1m")
    assert observe.GATEWAY_REQUESTS in rate_q and 'inference_service="chat"' in rate_q
    assert observe.GATEWAY_PENDING in pending_q and observe.GATEWAY_COLD_START in cold_q
    assert observe.GATEWAY_SERVICES in up_q
    registry = activator.ActivatorMetrics()
    registry.service("ml", "chat")
    text = generate_latest(registry.registry).decode()
    for name in (observe.GATEWAY_REQUESTS, observe.GATEWAY_PENDING, observe.GATEWAY_COLD_START):
        assert f'{name}{{inference_namespace="ml",inference_service="chat"}}' in text
    assert f"{observe.GATEWAY_SERVICES} 1.0" in text


def test_a_service_at_zero_with_requests_at_the_activator_is_not_missing():
    from placement import autoscale

    engines = autoscale.Observation(requests_per_second=None)  # no engine series: zero replicas
    gateway = observe.GatewaySignals(requests_per_second=0.05, pending=1.0)
    obs = observe.with_gateway(engines, gateway)
    assert not obs.missing and obs.requests_per_second == pytest.approx(0.05) and obs.waiting == 1.0
    # Without an activator series the observation is untouched (missing stays missing: hold).
    assert observe.with_gateway(engines, observe.GatewaySignals()).missing


class Upstreams:
    """One server standing in for several services' Services: /<prefix>/health is 503 until the prefix is
    marked ready; /<prefix>/v1/completions answers with the prefix, the path and the query it got."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.served: list[str] = []

    def app(self) -> web.Application:
        async def health(request: web.Request) -> web.Response:
            return web.Response(status=200 if request.match_info["prefix"] in self.ready else 503)

        async def completions(request: web.Request) -> web.Response:
            prefix = request.match_info["prefix"]
            self.served.append(prefix)
            return web.Response(text=f"{prefix} {request.rel_url.path_qs} {await request.text()}")

        app = web.Application()
        app.router.add_get("/{prefix}/health", health)
        app.router.add_post("/{prefix}/v1/completions", completions)
        return app


def _metric_of(text: str, name: str, namespace: str, service: str) -> float:
    head = f'{name}{{inference_namespace="{namespace}",inference_service="{service}"}} '
    for line in text.splitlines():
        if line.startswith(head):
            return float(line.split()[-1])
    raise AssertionError(f"{head.strip()} not exported:\n{text}")


async def _shared_scenario() -> dict[str, Any]:
    upstreams = Upstreams()
    up_runner = web.AppRunner(upstreams.app())
    await up_runner.setup()
    up_port = _port()
    await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
    metrics = activator.ActivatorMetrics()
    # Each service's "Service" is a prefix on one server: {namespace}-{service} names it.
    router = activator.Router(
        f"http://127.0.0.1:{up_port}/{{namespace}}-{{service}}", metrics, hold_timeout_s=30.0, max_services=2
    )
    runner = web.AppRunner(activator.router_app(router))
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    upstreams.ready.add("ml-code")
    try:
        async with aiohttp.ClientSession() as client:
            # ml/chat is at zero: its request is held; ml/code is up: its request passes meanwhile.
            held = asyncio.create_task(client.post(f"{base}/ml/chat/v1/completions?n=1", data=b"c"))
            for _ in range(100):
                chat_state = router.services.get(("ml", "chat"))
                if chat_state is not None and chat_state.metrics.pending._value.get() == 1:
                    break
                await asyncio.sleep(0.05)
            code = await client.post(f"{base}/ml/code/v1/completions", data=b"k")
            out["code"] = (code.status, await code.text())
            out["held"] = generate_latest(metrics.registry).decode()
            out["served_while_held"] = list(upstreams.served)
            upstreams.ready.add("ml-chat")
            chat = await held
            out["chat"] = (chat.status, await chat.text())
            out["after"] = generate_latest(metrics.registry).decode()
            bad = await client.post(f"{base}/v1/completions", data=b"x")
            out["bad"] = (bad.status, await bad.text())
            full = await client.post(f"{base}/ml/third/v1/completions", data=b"x")
            out["full"] = (full.status, await full.text())
            health = await client.get(f"{base}/healthz")
            out["health"] = health.status
    finally:
        await runner.cleanup()
        await up_runner.cleanup()
    return out


def test_one_shared_activator_routes_by_path_and_holds_each_service_apart():
    out = asyncio.run(_shared_scenario())
    pending = f"{activator.PREFIX}_pending_requests"
    requests = f"{activator.PREFIX}_requests_total"
    # The service that was up answered while the other's request was held; each upstream got its own.
    assert out["code"] == (200, "ml-code /ml-code/v1/completions k")
    assert out["served_while_held"] == ["ml-code"]
    assert _metric_of(out["held"], pending, "ml", "chat") == 1.0
    assert _metric_of(out["held"], pending, "ml", "code") == 0.0
    # The held one is forwarded once its upstream is ready, path and query kept, prefix stripped.
    assert out["chat"] == (200, "ml-chat /ml-chat/v1/completions?n=1 c")
    assert _metric_of(out["after"], requests, "ml", "chat") == 1.0
    assert _metric_of(out["after"], requests, "ml", "code") == 1.0
    assert _metric_of(out["after"], pending, "ml", "chat") == 0.0
    # A cold start only for the service that was at zero.
    assert _metric_of(out["after"], f"{activator.PREFIX}_cold_start_seconds_count", "ml", "chat") == 1.0
    assert _metric_of(out["after"], f"{activator.PREFIX}_cold_start_seconds_count", "ml", "code") == 0.0
    # A path that names no service: 404 at once, saying the expected form; past max_services: 503.
    assert out["bad"][0] == 404 and "/<namespace>/<inference service name>/" in out["bad"][1]
    assert out["full"][0] == 503 and "--max-services" in out["full"][1]
    assert out["health"] == 200


def test_the_shared_upstream_is_the_service_the_operator_renders():
    """The default template names the Service chipfit.render makes for the service (one naming rule)."""
    from chipfit import render
    from chipfit.api import v1alpha1

    router = activator.Router(activator.DEFAULT_UPSTREAM_TEMPLATE, activator.ActivatorMetrics())
    for name in ("chat", "llama.chat"):  # a dotted name is not a DNS label: render rewrites it
        service = v1alpha1.InferenceService.model_validate(
            {
                "apiVersion": "chipfit.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": name, "namespace": "ml"},
                "spec": {
                    "model": {"id": "llama-3.1-8b"},
                    "slo": {"ttftP99Ms": 500, "itlP99Ms": 50},
                    "workload": {
                        "requestsPerSecond": 1,
                        "promptTokens": {"mean": 512},
                        "outputTokens": {"mean": 128},
                    },
                },
            }
        )
        assert router.upstream("ml", name) == render.service_url(service, "aggregated")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "http://x"], "--upstream: needs --service"),
        (["--upstream-template", "ftp://{service}"], "--upstream-template: must start with http"),
        (["--upstream-template", "http://{svc}.{namespace}"], "unknown placeholder(s) ['svc']"),
        (["--max-services", "0"], "--max-services: must be >= 1"),
        (["--service", "ml/chat"], "--upstream: required with --service"),
        (["--service", "ml/chat", "--upstream", "http://x", "--max-services", "3"], "for shared mode"),
        (["--listen", "8080"], "--listen: expected HOST:PORT"),
    ],
)
def test_bad_activator_flags_fail_fast_naming_the_flag(args, message, capsys):
    from chipfit import cli

    assert cli.main(["activator", *args]) == 2
    assert message in capsys.readouterr().err


def test_an_activator_up_without_a_services_series_reads_as_zero_requests_not_missing():
    """A shared activator makes a service's series on its first request: before it, with the activator
    scraped (its unlabelled services gauge present), the service had no request: rate 0. Without any
    activator series the data is missing (the autoscaler holds)."""
    queries = observe.gateway_queries("ml", "chat", "1m")

    def activator_up(promql: str) -> list[dict[str, Any]]:
        return [{"metric": {}, "value": [0, "3"]}] if promql == queries[3] else []

    up = observe.read_gateway(activator_up, queries)
    assert (up.requests_per_second, up.pending) == (0.0, 0.0)
    from placement import autoscale

    assert not observe.with_gateway(autoscale.Observation(requests_per_second=None), up).missing
    nothing = observe.read_gateway(lambda promql: [], queries)
    assert (nothing.requests_per_second, nothing.pending) == (None, None)
