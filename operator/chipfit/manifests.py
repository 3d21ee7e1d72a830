"""Read YAML manifests (files or directories) into documents, with one-line problems instead of tracebacks.

Input is bounded before it is built into Python objects: file size first, then a scan of the parser's event
stream (libyaml, fast and flat) that counts documents, objects, nesting depth and nodes with every alias
counted at the size of what it names, so a "billion laughs" file is refused after reading a few hundred
bytes instead of expanding it. Only input within every bound is loaded.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# The API server takes request bodies up to 3 MiB (apiserver --max-request-bytes default) and etcd objects up
# to 1.5 MiB; a manifest set for a whole fleet fits in a few of those.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Objects (documents and List items) per run: a fleet of hundreds of services on tens of pools, with room.
# Planning time grows with pools x services; beyond this, split the input.
MAX_OBJECTS = 1000
# YAML nodes per run, aliases counted at the size of what they name (~20 nodes a pool, ~60 a service).
MAX_YAML_NODES = 250_000
# Nesting depth: the deepest field of the API is 6 levels below a document (a bucket table row's value).
MAX_YAML_DEPTH = 32
# libyaml where it is compiled in (PyYAML wheels include it): the same YAML, several times faster.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (file, object, field) and why."""

    file: str
    object: str
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.object}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    file: str
    index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        """How problems name the object: `Kind namespace/name`, or the document number."""
        kind = self.body.get("kind") or "object"
        metadata = self.body.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str):
            return f"{kind} (document {self.index + 1})"
        namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
        return f"{kind} {namespace}/{name}" if isinstance(namespace, str) else f"{kind} {name}"


def iter_manifest_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named directly, and every manifest file below a named directory, in sorted order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        else:
            yield path


class InputTooLargeError(ValueError):
    """Input beyond one of the bounds above; the message names the bound and the way out."""


@dataclasses.dataclass
class _Budget:
    """What the files read so far used of the per-run bounds."""

    objects: int = 0
    nodes: int = 0


@dataclasses.dataclass
class _Frame:
    """An open collection in the event scan: its expanded size so far and what its children are."""

    kind: str  # "mapping" or "sequence"
    anchor: str | None
    size: int = 1
    children: int = 0
    key: object = None
    holds_objects: bool = False


def _scan(text: str, budget: _Budget) -> None:
    """Count what `text` would build, without building it; InputTooLargeError past a bound.

    Invalid YAML is left to the loader, which reports it with its line and column.
    """
    anchors: dict[str, int] = {}
    stack: list[_Frame] = []

    def count(size: int) -> None:
        # Every node adds to the run's total as it is read (an alias at the size of what it names).
        budget.nodes += size
        if budget.nodes > MAX_YAML_NODES:
            raise InputTooLargeError(
                f"more than {MAX_YAML_NODES} YAML nodes (aliases counted at the size of what they name): "
                "refused before expanding it"
            )

    def done(size: int, anchor: str | None, value: object = None) -> None:
        if anchor is not None:
            anchors[anchor] = size
        if stack:
            parent = stack[-1]
            parent.size += size
            if parent.kind == "mapping" and parent.children % 2 == 0:
                parent.key = value
            parent.children += 1

    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.DocumentStartEvent):
                budget.objects += 1
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                kind = "mapping" if isinstance(event, yaml.MappingStartEvent) else "sequence"
                frame = _Frame(kind, event.anchor)
                if stack and kind == "sequence" and len(stack) == 1 and stack[0].key == "items":
                    frame.holds_objects = True  # a List's items: each is an object, the List is not
                    budget.objects -= 1
                if kind == "mapping" and stack and stack[-1].holds_objects:
                    budget.objects += 1
                stack.append(frame)
                count(1)
                if len(stack) > MAX_YAML_DEPTH:
                    raise InputTooLargeError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frame = stack.pop()
                done(frame.size, frame.anchor)
            elif isinstance(event, yaml.ScalarEvent):
                count(1)
                done(1, event.anchor, event.value)
            elif isinstance(event, yaml.AliasEvent):
                size = anchors.get(str(event.anchor), 1)
                count(size)
                done(size, None)
            if budget.objects > MAX_OBJECTS:
                raise InputTooLargeError(
                    f"more than {MAX_OBJECTS} objects (documents and List items) in one run: split the input"
                )
    except yaml.YAMLError:
        return


def _as_json(value: Any, path: str) -> tuple[Any, str, str]:
    """`value` as the JSON kubectl would send: timestamps as RFC 3339 strings. Else the path and reason of
    what JSON cannot carry (a non-string key, NaN or an infinity)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                return value, where, "keys must be strings"
            out[key], bad, reason = _as_json(item, where)
            if bad:
                return value, bad, reason
        return out, "", ""
    if isinstance(value, list):
        items = []
        for index, item in enumerate(value):
            converted, bad, reason = _as_json(item, f"{path}[{index}]")
            if bad:
                return value, bad, reason
            items.append(converted)
        return items, "", ""
    if isinstance(value, float) and not math.isfinite(value):
        return value, path or "document", f"{value} is not a number JSON can carry"
    if isinstance(value, datetime.datetime):
        return value.isoformat().replace("+00:00", "Z"), "", ""
    if isinstance(value, datetime.date):
        return value.isoformat(), "", ""
    return value, "", ""


def _yaml_problem(name: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return Problem(name, "file", "", f"invalid YAML{at}: {problem}")


def load_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[Problem]]:
    """Every non-empty document in the given files and directories; unreadable input becomes problems.

    The bounds hold per run: once a file passes one, the rest are not read.
    """
    documents: list[Document] = []
    problems: list[Problem] = []
    budget = _Budget()
    for path in iter_manifest_files(paths):
        name = str(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                problems.append(
                    Problem(name, "file", "", f"{size} bytes: larger than the {MAX_FILE_BYTES}-byte limit")
                )
                continue
            text = path.read_text()
        except FileNotFoundError:
            problems.append(Problem(name, "file", "", "no such file or directory"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, "file", "", f"cannot read: {exc}"))
            continue
        try:
            _scan(text, budget)
        except InputTooLargeError as exc:
            problems.append(Problem(name, "file", "", str(exc)))
            break
        try:
            bodies = list(yaml.load_all(text, Loader=_LOADER))
        except yaml.YAMLError as exc:
            problems.append(_yaml_problem(name, exc))
            continue
        except (ValueError, RecursionError) as exc:  # e.g. an integer longer than Python converts
            problems.append(Problem(name, "file", "", f"invalid YAML: {exc}"))
            continue
        for index, body in enumerate(bodies):
            if body is None:
                continue
            body, where, reason = _as_json(body, "")
            if where:
                problems.append(Problem(name, f"document {index + 1}", where, reason))
                continue
            if not isinstance(body, dict):
                problems.append(
                    Problem(
                        name, f"document {index + 1}", "", f"expected a mapping, got {type(body).__name__}"
                    )
                )
                continue
            if body.get("kind") == "List" and isinstance(body.get("items"), list):
                documents.extend(
                    Document(name, index, item) for item in body["items"] if isinstance(item, dict)
                )
                continue
            documents.append(Document(name, index, body))
    return documents, problems
