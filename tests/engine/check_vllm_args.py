"""Checks vLLM command lines with vLLM's own code; run with the engine venv's python (not the project's).

    check_vllm_args.py RESULTS.json < CASES.json

CASES: [{"id": str, "argv": [...], "config_argv": [...] | null}], each argv what follows `vllm`
(`serve MODEL --flag=value ...`). Per case:
1. `argv` goes through the parser `vllm serve` builds (vllm.entrypoints.cli.serve.ServeSubcommand on a
   FlexibleArgumentParser, as vllm/entrypoints/cli/main.py does): flags it does not know are listed, and
   a value it refuses (type, choice, JSON of --kv-transfer-config, ...) is the error; then the serve
   subcommand's own validate().
2. `config_argv` (the same line with the GPU-only values mapped to this CPU, tests/engine/cpu_equivalents.py)
   is parsed the same way and built into a full engine configuration,
   `AsyncEngineArgs.from_cli_args(args).create_engine_config()`, as `vllm serve` does before it starts:
   the model's config is read (the local tiny model), lengths, batch and chunk limits, dtype and
   scheduler settings are cross-checked.
RESULTS: [{"id", "unknown": [...], "error": str | null, "config": {...} | null}].
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from typing import Any


def _parser() -> tuple[Any, Any, set[str]]:
    """vLLM's top-level parser with its `serve` subcommand, the subcommand, and serve's option strings."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    serve = ServeSubcommand()
    serve_parser = serve.subparser_init(subparsers)
    serve_parser.set_defaults(dispatch_function=serve.cmd)
    return parser, serve, set(serve_parser._option_string_actions)


def _not_exact(argv: list[str], known: set[str]) -> list[str]:
    """Flags that are not spelled exactly as the engine defines them (argparse would accept abbreviations)."""
    flags = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")]
    return [f for f in flags if f not in known]


def _parse(
    parser: Any, serve: Any, known: set[str], argv: list[str]
) -> tuple[argparse.Namespace | None, list[str], str | None]:
    """(namespace, unknown flags, error) for one command line."""
    if unknown := _not_exact(argv, known):
        return None, unknown, None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            namespace, unknown = parser.parse_known_args(argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        return None, [], lines[-1] if lines else "argument parsing failed"
    except (ValueError, TypeError) as exc:  # FlexibleArgumentParser raises for some malformed lines
        return None, [], f"{type(exc).__name__}: {exc}"
    if unknown:
        return namespace, [u for u in unknown if u.startswith("-")] or unknown, None
    try:
        serve.validate(namespace)
    except Exception as exc:  # any refusal is the answer reported
        return namespace, [], f"serve validation: {type(exc).__name__}: {exc}"
    if getattr(namespace, "model_tag", None) is not None:
        namespace.model = namespace.model_tag
    return namespace, [], None


def _config(namespace: argparse.Namespace) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    engine_args = AsyncEngineArgs.from_cli_args(namespace)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    return {
        "max_model_len": config.model_config.max_model_len,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "dtype": str(config.model_config.dtype),
        "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
    }


def check(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parser, serve, known = _parser()
    results = []
    for case in cases:
        result: dict[str, Any] = {"id": case["id"], "unknown": [], "error": None, "config": None}
        _, unknown, error = _parse(parser, serve, known, list(case["argv"]))
        result["unknown"], result["error"] = unknown, error
        if not unknown and error is None and case.get("config_argv") is not None:
            namespace, unknown, error = _parse(parser, serve, known, list(case["config_argv"]))
            if unknown or error is not None:
                result["error"] = f"CPU-mapped line: unknown {unknown}, {error}"
            else:
                assert namespace is not None
                try:
                    result["config"] = _config(namespace)
                except Exception as exc:  # the engine's refusal is the result
                    result["error"] = f"engine config: {type(exc).__name__}: {exc}"
        results.append(result)
    return results


def main() -> int:
    cases = json.load(sys.stdin)
    results = check(cases)
    with open(sys.argv[1], "w") as out:
        json.dump(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
