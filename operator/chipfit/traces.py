"""Request traces from files: the Azure LLM inference traces (CSV) and Mooncake (JSON lines).

Formats: Azure `TIMESTAMP,ContextTokens,GeneratedTokens` (github.com/Azure/AzurePublicDataset,
AzureLLMInferenceDataset2023); Mooncake `{"timestamp": ms, "input_length", "output_length", ...}` per line
(github.com/kvcache-ai/Mooncake, FAST'25 traces). Errors name the file, line and field.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

from placement import replay

# Bounded memory on bad input: a trace is at most this many requests.
MAX_REQUESTS = 5_000_000


class TraceError(ValueError):
    """The trace file cannot be read; the message names the file, line and field."""


def _azure(path: Path) -> replay.Trace:
    ts: list[float] = []
    prompt: list[float] = []
    output: list[float] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise TraceError(f"{path}: header must have {', '.join(sorted(need))}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if len(ts) >= MAX_REQUESTS:
                raise TraceError(f"{path}: more than {MAX_REQUESTS} requests")
            try:
                # Azure writes 7 fractional digits; Python parses at most 6.
                stamp = row["TIMESTAMP"].strip()
                head, _, frac = stamp.partition(".")
                ts.append(dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").timestamp())
                prompt.append(float(int(row["ContextTokens"])))
                output.append(float(int(row["GeneratedTokens"])))
            except (ValueError, TypeError) as error:
                raise TraceError(f"{path}:{line}: {error}") from error
    return replay.Trace.of(ts, prompt, output)


def _mooncake(path: Path) -> replay.Trace:
    ts: list[float] = []
    prompt: list[float] = []
    output: list[float] = []
    with path.open() as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            if len(ts) >= MAX_REQUESTS:
                raise TraceError(f"{path}: more than {MAX_REQUESTS} requests")
            try:
                row = json.loads(text)
                ts.append(float(row["timestamp"]) / 1000.0)
                prompt.append(float(int(row["input_length"])))
                output.append(float(int(row["output_length"])))
            except (ValueError, TypeError, KeyError) as error:
                raise TraceError(f"{path}:{line}: {type(error).__name__}: {error}") from error
    return replay.Trace.of(ts, prompt, output)


def load(path: str | Path) -> replay.Trace:
    """A trace from an Azure CSV or a Mooncake JSONL file, by extension."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such file")
    try:
        if p.suffix == ".csv":
            return _azure(p)
        if p.suffix in (".jsonl", ".json"):
            return _mooncake(p)
    except replay.ReplayError as error:
        raise TraceError(f"{p}: {error}") from error
    raise TraceError(f"{p}: unknown trace format (want .csv for Azure or .jsonl for Mooncake)")
