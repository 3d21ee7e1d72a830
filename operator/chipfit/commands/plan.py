"""`chipfit plan`: the cheapest fleet plan meeting every SLO, from the same manifests users apply."""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import sys
from typing import TYPE_CHECKING, Any, Final

from chipfit import commands

if TYPE_CHECKING:  # imported when planning: `chipfit --help` must not load the solver stack
    from rich.console import Console

    from chipfit import planning, validation
    from placement.solver import allocation

# A person notices a pause after about a second: only then is a progress display worth drawing.
PROGRESS_AFTER_S = 1.0
# Width of the table when stdout is not a terminal (files, pipes, CI logs): every column unabridged.
PIPE_WIDTH_COLUMNS = 180
# Exit codes (documented in --help, README and docs/cli.md).
EXIT_SERVED: Final = 0  # a plan serving every service's whole demand
EXIT_INVALID: Final = (
    1  # invalid input, nothing to plan, or no plan exists: nothing printed on stdout but problems
)
EXIT_USAGE: Final = 2  # bad flags (argparse's convention)
EXIT_UNSERVED: Final = 3  # a plan was made and printed, but some demand is not served
EXIT_CODES_HELP: Final = (
    "exit codes: 0 every service's demand is served; 3 a plan was printed but some demand is unserved; "
    "1 invalid input, no services or pools, or no plan exists; 2 invalid flags"
)


