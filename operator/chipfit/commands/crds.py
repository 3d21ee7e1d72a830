"""`chipfit crds`: print or write the CRDs generated from the API types."""

from __future__ import annotations

import argparse
from pathlib import Path

from chipfit.api import crd

# Where the generated CRDs live: the repo's crds/ and the Helm chart's copy of it.
DEFAULT_DIRECTORIES = (Path("crds"), Path("charts/chipfit/crds"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crds",
        help="print the CustomResourceDefinitions (or write them into crds/ and the chart)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write the files into {' and '.join(str(d) for d in DEFAULT_DIRECTORIES)} "
        "(run from the repository root)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.write:
        for path in crd.write_crds(*DEFAULT_DIRECTORIES):
            print(f"wrote {path}")
        return 0
    print("---\n".join(crd.render_crd_yaml(kind) for kind in crd.KINDS), end="")
    return 0
