"""`chipfit render`: the Deployments and Services the operator would apply for what a folder holds.

A dry run, as `helm template` is for a chart: validate, plan and render with the operator's own functions
(`handlers.plan_outcomes`, `render.render_planned`), print the objects and touch no cluster. Two fields
are left out because only the cluster can fill them: each object's ownerReference (the InferenceService's
uid, assigned by the API server) and the operator's content-hash annotation (computed over it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Final

from chipfit import commands

if TYPE_CHECKING:  # imported when rendering: `chipfit --help` must not load the solver or kopf
    from chipfit import handlers, validation

# A service read from files has no uid; render.owner_reference needs one. It is dropped from the output.
_UNAPPLIED_UID: Final = "00000000-0000-0000-0000-000000000000"
DEFAULT_NAMESPACE: Final = "default"
# Long engine command lines stay on one line each (reviewable, greppable).
YAML_WIDTH: Final = 1_000_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "render",
        help="print the manifests the operator would apply for these services (dry run, no cluster)",
        description="Validate and plan the manifests as `chipfit plan` does, then print the Deployments and "
        "Services the operator would apply for the plan: the engine command lines, resources, probes and "
        "scheduling constraints, for review before anything runs. Services the plan cannot place are named "
        "on stderr (exit 3, as chipfit plan with unserved demand); a planned service that cannot be rendered "
        "is named on stderr with its field (exit 1; the rest is printed). Invalid input: one line per "
        "problem and exit 1.",
    )
    commands.add_filename_argument(parser)
    parser.add_argument(
        "-o",
        "--output",
        choices=("yaml", "json"),
        default="yaml",
        help="yaml: a multi-document stream; json: one v1 List (both accepted by kubectl apply -f -)",
    )
    parser.set_defaults(func=run)


def rendered_objects(
    loaded: validation.Validated, solved: handlers.Solved
) -> tuple[list[tuple[str, dict[str, Any]]], list[str], list[str]]:
    """(service id, object) for every placed service in input order, a note per unplaced service, and an
    error per service whose placement cannot be rendered (the operator reports those as RenderFailed and
    goes on with the others; so does this)."""
    from chipfit import planning, render

    pools = {p.metadata.name: p for p in loaded.pools}
    objects: list[tuple[str, dict[str, Any]]] = []
    notes: list[str] = []
    errors: list[str] = []
    for service in loaded.services:
        sid = planning.service_id(service)
        outcome = solved.outcomes.get(sid)
        if outcome is None or not outcome.placements:
            reason = outcome.reason if outcome is not None and outcome.reason else "not placed by the plan"
            notes.append(f"{sid}: nothing to render: {reason}")
            continue
        if outcome.served != "served":
            notes.append(f"{sid}: part of its demand is not placed: {outcome.reason or outcome.served}")
        meta = service.metadata.model_copy(
            update={"uid": _UNAPPLIED_UID, "namespace": service.metadata.namespace or DEFAULT_NAMESPACE}
        )
        planned = service.model_copy(update={"metadata": meta})
        try:
            rendered = render.render_planned(planned, outcome.placements, pools)
        except render.RenderError as error:
            errors.append(f"{sid}: {error}")
            continue
        for obj in rendered:
            obj["metadata"].pop("ownerReferences", None)
            objects.append((sid, obj))
    return objects, notes, errors


def run(args: argparse.Namespace) -> int:
    import yaml

    from chipfit import handlers, planning
    from placement.solver import inputs

    paths, loaded = commands.load_valid(args, "render")
    if loaded is None:
        return 1
    if not loaded.services:
        print(f"no InferenceService found in {', '.join(paths)}", file=sys.stderr)
        return 1
    try:
        planner = planning.Planner(handlers.solve_options())
        solved = handlers.plan_outcomes(loaded.services, loaded.pools, loaded.profiles, planner)
        objects, notes, errors = rendered_objects(loaded, solved)
    except (planning.PlanningError, inputs.PlacementError) as error:
        print(f"chipfit render: {error}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"chipfit render: {note}", file=sys.stderr)
    for message in errors:
        print(f"chipfit render: cannot render {message}", file=sys.stderr)
    if args.output == "json":
        items = [obj for _, obj in objects]
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    else:
        for sid, obj in objects:
            # `# Source:` as helm template marks where each document comes from.
            sys.stdout.write(f"---\n# Source: InferenceService {sid}\n")
            sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, width=YAML_WIDTH))
    # What could be rendered is printed. Exit codes as `chipfit plan` (docs/cli.md): 1 when a planned service
    # cannot be rendered (the operator could not deploy it), 3 when some service's demand is left unplaced.
    if errors:
        return 1
    return 3 if notes else 0
