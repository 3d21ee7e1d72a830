"""The work of `chipfit profile` (registered by chipfit.commands.profile, imported when it runs).

    chipfit profile --url http://127.0.0.1:8000 --accelerator h100 --precision fp8 \\
        --concurrency 1,4,16,64 --prompt-tokens 512 --output-tokens 128 -o profile.yaml --plot profile.html

Exit codes: 0 measured every point (or stopped at the SLO), 1 partial profile written (the run stopped on
errors: the reason is printed and recorded in spec.partialReason), 2 nothing measured or unusable input.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import pathlib
import sys
from typing import Final

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from chipfit import validation
from chipfit.api import v1alpha1
from chipfit.commands import profile as profile_command
from chipfit.profiling import client, report, runner, sizes

EXIT_PARTIAL: Final = profile_command.EXIT_PARTIAL
EXIT_USAGE: Final = profile_command.EXIT_USAGE
TERMINATION_MESSAGE_MAX_BYTES: Final = profile_command.TERMINATION_MESSAGE_MAX_BYTES


class UsageError(ValueError):
    """A bad option; the message names it."""


def _floats(option: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option}: no values")
    return values


def load_points(args: argparse.Namespace) -> tuple[runner.LoadPoint, ...]:
    """The load levels asked for, validated."""
    if args.rate:
        rates = _floats("--rate", args.rate)
        if any(not r > 0 for r in rates):
            raise UsageError("--rate: every rate must be > 0 requests/s")
        return tuple(runner.LoadPoint(rate_rps=r) for r in rates)
    levels = _floats("--concurrency", args.concurrency or "1,2,4,8,16")
    if any(c < 1 or c != int(c) for c in levels):
        raise UsageError("--concurrency: every level must be an integer >= 1")
    if any(b <= a for a, b in itertools.pairwise(levels)):
        raise UsageError("--concurrency: levels must increase")
    return tuple(runner.LoadPoint(concurrency=int(c)) for c in levels)


def size_source(args: argparse.Namespace) -> sizes.SizeSource:
    """Request sizes from the options."""
    if args.trace is not None:
        source = sizes.from_trace(args.trace)
    else:
        if args.output_tokens < 2:
            raise UsageError("--output-tokens: must be >= 2 to measure inter-token latency")
        source = sizes.distribution(
            args.prompt_tokens, args.output_tokens, args.prompt_tokens_p99, args.output_tokens_p99
        )
    if args.max_context is not None:
        if args.max_context < 3:
            raise UsageError("--max-context: must be >= 3 tokens")
        source = sizes.scaled(source, args.max_context)
    return source


def architecture(value: str | None) -> v1alpha1.ModelArchitecture | None:
    """An inline architecture: a ModelArchitecture or Hugging Face config.json (a file, or inline JSON)."""
    if value is None:
        return None
    path = value if not value.lstrip().startswith("{") else "inline JSON"
    try:
        text = value if path == "inline JSON" else pathlib.Path(value).read_text()
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"--architecture {path}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--architecture {path}: expected a mapping")
    if "num_hidden_layers" in data:
        heads = data.get("num_attention_heads", 1)
        hidden = data.get("hidden_size", 1)
        data = {
            "numLayers": data["num_hidden_layers"],
            "hiddenSize": hidden,
            "numHeads": heads,
            "numKvHeads": data.get("num_key_value_heads", heads),
            "headDim": data.get("head_dim") or hidden // max(1, heads),
            "intermediateSize": data.get("intermediate_size", 4 * hidden),
            "vocabSize": data.get("vocab_size", 1),
            "maxContextTokens": data.get("max_position_embeddings", 2048),
        }
    try:
        return v1alpha1.ModelArchitecture.model_validate(data)
    except ValueError as error:
        first = str(error).splitlines()
        raise UsageError(f"--architecture {path}: {' '.join(first[:3])}") from None


def options_from(args: argparse.Namespace) -> runner.RunOptions:
    """Run options from the command line, or UsageError / client.EndpointError."""
    for name in ("duration", "timeout"):
        if not getattr(args, name) > 0:
            raise UsageError(f"--{name}: must be > 0 seconds")
    if args.warmup < 0:
        raise UsageError("--warmup: must be >= 0 seconds")
    if not 0 <= args.max_error_rate < 1:
        raise UsageError("--max-error-rate: must be within [0, 1)")
    if args.tp < 1:
        raise UsageError("--tp: must be >= 1")
    return runner.RunOptions(
        base_url=client.check_url(args.url),
        api=args.api,
        sizes=size_source(args),
        points=load_points(args),
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        model=args.served_model,
        ignore_eos=not args.no_ignore_eos,
        seed=args.seed,
        ttft_slo_ms=args.ttft_p99_ms,
        itl_slo_ms=args.itl_p99_ms,
        slo_margin=args.slo_margin,
        max_error_rate=args.max_error_rate,
    )


def termination_message(profile: v1alpha1.PerformanceProfile) -> str:
    """The profile's spec as compact JSON, within what the kubelet keeps of a termination message."""
    text = json.dumps(profile.spec.to_wire(), separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
        raise UsageError(
            f"--termination-log: the profile is {len(text.encode())} bytes, more than the "
            f"{TERMINATION_MESSAGE_MAX_BYTES} a termination message holds; measure fewer points"
        )
    return text


def _measure(options: runner.RunOptions, console: Console, quiet: bool) -> runner.RunResult:
    if quiet:
        return asyncio.run(runner.run(options))
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]} requests, {task.fields[errors]} errors"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[runner.LoadPoint, TaskID] = {}

        def progress(load: runner.LoadPoint, fraction: float, done: int, errors: int) -> None:
            if load not in tasks:
                tasks[load] = bar.add_task(load.label, total=1.0, done=0, errors=0)
            bar.update(tasks[load], completed=fraction, done=done, errors=errors)

        return asyncio.run(runner.run(options, progress))


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        options = options_from(args)
        arch = architecture(args.architecture)
        result = _measure(options, console, args.quiet)
    except (UsageError, sizes.SizeError, client.EndpointError, runner.ProfilingError) as error:
        print(f"chipfit profile: {error}", file=sys.stderr)
        return EXIT_USAGE
    target = report.Target(
        accelerator=args.accelerator,
        precision=args.precision,
        tensor_parallel=args.tp,
        engine=args.engine,
        engine_image=args.engine_image,
        engine_version=args.engine_version,
        model=args.model,
        architecture=arch,
        name=args.name,
    )
    if not args.quiet and result.points:
        Console(stderr=True, width=max(console.width, 132)).print(report.table(result))
    try:
        profile = report.to_profile(result, target)
    except ValueError as error:
        # Pydantic errors (a model name the schema rejects, ...) and "nothing measured" end up here.
        print(f"chipfit profile: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    if args.plot is not None:
        args.plot.write_text(report.plot_html(result))
    body = report.wire(profile)
    text = yaml.safe_dump(body, sort_keys=False)
    if args.output is not None:
        args.output.write_text(text)
    else:
        print(text, end="")
    problems = validation.crd_errors("PerformanceProfile", body)
    if problems:
        # The measurements are written anyway (they cost minutes); the user fixes the named field.
        first = problems[0]
        print(
            f"chipfit profile: the profile is not valid to apply: {first.field}: {first.reason} "
            "(pass --model with a catalog id, or --architecture with the model's config.json)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.termination_log is not None:
        try:
            args.termination_log.write_text(termination_message(profile))
        except UsageError as error:
            print(f"chipfit profile: {error}", file=sys.stderr)
            return EXIT_USAGE
    if result.partial_reason:
        print(f"chipfit profile: partial profile: {result.partial_reason}", file=sys.stderr)
        return EXIT_PARTIAL
    if result.stopped_reason and not args.quiet:
        console.print(f"stopped: {result.stopped_reason}")
    return 0
