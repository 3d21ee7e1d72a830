"""CLI subcommands: every module here defines `register(subparsers)` and is discovered by chipfit.cli."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chipfit import validation


def add_filename_argument(parser: argparse.ArgumentParser) -> None:
    """`-f/--filename FILE_OR_DIR...`, repeatable: the manifests a command reads (kubectl's flag)."""
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


def load_valid(args: argparse.Namespace, verb: str) -> tuple[list[str], validation.Validated | None]:
    """The -f paths and their validated objects; None after printing one line per problem to fix."""
    from chipfit import validation

    paths = [p for group in args.paths for p in group]
    loaded = validation.load_and_validate(paths)
    for problem in loaded.problems:
        print(problem)
    if loaded.problems:
        print(f"{len(loaded.problems)} problem(s); fix them and {verb} again", file=sys.stderr)
        return paths, None
    return paths, loaded
