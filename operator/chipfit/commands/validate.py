"""`chipfit validate`: check manifests as the API server and the operator will."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="validate chipfit manifests (schema, CEL rules, catalog and cross-object checks)",
        description="Exit 0 when every manifest is valid; otherwise print one line per problem "
        "(file: object: field: reason) and exit 1.",
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        nargs="+",
        required=True,
        metavar="FILE_OR_DIR",
        help="manifest files or directories (every .yaml/.yml/.json below); repeatable",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from chipfit import validation  # here: `chipfit --help` needs none of the validators

    paths = [p for group in args.paths for p in group]
    result = validation.load_and_validate(paths)
    for problem in result.problems:
        print(problem, file=sys.stdout)
    if result.problems:
        print(f"{len(result.problems)} problem(s) in {result.documents_checked} object(s)", file=sys.stderr)
        return 1
    if result.documents_checked == 0:
        print(f"no chipfit objects found in {', '.join(paths)}", file=sys.stderr)
        return 1
    print(
        f"{result.documents_checked} object(s) valid: {len(result.pools)} AcceleratorPool, "
        f"{len(result.services)} InferenceService, {len(result.profiles)} PerformanceProfile"
    )
    return 0
