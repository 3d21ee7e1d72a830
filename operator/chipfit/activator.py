"""The way back from zero: an HTTP proxy in front of a service that holds requests while it has no ready
replica, and tells the autoscaler through Prometheus that demand is waiting.

This is chipfit's own small activator because the existing ones cannot run here (docs/autoscaling.md,
"Scale to zero and back"): KEDA's HTTP add-on interceptor needs KEDA's operator and metrics API server,
the add-on's operator and scaler, and forwards to the Service's cluster DNS name; the Gateway API
Inference Extension's endpoint picker needs an Envoy-based gateway. The design is the interceptor's: the
activator is always in the request path; it counts every request (`chipfit_activator_requests_total`),
holds a request while the upstream has no ready replica (`chipfit_activator_pending_requests`), and
forwards it once one is. The operator's autoscaler reads those two series for services that scale to
zero (chipfit.observe.gateway_queries): a request at zero replicas is demand the engines cannot report,
so the service scales up; the time the first request waited is the cold start
(`chipfit_activator_cold_start_seconds`, and status.autoscaling.coldStartSeconds).

Upstream readiness is the Service's own answer: GET <upstream>/health (the engines' readiness path) is 200
once a ready replica sits behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

PREFIX: Final = "chipfit_activator"
# Label names of the service the activator fronts. Not `namespace`/`service`: a kubernetes-pods scrape job
# adds `namespace` (the activator pod's own) and Prometheus would rename a clash to exported_namespace.
NAMESPACE_LABEL: Final = "inference_namespace"
SERVICE_LABEL: Final = "inference_service"
# How long a request waits for a replica before it gets 503: a large model's pod takes minutes to start
# (docs/autoscaling.md). A bound, so a service that cannot come back does not pile up connections forever.
DEFAULT_HOLD_TIMEOUT_S: Final = 600.0
READY_POLL_S: Final = 0.5
HEALTH_TIMEOUT_S: Final = 2.0
# Cold starts from a few seconds (model cached on the node) to several minutes (a 70B from a registry).
COLD_START_BUCKETS: Final = (1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)
# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded; aiohttp sets the framing headers itself.
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip


class ActivatorMetrics:
    """The activator's series, in their own registry (served on the metrics port)."""

    def __init__(self, namespace: str, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = (NAMESPACE_LABEL, SERVICE_LABEL)
        values = (namespace, service)
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests received for the service.", labels, registry=self.registry
        ).labels(*values)
        self.pending = Gauge(
            f"{PREFIX}_pending_requests",
            "Requests held because the service has no ready replica.",
            labels,
            registry=self.registry,
        ).labels(*values)
        self.cold_start = Histogram(
            f"{PREFIX}_cold_start_seconds",
            "Time the first held request waited until a replica was ready (one per scale from zero).",
            labels,
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        ).labels(*values)
        self.last_cold_start = Gauge(
            f"{PREFIX}_last_cold_start_seconds",
            "The last cold start's duration (0 before the first).",
            labels,
            registry=self.registry,
        ).labels(*values)
        self.timeouts = Counter(
            f"{PREFIX}_hold_timeouts",
            "Requests answered 503 because no replica became ready within the hold timeout.",
            labels,
            registry=self.registry,
        ).labels(*values)


@dataclasses.dataclass
class Activator:
    """Holds and forwards requests for one service."""

    upstream: str
    metrics: ActivatorMetrics
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S
    session: aiohttp.ClientSession | None = None
    _ready: bool = False
    _cold_since: float | None = None
    last_cold_start_s: float | None = None

    async def upstream_ready(self) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(
                self.upstream + "/health", timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def wait_ready(self) -> bool:
        """True once the upstream has a ready replica; False after the hold timeout."""
        if self._ready:
            return True
        now = time.monotonic()
        if self._cold_since is None:
            self._cold_since = now
        deadline = now + self.hold_timeout_s
        while True:
            if await self.upstream_ready():
                if not self._ready and self._cold_since is not None:
                    waited = time.monotonic() - self._cold_since
                    self.metrics.cold_start.observe(waited)
                    self.metrics.last_cold_start.set(waited)
                    self.last_cold_start_s = waited
                    logger.info("upstream ready after a cold start of %.1f s", waited)
                self._ready = True
                self._cold_since = None
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(READY_POLL_S)

    def upstream_failed(self) -> None:
        """The upstream refused a connection: it may have scaled to zero; hold the next requests."""
        self._ready = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.metrics.requests.inc()
        for attempt in range(2):
            if not self._ready:
                self.metrics.pending.inc()
                try:
                    ready = await self.wait_ready()
                finally:
                    self.metrics.pending.dec()
                if not ready:
                    self.metrics.timeouts.inc()
                    return web.Response(
                        status=503,
                        text=f"no ready replica within {self.hold_timeout_s:.0f} s\n",
                        headers={"Retry-After": "30"},
                    )
            try:
                return await self._forward(request)
            except aiohttp.ClientConnectorError as error:
                # Nothing was sent (the connection was refused): the service went back to zero since the
                # last request. Hold this one like the first request of a cold start, once.
                self.upstream_failed()
                if attempt == 1:
                    return web.Response(status=502, text=f"upstream: {error}\n")
            except (aiohttp.ClientConnectionError, OSError) as error:
                self.upstream_failed()
                return web.Response(status=502, text=f"upstream: {type(error).__name__}: {error}\n")
        raise AssertionError("unreachable")

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self.session.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=body if body else None,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=HEALTH_TIMEOUT_S),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            # Streamed chunk by chunk: server-sent events (streaming completions) pass through as they come.
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


def app(activator: Activator) -> web.Application:
    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_route("*", "/{tail:.*}", activator.handle)

    async def session(_: web.Application) -> Any:
        activator.session = aiohttp.ClientSession(auto_decompress=False)
        yield
        await activator.session.close()

    application.cleanup_ctx.append(session)
    return application


def metrics_app(metrics: ActivatorMetrics) -> web.Application:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def serve(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    application = web.Application()
    application.router.add_get("/metrics", serve)
    return application


async def serve(
    namespace: str,
    service: str,
    upstream: str,
    listen: tuple[str, int],
    metrics_listen: tuple[str, int],
    hold_timeout_s: float,
    stop: asyncio.Event,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Run the proxy and its metrics endpoint until `stop` is set."""
    metrics = ActivatorMetrics(namespace, service)
    activator = Activator(upstream.rstrip("/"), metrics, hold_timeout_s)
    runners = []
    try:
        for application, (host, port) in ((app(activator), listen), (metrics_app(metrics), metrics_listen)):
            runner = web.AppRunner(application, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            runners.append(runner)
        logger.info("activator for %s/%s on %s:%d -> %s", namespace, service, *listen, upstream)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
