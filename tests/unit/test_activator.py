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
    metrics = activator.ActivatorMetrics("ml", "chat")
    act = activator.Activator(f"http://127.0.0.1:{up_port}", metrics, hold_timeout_s=30.0)
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
            out["held"] = generate_latest(metrics.registry).decode()
            out["served_while_held"] = upstream.served
            await asyncio.sleep(1.0)
            upstream.ready.set()
            response = await first
            out["status"] = response.status
            out["body"] = await response.text()
            second = await client.post(f"http://127.0.0.1:{port}/v1/completions", data=b"x")
            out["second"] = second.status
            out["after"] = generate_latest(metrics.registry).decode()
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
    rate_q, pending_q, cold_q = observe.gateway_queries("ml", "chat", "1m")
    assert observe.GATEWAY_REQUESTS in rate_q and 'inference_service="chat"' in rate_q
    assert observe.GATEWAY_PENDING in pending_q and observe.GATEWAY_COLD_START in cold_q
    text = generate_latest(activator.ActivatorMetrics("ml", "chat").registry).decode()
    for name in (observe.GATEWAY_REQUESTS, observe.GATEWAY_PENDING, observe.GATEWAY_COLD_START):
        assert f'{name}{{inference_namespace="ml",inference_service="chat"}}' in text


def test_a_service_at_zero_with_requests_at_the_activator_is_not_missing():
    from placement import autoscale

    engines = autoscale.Observation(requests_per_second=None)  # no engine series: zero replicas
    gateway = observe.GatewaySignals(requests_per_second=0.05, pending=1.0)
    obs = observe.with_gateway(engines, gateway)
    assert not obs.missing and obs.requests_per_second == pytest.approx(0.05) and obs.waiting == 1.0
    # Without an activator series the observation is untouched (missing stays missing: hold).
    assert observe.with_gateway(engines, observe.GatewaySignals()).missing
