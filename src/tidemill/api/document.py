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

    Raises SpecError for text over :data:`MAX_DOCUMENT_BYTES`, nesting deeper than the
    parser allows, and aliases that add more than :data:`MAX_ALIAS_NODES` nodes or refer
    to themselves. Values and nesting depth are checked by :func:`check_document`,
    which the loaders call.
    """
    size = len(text) if len(text) > MAX_DOCUMENT_BYTES else utf8_size(text)
    if size > MAX_DOCUMENT_BYTES:
        raise SpecError.single(
            source,
            f"the document is {size:,} bytes; at most {MAX_DOCUMENT_BYTES:,} bytes (1 MiB) "
            "are accepted; job and cluster files are a few KiB: move data out of it",
        )
    try:
        document = _fast_json(text)
        if document is None:
            # Without both an anchor and an alias mark nothing can be shared.
            loader = _BoundedLoader if "&" in text and "*" in text else _FAST_LOADER
            document = yaml.load(text, Loader=loader)
    except RecursionError:
        raise SpecError.single(source, _too_deep()) from None
    except UnicodeEncodeError as exc:
        raise SpecError.single(
            source,
            f"character {exc.start} is a lone surrogate, not valid UTF-8 text; send "
            "well-formed Unicode",
        ) from None
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
    stack: list[tuple[str, dict[Any, Any] | list[Any], int]] = [("", document, 1)]
    while stack and len(errors) < _MAX_PROBLEMS:
        path, container, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            shown_path = path if len(path) <= 100 else f"{path[:97]}..."
            errors.append(FieldError(shown_path, _too_deep()))
            continue
        items = (
            _named_items(path, container, errors)
            if isinstance(container, dict)
            else enumerate(container)
        )
        children: list[tuple[str, dict[Any, Any] | list[Any], int]] = []
        for part, item in items:
            if isinstance(item, dict | list):
                children.append((_join(path, str(part)), item, depth + 1))
                continue
            problem = _scalar_problem(item)
            if problem is not None:
                errors.append(FieldError(_join(path, str(part)), problem))
        stack.extend(reversed(children))
    if errors:
        raise SpecError(errors[:_MAX_PROBLEMS])


def _named_items(
    path: str, mapping: dict[Any, Any], errors: list[FieldError]
) -> list[tuple[str, Any]]:
    """The mapping's items by printable key; keys that are not text are reported."""
    items = []
    for key, item in mapping.items():
        name = str(key)
        problem = text_problem(name) if isinstance(key, str) else None
        if problem is not None:
            errors.append(FieldError(_join(path, shown(name)), f"the field name {problem}"))
        else:
            items.append((name if len(name) <= 64 else shown(name), item))
    return items


def _scalar_problem(value: object) -> str | None:
    """Exact types first: this runs once per value of a document of up to 1 MiB."""
    if type(value) is int:
        if INT64_MIN <= value <= INT64_MAX:
            return None
        return (
            f"{shown(value)} is beyond the 64-bit integer range; use a whole number between "
            f"{INT64_MIN} and {INT64_MAX}"
        )
    if type(value) is str:
        return text_problem(value, multiline=True)
    if type(value) is float:
        if not math.isfinite(value):
            return f"{value} is not a finite number; write an ordinary number such as 1 or 0.5"
        if not INT64_MIN <= value <= INT64_MAX:
            return (
                f"{value:g} is beyond the 64-bit range every field fits in; use a number "
                f"between {INT64_MIN} and {INT64_MAX}"
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
    billion-node bomb costs as much as its hundred distinct nodes. Scalars are leaves
    counted in place: only collections are visited, so a long flat list costs one pass.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    opened: set[int] = set()
    written = 0
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in size:
            stack.pop()
            continue
        children = _children(node)
        if key not in opened:
            opened.add(key)
            pending = [c for c in children if not _is_leaf(c) and id(c) not in size]
            if any(id(c) in opened for c in pending):
                return (
                    f"line {node.start_mark.line + 1}: an alias inside its own anchor makes "
                    "the document infinite; refer only to anchors outside the alias"
                )
            if pending:
                stack.extend(pending)
                continue
        leaves = sum(1 for c in children if _is_leaf(c))
        inner = [id(c) for c in children if not _is_leaf(c)]
        size[key] = 1 + leaves + sum(size[c] for c in inner)
        depth[key] = 1 + max((depth[c] for c in inner), default=1 if leaves else 0)
        if depth[key] > MAX_NESTING_DEPTH:
            return _too_deep()
        written += 1 + leaves
        stack.pop()
    expanded = size.get(id(root), 1)
    if expanded - written > MAX_ALIAS_NODES:
        return (
            f"aliases expand this document to {_count(expanded)} nodes from {written:,} "
            f"written out; aliases may add at most {MAX_ALIAS_NODES:,}: write repeated "
            "parts out, or reuse fewer anchors"
        )
    return None


def _is_leaf(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _count(number: int) -> str:
    """Exact below a trillion, then in powers of ten (a bomb's count has 90 digits)."""
    return f"{number:,}" if number < 10**12 else f"about 10^{len(str(number)) - 1}"
