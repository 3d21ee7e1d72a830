"""`chipfit crds`: print or write the CRDs generated from the API types."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

# Where the generated CRDs live in a chipfit checkout: crds/ and the Helm chart's copy of it.
CHECKOUT_DIRECTORIES: Final = (Path("crds"), Path("charts/chipfit/crds"))
# A directory is a chipfit checkout's root when it holds these (the chart the CRDs are copied into).
CHECKOUT_MARKER: Final = Path("charts/chipfit/Chart.yaml")
EXIT_USAGE: Final = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "crds",
        help="print the CustomResourceDefinitions (or write them into crds/ and the chart)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="write the files: into --dir, else into "
        f"{' and '.join(str(d) for d in CHECKOUT_DIRECTORIES)} of the chipfit checkout containing the "
        "current directory (an error outside one)",
    )
    parser.add_argument("--dir", type=Path, metavar="DIR", help="with --write: write into DIR only")
    parser.set_defaults(func=run)


def checkout_root(start: Path) -> Path | None:
    """The chipfit checkout containing `start` (it or a parent holding the chart), else None."""
    for directory in (start, *start.parents):
        if (directory / CHECKOUT_MARKER).is_file():
            return directory
    return None


def run(args: argparse.Namespace) -> int:
    from chipfit.api import crd

    if args.dir is not None and not args.write:
        print("chipfit crds: --dir needs --write", file=sys.stderr)
        return EXIT_USAGE
    if args.write:
        if args.dir is not None:
            directories: tuple[Path, ...] = (args.dir,)
        else:
            root = checkout_root(Path.cwd().resolve())
            if root is None:
                print(
                    f"chipfit crds --write: {Path.cwd()} is not inside a chipfit checkout (no "
                    f"{CHECKOUT_MARKER} here or above); pass --dir DIR to write the CRDs elsewhere",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            directories = tuple(root / d for d in CHECKOUT_DIRECTORIES)
        for path in crd.write_crds(*directories):
            print(f"wrote {path}")
        return 0
    print("---\n".join(crd.render_crd_yaml(kind) for kind in crd.KINDS), end="")
    return 0
