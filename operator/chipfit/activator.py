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

Two modes: one activator per service (`--service NS/NAME --upstream URL`: every path is forwarded), or one
shared activator for every service (what the chart deploys): a request to `/<namespace>/<name>/<path>` is
forwarded to `<path>` at the upstream the template names (by default the service's own Service,
`http://{service}.{namespace}.svc:80`), each service with its own hold state and labelled series.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import string
import time
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
# The shared activator's default upstream: the service's Service (chipfit.render.service_url), port 80.
DEFAULT_UPSTREAM_TEMPLATE: Final = "http://{service}.{namespace}.svc:80"
UPSTREAM_FIELDS: Final = frozenset({"namespace", "name", "service"})
# Services a shared activator tracks at most (each holds a little state and four labelled series): a bound
# on memory when clients send arbitrary names.
DEFAULT_MAX_SERVICES: Final = 1000
# The shared activator's own readiness path (a route needs two segments, so it never shadows one).
HEALTH_PATH: Final = "/healthz"
# Kubernetes names: a namespace is a DNS-1123 label, an InferenceService name a DNS-1123 subdomain.
NAMESPACE_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
NAME_RE: Final = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length"}
)  # fmt: skip


class ActivatorMetrics:
    """The activator's series, in their own registry (served on the metrics port), one child per service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = (NAMESPACE_LABEL, SERVICE_LABEL)
        self._requests = Counter(
            f"{PREFIX}_requests", "Requests received for the service.", labels, registry=self.registry
        )
        self._pending = Gauge(
            f"{PREFIX}_pending_requests",
            "Requests held because the service has no ready replica.",
            labels,
            registry=self.registry,
        )
        self._cold_start = Histogram(
            f"{PREFIX}_cold_start_seconds",
            "Time the first held request waited until a replica was ready (one per scale from zero).",
            labels,
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self._last_cold_start = Gauge(
            f"{PREFIX}_last_cold_start_seconds",
            "The last cold start's duration (0 before the first).",
            labels,
            registry=self.registry,
        )
        self.services = Gauge(
            f"{PREFIX}_services",
            "Services this activator tracks (a shared one adds each on its first request); its presence "
            "tells the autoscaler an activator is up.",
            registry=self.registry,
        )
        self._timeouts = Counter(
            f"{PREFIX}_hold_timeouts",
            "Requests answered 503 because no replica became ready within the hold timeout.",
            labels,
            registry=self.registry,
        )

    def service(self, namespace: str, name: str) -> ServiceMetrics:
        """The series of one service (created at zero, so the autoscaler sees a zero rate, not nothing)."""
        values = (namespace, name)
        self.services.inc()
        return ServiceMetrics(
            requests=self._requests.labels(*values),
            pending=self._pending.labels(*values),
            cold_start=self._cold_start.labels(*values),
            last_cold_start=self._last_cold_start.labels(*values),
            timeouts=self._timeouts.labels(*values),
        )


@dataclasses.dataclass(frozen=True)
class ServiceMetrics:
    """One service's children of the activator's series."""

    requests: Any
    pending: Any
    cold_start: Any
    last_cold_start: Any
    timeouts: Any


@dataclasses.dataclass
class Activator:
    """Holds and forwards requests for one service."""

    upstream: str
    metrics: ServiceMetrics
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S
    session: aiohttp.ClientSession | None = None
    _ready: bool = False
    _cold_since: float | None = None
    _held: bool = False
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
                # A cold start only when a request was really held (the first look found no replica): the
                # first request to a service that is up is no cold start.
                if not self._ready and self._cold_since is not None and self._held:
                    waited = time.monotonic() - self._cold_since
                    self.metrics.cold_start.observe(waited)
                    self.metrics.last_cold_start.set(waited)
                    self.last_cold_start_s = waited
                    logger.info("upstream ready after a cold start of %.1f s", waited)
                self._ready = True
                self._cold_since = None
                self._held = False
                return True
            self._held = True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(READY_POLL_S)

    def upstream_failed(self) -> None:
        """The upstream refused a connection: it may have scaled to zero; hold the next requests."""
        self._ready = False

    async def handle(self, request: web.Request, path_qs: str | None = None) -> web.StreamResponse:
        """Hold (when no replica is ready) and forward `path_qs` (default: the request's own path)."""
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
                return await self._forward(request, request.rel_url.path_qs if path_qs is None else path_qs)
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

    async def _forward(self, request: web.Request, path_qs: str) -> web.StreamResponse:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self.session.request(
            request.method,
            self.upstream + path_qs,
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


def upstream_template_error(template: str) -> str | None:
    """Why an upstream template is unusable (None: usable); placeholders {namespace}, {name}, {service}."""
    if not template.startswith(("http://", "https://")):
        return f"must start with http:// or https://, got {template!r}"
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as error:
        return f"{template!r}: {error}"
    unknown = fields - UPSTREAM_FIELDS
    if unknown:
        return f"unknown placeholder(s) {sorted(unknown)} (known: {sorted(UPSTREAM_FIELDS)})"
    return None


def service_host_name(name: str) -> str:
    """The Service the operator renders for an InferenceService (chipfit.render: one naming rule)."""
    from chipfit import render

    return render.role_service_name(name, "aggregated")


@dataclasses.dataclass
class Router:
    """One activator for many services: `/<namespace>/<name>/<path>` goes to that service's Activator."""

    upstream_template: str
    metrics: ActivatorMetrics
    hold_timeout_s: float = DEFAULT_HOLD_TIMEOUT_S
    max_services: int = DEFAULT_MAX_SERVICES
    session: aiohttp.ClientSession | None = None
    services: dict[tuple[str, str], Activator] = dataclasses.field(default_factory=dict)

    def upstream(self, namespace: str, name: str) -> str:
        url = self.upstream_template.format(namespace=namespace, name=name, service=service_host_name(name))
        return url.rstrip("/")

    def activator(self, namespace: str, name: str) -> Activator | None:
        """The service's activator (made on first use); None when max_services are tracked already."""
        key = (namespace, name)
        found = self.services.get(key)
        if found is None:
            if len(self.services) >= self.max_services:
                return None
            found = Activator(
                self.upstream(namespace, name),
                self.metrics.service(namespace, name),
                self.hold_timeout_s,
                self.session,
            )
            self.services[key] = found
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path == HEALTH_PATH:
            return web.Response(text="ok\n")
        namespace, _, rest = path.lstrip("/").partition("/")
        name, slash, tail = rest.partition("/")
        if not (NAMESPACE_RE.match(namespace) and NAME_RE.match(name) and slash and tail):
            return web.Response(
                status=404,
                text=f"path {path!r}: expected /<namespace>/<inference service name>/<path>, e.g. "
                "/ml/chat/v1/completions (namespace a DNS-1123 label, name a DNS-1123 subdomain)\n",
            )
        activator = self.activator(namespace, name)
        if activator is None:
            return web.Response(
                status=503,
                text=f"{namespace}/{name}: this activator already fronts {self.max_services} services "
                "(--max-services)\n",
                headers={"Retry-After": "30"},
            )
        query = request.rel_url.raw_query_string
        return await activator.handle(request, f"/{tail}" + (f"?{query}" if query else ""))


def router_app(router: Router) -> web.Application:
    """The shared activator's proxy application."""
    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_route("*", "/{tail:.*}", router.handle)

    async def session(_: web.Application) -> Any:
        router.session = aiohttp.ClientSession(auto_decompress=False)
        for activator in router.services.values():
            activator.session = router.session
        yield
        await router.session.close()

    application.cleanup_ctx.append(session)
    return application


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
    service: tuple[str, str] | None,
    upstream: str,
    listen: tuple[str, int],
    metrics_listen: tuple[str, int],
    hold_timeout_s: float,
    stop: asyncio.Event,
    *,
    max_services: int = DEFAULT_MAX_SERVICES,
) -> None:
    """Run the proxy and its metrics endpoint until `stop` is set.

    `service` (namespace, name): one service, every path forwarded to `upstream`; None: shared, routed by
    path, `upstream` a template (see Router)."""
    metrics = ActivatorMetrics()
    if service is not None:
        proxy = app(Activator(upstream.rstrip("/"), metrics.service(*service), hold_timeout_s))
        what = "/".join(service)
    else:
        proxy = router_app(Router(upstream, metrics, hold_timeout_s, max_services))
        what = "every service (/<namespace>/<name>/...)"
    runners = []
    try:
        for application, (host, port) in ((proxy, listen), (metrics_app(metrics), metrics_listen)):
            runner = web.AppRunner(application, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            runners.append(runner)
        logger.info("activator for %s on %s:%d -> %s", what, *listen, upstream)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
