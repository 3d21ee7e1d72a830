"""The `chipfit` command line: discovers one subcommand per module in chipfit.commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from chipfit import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    """Parser with every subcommand module in chipfit.commands registered, in name order."""
    parser = argparse.ArgumentParser(
        prog="chipfit",
        description="Place LLM inference on the cheapest chips that meet each model's latency SLOs.",
    )
    parser.add_argument("--version", action="version", version=f"chipfit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
