"""Strict reading of YAML documents with a location for every error.

PyYAML's ``safe_load`` silently keeps the last of two duplicate keys and turns
``off``/``no``/``yes`` into booleans.  hush's policy and config files are read
instead with ``yaml.compose`` and walked node by node, so every problem is
reported as ``file:line:col: message`` and all problems are reported at once::

    reader = Reader("policies/whatsapp.yaml")
    root = reader.compose(text)
    fields = reader.mapping(root, required={"app"}, allowed={"app", "rules"})
    app = reader.string(fields["app"].value, "app")
    if reader.errors:
        raise LoadError(reader.errors)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import yaml

_Loader: type[yaml.CSafeLoader] | type[yaml.SafeLoader]
try:  # libyaml's composer is ~10x faster on 100k-entry block lists
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))


@dataclasses.dataclass(frozen=True, order=True)
class Location:
    """A place in a file; ``line`` and ``col`` count from 1."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    @property
    def short(self) -> str:
        """``file:line``, the form audit rows and ``explain`` use."""
        return f"{self.file}:{self.line}"


@dataclasses.dataclass(frozen=True, order=True)
class LocatedError:
    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class LoadError(Exception):
    """Raised with every error found in a set of files."""

    def __init__(self, errors: Iterable[LocatedError]):
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class Field(NamedTuple):
    key: yaml.Node
    value: yaml.Node


def _quoted(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return "an empty value" if node.tag == NULL else repr(node.value)
    return f"a {kind(node)}"


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return {
        STR: "string",
        INT: "number",
        FLOAT: "number",
        BOOL: "boolean",
        NULL: "null",
    }.get(node.tag, "scalar")


class Reader:
    """Collects errors for one file while its nodes are converted."""

    def __init__(self, file: str, read=None):
        self.file = file
        self.read = read  # how to fetch files this one refers to (policy host lists)
        self.errors: list[LocatedError] = []

    # -- locations and errors ------------------------------------------------

    def loc(self, node: yaml.Node) -> Location:
        mark = node.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1)

    def error(self, node: yaml.Node | Location, message: str) -> None:
        loc = node if isinstance(node, Location) else self.loc(node)
        self.errors.append(LocatedError(loc, message))

    # -- documents -------------------------------------------------------------

    def compose(self, text: str) -> yaml.Node | None:
        """Parse one YAML document into nodes; syntax errors are recorded."""
        try:
            nodes = list(yaml.compose_all(text, Loader=_Loader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = e.problem or e.context or "invalid YAML"
            self.error(Location(self.file, line, col), f"YAML syntax error: {problem}")
            return None
        except yaml.YAMLError as e:  # pragma: no cover - reader errors (bad bytes)
            self.error(Location(self.file, 1, 1), f"YAML error: {e}")
            return None
        if len(nodes) > 1:
            self.error(nodes[1], "only one YAML document is allowed per file")
        if not nodes or nodes[0] is None:
            self.error(Location(self.file, 1, 1), "the file is empty")
            return None
        return nodes[0]

    # -- shapes ----------------------------------------------------------------

    def mapping(
        self,
        node: yaml.Node,
        *,
        allowed: Iterable[str] | None,
        required: Iterable[str] = (),
        what: str = "",
    ) -> dict[str, Field]:
        """The fields of a mapping; duplicate, unknown and missing keys are errors.

        ``allowed=None`` accepts any key (mappings whose keys are data).
        """
        allowed = None if allowed is None else set(allowed)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what or 'this'} must be a mapping, not {_quoted(node)}")
            return {}
        fields: dict[str, Field] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != STR:
                self.error(key, f"keys must be strings, not {_quoted(key)}")
                continue
            name = key.value
            if name in fields:
                first = self.loc(fields[name].key)
                self.error(key, f"duplicate key '{name}' (first at line {first.line})")
                continue
            if allowed is not None and name not in allowed:
                expected = ", ".join(sorted(allowed))
                self.error(key, f"unknown key '{name}' (expected one of: {expected})")
                continue
            fields[name] = Field(key, value)
        for name in sorted(set(required) - fields.keys()):
            self.error(node, f"missing required key '{name}'" + (f" in {what}" if what else ""))
        return fields

    def items(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """A list's items; a single scalar stands for a list of one."""
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag != NULL:
            return [node]
        self.error(node, f"{what} must be a value or a list, not {_quoted(node)}")
        return []

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        """A list's items; an empty value (``rules:``) is an empty list."""
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL:
            return []
        self.error(node, f"{what} must be a list, not {_quoted(node)}")
        return []

    # -- scalars ---------------------------------------------------------------

    def string(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            if node.value == "":
                self.error(node, f"{what} must not be empty")
                return None
            return node.value
        if isinstance(node, yaml.ScalarNode) and node.tag == BOOL:
            self.error(
                node,
                f"{what}: {node.value!r} is read by YAML 1.1 as a boolean; "
                f"quote it (\"{node.value}\") if you mean the string",
            )
            return None
        if isinstance(node, yaml.ScalarNode) and node.tag in (INT, FLOAT):
            self.error(node, f"{what} must be a string, not the number {node.value}; quote it")
            return None
        self.error(node, f"{what} must be a string, not {_quoted(node)}")
        return None

    def integer(self, node: yaml.Node, what: str, lo: int, hi: int) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == INT:
            try:
                value = int(node.value.replace("_", ""), 0)
            except ValueError:
                value = None
            if value is not None and lo <= value <= hi:
                return value
            self.error(node, f"{what} must be between {lo} and {hi}, not {node.value}")
            return None
        self.error(node, f"{what} must be a whole number, not {_quoted(node)}")
        return None

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == BOOL:
            if node.value in ("true", "false"):
                return node.value == "true"
            self.error(node, f"{what} must be true or false, not {node.value!r} (YAML 1.1 spelling)")
            return None
        self.error(node, f"{what} must be true or false, not {_quoted(node)}")
        return None

    def choice(self, node: yaml.Node, what: str, choices: Iterable[str]) -> str | None:
        choices = sorted(choices)
        value = self.string(node, what)
        if value is None:
            return None
        if value not in choices:
            self.error(node, f"unknown {what} {value!r} (expected one of: {', '.join(choices)})")
            return None
        return value
