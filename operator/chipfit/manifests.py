"""Read YAML manifests (files or directories) into documents, with one-line problems instead of tracebacks."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


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


def load_documents(paths: Iterable[str | Path]) -> tuple[list[Document], list[Problem]]:
    """Every non-empty document in the given files and directories; unreadable input becomes problems."""
    documents: list[Document] = []
    problems: list[Problem] = []
    for path in iter_manifest_files(paths):
        name = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            problems.append(Problem(name, "file", "", "no such file or directory"))
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(name, "file", "", f"cannot read: {exc}"))
            continue
        try:
            bodies = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            problems.append(Problem(name, "file", "", f"invalid YAML{at}: {problem}"))
            continue
        for index, body in enumerate(bodies):
            if body is None:
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
