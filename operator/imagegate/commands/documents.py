"""Manifest and policy files read as YAML (or JSON), safely, with the line of every object.

Each document is composed to nodes first, then built, so every object and every field keeps the
line it came from (`Loaded.line_of`): CI output points at `file:line` (docs/design.md §6.1). The
bounds below hold before any alias is expanded or any object built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from imagegate.errors import UsageError

#: YAML aliases (`*name`) per file. Each alias may repeat a whole subtree, so a few nested ones
#: make half a kilobyte mean gigabytes (the "billion laughs"); manifests rarely use any.
MAX_ALIASES = 10
#: Nesting of mappings and sequences, as for AdmissionReviews (admission/review.py): Kubernetes
#: objects are far shallower, and PyYAML's composer recurses once per level.
MAX_NESTING = 100


class BadFile(UsageError):
    """A file that cannot be read or is not YAML objects; `line` is 0 when unknown."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


class _Refused(yaml.YAMLError):
    """A YAML bound in `_BoundedLoader`; the message completes "FILE ..."."""


class _BoundedLoader(yaml.SafeLoader):
    """`SafeLoader` that refuses more than `MAX_ALIASES` aliases, recursive aliases, and
    nesting past `MAX_NESTING`, before any of it is expanded or built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._open_anchors: list[str | None] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"has more than {MAX_ALIASES} YAML aliases (*name)")
            if event.anchor in self._open_anchors:
                raise _Refused(f"has a recursive YAML alias (*{event.anchor})")
            return super().compose_node(parent, index)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        if len(self._open_anchors) >= MAX_NESTING:
            raise _Refused(f"nests deeper than {MAX_NESTING} levels")
        self._open_anchors.append(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()


@dataclass(frozen=True)
class Loaded:
    """One object of a file, with the YAML node it was built from (for line numbers)."""

    origin: str
    document: dict[str, Any]
    node: yaml.Node

    @property
    def line(self) -> int:
        """1-based line where the object starts."""
        return int(self.node.start_mark.line) + 1

    def line_of(self, pointer: str) -> int:
        """1-based line of the field at RFC 6901 `pointer` (through an alias or a `<<` merge:
        where the value is written); the object's line when the path is not in the nodes."""
        node: yaml.Node | None = self.node
        for segment in filter(None, pointer.split("/")):
            node = _child(node, segment.replace("~1", "/").replace("~0", "~"))
            if node is None:
                return self.line
        return int(node.start_mark.line) + 1 if node is not None else self.line


def _child(node: yaml.Node | None, segment: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        # The last of equal keys is the one built (building also flattens `<<` merges in here).
        return next((value for key, value in reversed(node.value) if key.value == segment), None)
    if isinstance(node, yaml.SequenceNode) and segment.isdigit():
        index = int(segment)
        return node.value[index] if index < len(node.value) else None
    return None


def kind_of(document: Mapping[str, Any]) -> str:
    """The document's kind when it is a string, else "": never `str()` of what a file holds."""
    kind = document.get("kind")
    return kind if isinstance(kind, str) else ""


def read(source: str, stdin: TextIO) -> list[Loaded]:
    """Every object in one file (`-` is stdin), Lists unpacked; raises `BadFile`."""
    try:
        text = stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        raise BadFile(f"cannot read {source}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise BadFile(f"{source} is not text: {error.reason}") from error
    try:
        documents = list(_compose_and_build(text))
    except _Refused as error:
        raise BadFile(f"{source} {error}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = int(mark.line) + 1 if mark is not None else 0
        message = f"{source} is not YAML or JSON: {error}".splitlines()[0]
        raise BadFile(message, line) from error
    found: list[Loaded] = []
    for index, (node, document) in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise BadFile(
                f"{source}: document {index + 1} is not an object", node.start_mark.line + 1
            )
        found.extend(_unpack(Loaded(source, document, node)))
    return found


def _compose_and_build(text: str) -> Iterator[tuple[yaml.Node, Any]]:
    """(node, object) per document: what `yaml.load_all` does, keeping the node."""
    loader = _BoundedLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                yield node, loader.construct_document(node)
    finally:
        loader.dispose()


def _unpack(loaded: Loaded) -> Iterator[Loaded]:
    document = loaded.document
    if not (kind_of(document).endswith("List") and isinstance(document.get("items"), list)):
        yield loaded
        return
    items = _child(loaded.node, "items")
    for index, item in enumerate(document["items"]):
        if isinstance(item, dict):
            node = _child(items, str(index)) or loaded.node
            yield from _unpack(Loaded(loaded.origin, item, node))
