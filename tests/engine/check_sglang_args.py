"""Checks SGLang command lines with SGLang's own parser; run with the SGLang parser venv's python.

    check_sglang_args.py RESULTS.json < CASES.json

CASES: [{"id": str, "argv": [...]}], each argv what follows `python3 -m sglang.launch_server`. Each goes
through the argparse parser `sglang.launch_server` builds (`ServerArgs.add_cli_args`, the version of the
rendered image): flags it does not define exactly are listed as unknown, and a value it refuses (type,
choice) is the error. `ServerArgs.from_cli_args` is not called: its __post_init__ needs a CUDA, XPU or HPU
device (RuntimeError "No accelerator ... is available" here), and its CPU path needs a newer torch than the
one installed (torch._C._cpu._is_amx_tile_supported); see e2e/README.md.
RESULTS: [{"id", "unknown": [...], "error": str | null}].
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any


def check(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    known = set(parser._option_string_actions)
    results = []
    for case in cases:
        argv = list(case["argv"])
        result: dict[str, Any] = {"id": case["id"], "unknown": [], "error": None}
        flags = [a.split("=", 1)[0] for a in argv if a.startswith("-")]
        result["unknown"] = [f for f in flags if f not in known]
        if not result["unknown"]:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    _, unknown = parser.parse_known_args(argv)
                result["unknown"] = unknown
            except SystemExit:
                lines = err.getvalue().strip().splitlines()
                result["error"] = lines[-1] if lines else "argument parsing failed"
        results.append(result)
    return results


def main() -> int:
    results = check(json.load(sys.stdin))
    with open(sys.argv[1], "w") as out:
        json.dump(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
