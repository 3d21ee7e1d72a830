"""`chipfit activator`: hold requests for a service while it has no ready replica (scale from zero)."""

from __future__ import annotations

import argparse
import sys
from typing import Final

DEFAULT_LISTEN: Final = "0.0.0.0:8080"
DEFAULT_METRICS: Final = "0.0.0.0:9091"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "activator",
        help="proxy in front of a service that holds requests while it has no ready replica",
        description="Forward every request to --upstream (the service's Service URL); while it has no ready "
        "replica, hold requests (up to --hold-timeout) and export the demand on /metrics "
        "(chipfit_activator_requests_total, chipfit_activator_pending_requests), which the operator's "
        "autoscaler reads to bring a service back from zero. docs/autoscaling.md.",
    )
    parser.add_argument("--service", required=True, help="NAMESPACE/NAME of the InferenceService")
    parser.add_argument("--upstream", required=True, help="the service's URL, e.g. http://chat.ml.svc:80")
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


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from chipfit import activator

    try:
        namespace, sep, name = args.service.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"--service: expected NAMESPACE/NAME, got {args.service!r}")
        if not args.upstream.startswith(("http://", "https://")):
            raise ValueError(f"--upstream: must start with http:// or https://, got {args.upstream!r}")
        listen = _address("--listen", args.listen)
        metrics = _address("--metrics-listen", args.metrics_listen)
        hold = activator.DEFAULT_HOLD_TIMEOUT_S if args.hold_timeout is None else args.hold_timeout
        if not hold > 0:
            raise ValueError(f"--hold-timeout: must be > 0, got {args.hold_timeout}")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await activator.serve(namespace, name, args.upstream, listen, metrics, hold, stop)

    asyncio.run(main())
    return 0
