"""`chipfit activator`: hold requests while a service has no ready replica (scale from zero)."""

from __future__ import annotations

import argparse
import sys
from typing import Final

DEFAULT_LISTEN: Final = "0.0.0.0:8080"
DEFAULT_METRICS: Final = "0.0.0.0:9091"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "activator",
        help="proxy in front of services that holds requests while they have no ready replica",
        description="Forward requests to a service's Service; while it has no ready replica, hold them (up "
        "to --hold-timeout) and export the demand on /metrics (chipfit_activator_requests_total, "
        "chipfit_activator_pending_requests), which the operator's autoscaler reads to bring a service back "
        "from zero. Shared (the default, what the chart deploys): /<namespace>/<name>/<path> goes to <path> "
        "at --upstream-template. With --service and --upstream: one service, every path forwarded. "
        "docs/autoscaling.md.",
    )
    parser.add_argument("--service", help="NAMESPACE/NAME of the one InferenceService to front")
    parser.add_argument("--upstream", help="with --service: the service's URL, e.g. http://chat.ml.svc:80")
    parser.add_argument(
        "--upstream-template",
        default=None,
        help="shared mode: each service's URL, with {namespace}, {name} (the InferenceService's) and "
        "{service} (its Service's name) (default: http://{service}.{namespace}.svc:80)",
    )
    parser.add_argument(
        "--max-services",
        type=int,
        default=None,
        help="shared mode: services tracked at most; requests for more get 503 (default: 1000)",
    )
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT to serve (default: %(default)s)")
    parser.add_argument(
        "--metrics-listen", default=DEFAULT_METRICS, help="HOST:PORT of /metrics (default: %(default)s)"
    )
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=None,
        help="seconds a request waits for a ready replica before 503 (default: 600)",
    )
    parser.set_defaults(func=run)


def _address(flag: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: expected HOST:PORT with a port in 1..65535, got {value!r}")
    return host, int(port)


def _service(args: argparse.Namespace) -> tuple[tuple[str, str] | None, str]:
    """(the one service or None for shared mode, its upstream URL or the template)."""
    from chipfit import activator

    if args.service is None:
        if args.upstream is not None:
            raise ValueError("--upstream: needs --service (shared mode takes --upstream-template)")
        template = args.upstream_template or activator.DEFAULT_UPSTREAM_TEMPLATE
        error = activator.upstream_template_error(template)
        if error:
            raise ValueError(f"--upstream-template: {error}")
        if args.max_services is not None and args.max_services < 1:
            raise ValueError(f"--max-services: must be >= 1, got {args.max_services}")
        return None, template
    if args.upstream_template is not None or args.max_services is not None:
        raise ValueError("--upstream-template and --max-services are for shared mode (no --service)")
    namespace, sep, name = args.service.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--service: expected NAMESPACE/NAME, got {args.service!r}")
    if args.upstream is None:
        raise ValueError("--upstream: required with --service")
    if not args.upstream.startswith(("http://", "https://")):
        raise ValueError(f"--upstream: must start with http:// or https://, got {args.upstream!r}")
    return (namespace, name), args.upstream


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from chipfit import activator

    try:
        service, upstream = _service(args)
        listen = _address("--listen", args.listen)
        metrics = _address("--metrics-listen", args.metrics_listen)
        hold = activator.DEFAULT_HOLD_TIMEOUT_S if args.hold_timeout is None else args.hold_timeout
        if not hold > 0:
            raise ValueError(f"--hold-timeout: must be > 0, got {args.hold_timeout}")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    max_services = activator.DEFAULT_MAX_SERVICES if args.max_services is None else args.max_services
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await activator.serve(service, upstream, listen, metrics, hold, stop, max_services=max_services)

    asyncio.run(main())
    return 0
