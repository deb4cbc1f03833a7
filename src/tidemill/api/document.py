"""Job and cluster documents parsed with bounded work, and checked before any model sees them.

Parsing is where one small request can cost the most: a 384-byte YAML "billion laughs"
expands to a billion nodes, 10,000 nested brackets exhaust the stack. So the text's
size is capped, YAML's composed node graph is measured (with memoization, so a bomb
costs what it weighs in bytes) before any Python object is built, and the parsed
document is scanned for values nothing downstream can hold: integers beyond int64,
inf and nan, lone surrogates and NUL characters.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from tidemill.api.errors import FieldError, SpecError
from tidemill.api.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_ALIAS_NODES,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING_DEPTH,
    shown,
    text_problem,
    utf8_size,
)

_MAX_PROBLEMS = 20
"""A scan stops after this many problems: enough to act on, never a flood."""
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML was built with it: several times faster."""


class _BoundedLoader(_FAST_LOADER):  # type: ignore[valid-type,misc]
    """A safe loader that measures the node graph before constructing anything."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        problem = _graph_problem(node)
        if problem is not None:
            raise _GraphError(problem)
        return self.construct_document(node)


class _GraphError(Exception):
    """The composed YAML would cost too much to build (aliases, nesting)."""


def parse_document(text: str, source: str = "<input>") -> dict[str, Any]:
    """Parse YAML (JSON is a subset) into a mapping, with line numbers on syntax errors.

    Raises SpecError for text over :data:`MAX_DOCUMENT_BYTES`, nesting deeper than
    :data:`MAX_NESTING_DEPTH` (YAML) or than the stack allows (JSON), and aliases that
    add more than :data:`MAX_ALIAS_NODES` nodes or refer to themselves. The values are
    checked by :func:`check_document`, which the loaders call.
    """
    size = len(text) if len(text) > MAX_DOCUMENT_BYTES else utf8_size(text)
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError.single(
            source,
            f"the document is {size:,} bytes; at most {MAX_DOCUMENT_BYTES:,} bytes (1 MiB) "
            "are accepted; a job file is a few KiB: move data out of it",
        )
    try:
        document = _fast_json(text)
        if document is None:
            document = yaml.load(text, Loader=_BoundedLoader)
    except RecursionError:
        raise SpecError.single(source, _too_deep()) from None
    except _GraphError as exc:
        raise SpecError.single(source, str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError.single(source, f"{where}not valid YAML: {problem}") from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError.single(source, f"expected a mapping with apiVersion/kind, got {kind}")
    return document


def check_document(document: dict[str, Any]) -> None:
    """Refuse values no field can hold, wherever they are, with the path to each.

    Numbers must be finite and within int64 (no field needs more); mapping keys are one
    line of text; strings hold no lone surrogate, NUL or control character other than tab
    and line breaks. Nesting is bounded. Field rules (names, sizes) live in the models.
    """
    errors: list[FieldError] = []
    stack: list[tuple[str, object, int]] = [("", document, 1)]
    while stack and len(errors) < _MAX_PROBLEMS:
        path, value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_NESTING_DEPTH:
            errors.append(FieldError(path, _too_deep()))
            continue
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                name = str(key)
                problem = text_problem(name) if isinstance(key, str) else None
                child = _join(path, name if problem is None else shown(name))
                if problem is not None:
                    errors.append(FieldError(child, f"the field name {problem}"))
                else:
                    stack.append((child, item, depth + 1))
        elif isinstance(value, list):
            for index in reversed(range(len(value))):
                stack.append((_join(path, str(index)), value[index], depth + 1))
        else:
            problem = _scalar_problem(value)
            if problem is not None:
                errors.append(FieldError(path, problem))
    if errors:
        raise SpecError(errors)


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, str):
        return text_problem(value, multiline=True)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return (
            f"{shown(value)} is beyond the 64-bit integer range; use a whole number between "
            f"{INT64_MIN} and {INT64_MAX}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number; write an ordinary number such as 1 or 0.5"
    if isinstance(value, float) and not INT64_MIN <= value <= INT64_MAX:
        return (
            f"{value:g} is beyond the 64-bit range every field fits in; use a number between "
            f"{INT64_MIN} and {INT64_MAX}"
        )
    return None


def _join(path: str, part: str) -> str:
    return f"{path}.{part}" if path else part


def _too_deep() -> str:
    return (
        f"lists and mappings are nested more than {MAX_NESTING_DEPTH} levels deep; "
        "a job file needs fewer than 10"
    )


def _fast_json(text: str) -> Any | None:
    """JSON bodies (what the CLI and SDK send) skip the YAML parser entirely."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None  # let the YAML parser report it, with a line number


def _graph_problem(root: yaml.Node) -> str | None:
    """Why the composed graph is too costly to construct, or None.

    Aliases make the graph a DAG (or, with an alias inside its own anchor, a cycle);
    the tree it stands for is counted bottom-up with memoization, so the count of a
    billion-node bomb costs as much as its hundred distinct nodes.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            if depth[key] > MAX_NESTING_DEPTH:
                return _too_deep()
            continue
        if key in size:
            continue
        if key in open_nodes:
            return (
                f"line {node.start_mark.line + 1}: an alias inside its own anchor makes the "
                "document infinite; refer only to anchors outside the alias"
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    written = len(size)
    expanded = size[id(root)]
    if expanded - written > MAX_ALIAS_NODES:
        return (
            f"aliases expand this document to {_count(expanded)} nodes from {written:,} "
            f"written out; aliases may add at most {MAX_ALIAS_NODES:,}: write repeated "
            "parts out, or reuse fewer anchors"
        )
    return None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _count(number: int) -> str:
    """Exact below a trillion, then in powers of ten (a bomb's count has 90 digits)."""
    return f"{number:,}" if number < 10**12 else f"about 10^{len(str(number)) - 1}"
