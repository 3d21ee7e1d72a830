"""`chipfit operator`: run the kopf operator against the current kubeconfig (or in-cluster account)."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from typing import Any, Final

# Kopf peering object both replicas join; the one with the highest priority acts, the others wait.
PEERING_NAME: Final = "chipfit"
DEFAULT_LIVENESS: Final = "http://0.0.0.0:8080/healthz"
# Prometheus port of the operator (the chart's ServiceMonitor scrapes it).
DEFAULT_METRICS_PORT: Final = 9090
# kopf pauses every peer when the highest priority is shared, and a chart cannot give each replica of one
# Deployment its own number: without --priority each process draws one from this range (a collision,
# one in ~10^9 per pair, resolves on the next restart).
RANDOM_PRIORITY_RANGE: Final = (1, 2**30)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the chipfit operator (kopf) against the current cluster",
        description="Watch InferenceServices, AcceleratorPools, PerformanceProfiles and Nodes; plan the "
        "fleet and reconcile serving Deployments and Services. Replicas elect one active peer via "
        f"kopf peering (ClusterKopfPeering {PEERING_NAME!r}) unless --standalone.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster account, else KUBECONFIG)")
    parser.add_argument("--standalone", action="store_true", help="no peering: act alone (one replica)")
    parser.add_argument(
        "--peering", default=PEERING_NAME, help="ClusterKopfPeering name (default: %(default)s)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest acts (default: random, so replicas of one Deployment differ)",
    )
    parser.add_argument(
        "--liveness", default=DEFAULT_LIVENESS, help="health endpoint URL (default: %(default)s)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT, help="Prometheus /metrics port, 0 = off"
    )
    parser.add_argument(
        "--debounce-seconds",
        type=float,
        default=None,
        help="wait this long after a change before re-planning",
    )
    parser.add_argument(
        "--prometheus-url",
        default=os.environ.get("CHIPFIT_PROMETHEUS_URL", ""),
        help="Prometheus server the autoscaler reads engine metrics from (default: $CHIPFIT_PROMETHEUS_URL); "
        "empty: no autoscaling, services are sized from spec.workload",
    )
    parser.add_argument(
        "--autoscaling-policy",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="override one autoscaling policy knob (repeatable; names and defaults in docs/autoscaling.md), "
        "e.g. interval_s=30 scale_down_window_s=300",
    )
    parser.add_argument(
        "--autoscaling-rate-window",
        default=None,
        help="Prometheus rate() window of the observed signals (default: 1m); at least 4 scrape intervals",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def _memo(kopf: Any, fleet: Any, prometheus_url: str, scaler: Any) -> Any:
    """kopf's memo: the fleet worker and, always, the autoscaler (without a URL it only reports that)."""
    from chipfit import observe

    query = observe.prometheus_query(prometheus_url) if prometheus_url else None
    return kopf.Memo(fleet=fleet, autoscaler=scaler, prometheus_query=query)


def _autoscaler(args: argparse.Namespace) -> Any:
    """The autoscaler with the policy the flags give; a bad flag raises ValueError naming it and why."""
    from chipfit import autoscaler, observe

    if args.prometheus_url and not args.prometheus_url.startswith(("http://", "https://")):
        url = args.prometheus_url
        raise ValueError(f"--prometheus-url: must start with http:// or https://, got {url!r}")
    try:
        policy = autoscaler.policy_from_settings(args.autoscaling_policy)
    except ValueError as error:
        raise ValueError(f"--autoscaling-policy: {error}") from None
    try:
        window = observe.check_window(args.autoscaling_rate_window or observe.DEFAULT_WINDOW)
    except ValueError as error:
        raise ValueError(f"--autoscaling-rate-window: {error}") from None
    from chipfit import handlers, planning

    # Priced and solved by the fleet worker's rules (its SolveOptions): what plan prices is what scales.
    return autoscaler.Autoscaler(
        policy=policy, rate_window=window, planner=planning.Planner(handlers.solve_options())
    )


def run(args: argparse.Namespace) -> int:
    """Start the metrics server and kopf; returns when kopf stops (SIGTERM/SIGINT)."""
    # Imported here: `chipfit --help` and the other commands need neither kopf nor the kubernetes client.
    import kopf

    from chipfit import handlers, kube, metrics

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s"
    )
    if not args.verbose:
        # kopf logs every handled watch event at INFO (nodes heartbeat constantly); keep failures only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        scaler = _autoscaler(args)  # flags checked before anything starts
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.kubeconfig:
        if not os.path.exists(args.kubeconfig):
            print(f"--kubeconfig: no such file {args.kubeconfig}", file=sys.stderr)
            return 2
        # kopf's default login goes through the kubernetes client, whose default kubeconfig path is fixed at
        # import (~/.kube/config unless KUBECONFIG was set then): log kopf in with this file explicitly.
        os.environ["KUBECONFIG"] = args.kubeconfig

        @kopf.on.login()
        def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
            return kopf.login_with_kubeconfig(**kwargs)

    try:
        api_client = kube.new_api_client(args.kubeconfig)
    except Exception as exc:  # the kubernetes client raises several unrelated types for a bad config
        print(f"kubeconfig: {exc}", file=sys.stderr)
        return 2
    operator_metrics = metrics.OperatorMetrics()
    server = (
        metrics.start_metrics_server(args.metrics_port, operator_metrics.registry)
        if args.metrics_port
        else None
    )
    fleet = handlers.Fleet(cluster=kube.Kube(api_client), metrics=operator_metrics)
    if args.debounce_seconds is not None:
        fleet.debounce_s = args.debounce_seconds
    try:
        # A peering name makes kopf's peering mandatory (its ClusterKopfPeering CRD must be installed), so
        # it is passed only when peering is wanted.
        priority = args.priority if args.priority is not None else random.randint(*RANDOM_PRIORITY_RANGE)
        peering = {} if args.standalone else {"peering_name": args.peering, "priority": priority}
        kopf.run(
            clusterwide=True,
            standalone=args.standalone,
            **peering,
            liveness_endpoint=args.liveness,
            memo=_memo(kopf, fleet, args.prometheus_url, scaler),
        )
    finally:
        if server is not None:
            server.shutdown()
        api_client.close()
    return 0