def _share(text: str) -> float:
    """A share in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1, got {text}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="solve the cheapest placement of every InferenceService on the AcceleratorPools",
        description="Read pools, services and profiles from manifests, predict capacity, solve one MILP for "
        "the fleet and print the plan, its savings against the best single-chip-type plan and why each "
        "service landed where it did. Invalid input: one line per problem (file: object: field: reason).",
        epilog=EXIT_CODES_HELP,
    )
    commands.add_filename_argument(parser)
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table for people (default); json or yaml: the typed FleetPlan document "
        "(schema: docs/plan-output.schema.json)",
    )
    parser.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        help="deprecated: use -o json",
    )
    parser.add_argument(
        "--move-penalty",
        type=_non_negative,
        default=0.0,
        metavar="DOLLARS_PER_DEVICE_HOUR",
        help="cost of moving a running replica's device, so small savings do not churn the fleet",
    )
    parser.add_argument(
        "--max-utilization",
        type=_share,
        default=1.0,
        metavar="SHARE",
        help="load replicas to at most this share (0-1] of their SLO-bounded capacity (headroom for bursts)",
    )
    parser.add_argument(
        "--time-limit",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="wall-clock budget of each solver call; at the limit the best plan found so far is returned "
        "(default: the solver's)",
    )
    parser.add_argument(
        "--no-trust-headroom",
        dest="headroom",
        action="store_false",
        help="plan on capacity predicted from specs as if it were calibrated (default: derate it by its "
        "typical error, see docs/performance-model.md#trust-how-far-a-prediction-can-be-trusted)",
    )
    parser.set_defaults(func=run)


class _Phase:
    """The label of the phase planning is in (written by the worker, read by the progress display)."""

    def __init__(self) -> None:
        self.label = "starting"

    def __call__(self, label: str) -> None:
        self.label = label


def _solve_with_progress(args: argparse.Namespace, loaded: validation.Validated, console: Console) -> Any:
    """Run planning in a worker; draw a progress display only if it takes more than a second."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from chipfit import planning
    from placement.solver import inputs

    phase = _Phase()
    options = inputs.SolveOptions(
        time_limit_s=args.time_limit if args.time_limit is not None else inputs.DEFAULT_TIME_LIMIT_S,
        move_penalty_per_device_hour=args.move_penalty,
        max_utilization=args.max_utilization,
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(
            planning.plan_fleet,
            loaded.services,
            loaded.pools,
            loaded.profiles,
            options=options,
            progress=phase,
            headroom=args.headroom,
        )
        try:
            return future.result(timeout=PROGRESS_AFTER_S)
        except concurrent.futures.TimeoutError:
            pass
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task(phase.label, total=None)
            while True:
                try:
                    return future.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    progress.update(task, description=phase.label)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from chipfit import plan_output, planning
    from placement.solver import inputs

    paths, loaded = commands.load_valid(args, "plan")
    if loaded is None:
        return EXIT_INVALID
    missing = [
        kind
        for kind, objects in (("InferenceService", loaded.services), ("AcceleratorPool", loaded.pools))
        if not objects
    ]
    if missing:
        print(
            f"no {' and no '.join(missing)} found in {', '.join(paths)}: a plan places InferenceServices on "
            "AcceleratorPools; name the files of both (e.g. -f examples/)",
            file=sys.stderr,
        )
        return EXIT_INVALID
    err = Console(stderr=True)
    try:
        result: planning.FleetPlan = _solve_with_progress(args, loaded, err)
    except (planning.PlanningError, inputs.PlacementError) as error:
        print(f"chipfit plan: {error}", file=sys.stderr)
        return EXIT_INVALID
    output = plan_output.from_result(result)
    if args.output == "json":
        print(output.model_dump_json(by_alias=True, indent=2))
    elif args.output == "yaml":
        import yaml

        print(yaml.safe_dump(plan_output.to_data(output), sort_keys=False), end="")
    else:
        # Piped output gets a wide table instead of rich's 80-column default.
        out = Console()
        if not out.is_terminal:
            out = Console(width=PIPE_WIDTH_COLUMNS)
        print_plan(result, out)
    return EXIT_SERVED if output.totals.all_served else EXIT_UNSERVED


def _ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_plan(result: planning.FleetPlan, console: Console) -> None:
    """The plan table, the fleet total, the savings and the explanations."""
    from rich.table import Table

    from placement import profile_fit

    plan = result.plan
    table = Table(title="chipfit fleet plan", title_justify="left")
    for name, justify in (
        ("service", "left"),
        ("role", "left"),
        ("pool", "left"),
        ("chip", "left"),
        ("prec", "left"),
        ("TP", "right"),
        ("replicas", "right"),
        ("$/h", "right"),
        ("$/1M out tok", "right"),
        ("TTFT p99 ms*", "right"),
        ("ITL p99 ms*", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for sp in plan.services:
        if not sp.assignments:
            table.add_row(sp.service, "-", "-", "-", "-", "-", "0", "0.00", "-", "-", "-", style="red")
            continue
        for i, a in enumerate(sp.assignments):
            per_million = sp.price_per_million_output_tokens if i == 0 else None
            table.add_row(
                sp.service if i == 0 else "",
                a.role,
                a.pool,
                a.accelerator,
                a.precision,
                str(a.tp),
                str(a.replicas),
                f"{a.price_per_hour:.2f}",
                "" if per_million is None else f"{per_million:.3f}",
                _ms(a.ttft_p99_ms),
                _ms(a.itl_p99_ms, 1),
            )
    console.print(table)
    console.print(
        "* predicted p99 with the replicas at their SLO-bounded capacity: a bound at the planned load"
    )
    served = sum(s.served_rps for s in plan.services)
    demand = sum(s.demand_rps for s in plan.services)
    console.print(
        f"fleet total: [bold]${plan.price_per_hour:,.2f}/h[/bold]  "
        f"serving {served:,.2f} of {demand:,.2f} req/s  "
        f"({plan.status}, {_gap_text(plan)}, {plan.solve_seconds:.2f} s, {plan.stages} stage(s))"
    )
    for sp in plan.services:
        if sp.status != "served":
            console.print(
                f"[red]unserved[/red] {sp.service}: {sp.unmet_rps:,.2f} of {sp.demand_rps:,.2f} req/s"
                + (f": {sp.reason}" if sp.reason else "")
            )
    single = result.single_type
    if single.plan is not None and result.savings_vs_single_type is not None:
        if result.single_type_kind == "per-service":
            what = "one chip type per service (no single type serves every service in these pools)"
        else:
            what = f"{single.accelerator} for everything"
        console.print(
            f"best single-chip-type plan in the same pools: {what}: ${single.plan.price_per_hour:,.2f}/h -> "
            f"chipfit saves [bold]{result.savings_vs_single_type:.1%}[/bold]"
        )
    else:
        console.print("best single-chip-type plan in the same pools: none serves what this plan serves")
    sized = result.single_type_sized
    if sized.plan is not None and result.savings_vs_single_type_sized is not None:
        what = (
            "one chip type per service"
            if result.single_type_sized_kind == "per-service-sized"
            else f"{sized.accelerator} for everything"
        )
        console.print(
            f"  (pool sizes ignored, a single-type fleet sized to order: {what}: "
            f"${sized.plan.price_per_hour:,.2f}/h -> {result.savings_vs_single_type_sized:.1%})"
        )
    used = [p for p in plan.pools if p.devices_used]
    if used:
        console.print(
            "pools: " + ", ".join(f"{p.pool} {p.devices_used}/{p.devices_total}" for p in used) + " devices"
        )
    console.print("\n[bold]why[/bold]")
    for e in result.explanations:
        console.print(f"- {e.service}: {e.summary}")
        sources = {a.source for sp in plan.services if sp.service == e.service for a in sp.assignments}
        for source in sorted(sources):
            console.print(f"    figures: {profile_fit.basis(source)}")
        for r in e.runners_up:
            what = (
                f"${r.price_per_hour:,.2f}/h alone" if r.price_per_hour is not None else f"misses: {r.misses}"
            )
            console.print(f"    {r.accelerator} (tp{r.tp} {r.precision}, pool {r.pool}): {what}")


def _gap_text(plan: allocation.Plan) -> str:
    """The optimality gap and what bounds it (a gap against a weak bound says less)."""
    if not math.isfinite(plan.gap):
        return "no bound"
    return f"gap {plan.gap:.2%} to the {BOUND_NAMES.get(plan.bound_source, plan.bound_source)}"


# What each bound source means, in the words `chipfit plan` prints.
BOUND_NAMES = {
    "milp": "MILP bound",
    "full-lp": "LP bound over all candidates",
    "restricted-milp": "bound of the pruned MILP",
    "per-service": "per-service bound (capacity ignored)",
    "dantzig-wolfe": "Dantzig-Wolfe bound",
    "lagrangian": "Lagrangian bound (pool capacity priced at the LP's duals)",
    "none": "no bound",
}
