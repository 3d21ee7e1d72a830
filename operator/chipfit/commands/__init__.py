"""CLI subcommands: every module here defines `register(subparsers)` and is discovered by chipfit.cli."""
