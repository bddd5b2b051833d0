"""The inputs of a step: their JSON Schema and their checking, from type hints.

A step's inputs are a dataclass (or a TypedDict). `InputType(cls)` reads its type hints
once (when the step is declared, so an unsupported type fails the build, not a run) and
gives both halves of the contract the Rust SDK gets from serde and schemars:

- `schema()`: the JSON Schema (draft 2020-12) `describe` returns. The host shows it in
  `hoist step describe` and checks project files against it in `hoist plan`.
- `decode(value)`: the typed inputs from the JSON object the host sends, refusing
  unknown inputs (serde's `deny_unknown_fields`) with errors in the Rust SDK's words
  (`input `env.N`: expected a string, got integer `3``), so a user reads the same
  message whichever language the step is written in.

Pure Python, no bindings: it is tested under plain CPython.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import math
import re
import types
import typing
from collections import abc
from decimal import Decimal
from typing import Any, Literal, Optional, Union

#: The dialect `describe` promises (`description.input-schema` in `wit/step.wit`).
DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: A place in the inputs: field names and list indexes, from the root.
Path = tuple


class InputError(Exception):
    """An input the step cannot take; `str()` is the message the user sees."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = format_path(path)
        self.detail = message
        super().__init__(input_error(self.path, message))


def format_path(path: Path) -> str:
    """`env.N`, `dirs[1]`, `.` for the root: serde_path_to_error's spelling, which the
    Rust SDK and `hoist plan` print."""
    if not path:
        return "."
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += ("." if out else "") + str(seg)
    return out


def input_error(path: str, message: str) -> str:
    """The Rust SDK's `input_error`: the path (unless it is the root) before the message."""
    return message if path in (".", "") else f"input `{path}`: {message}"


def one_of(names: list) -> str:
    """serde's `OneOf`: `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` ``."""
    quoted = [f"`{n}`" for n in names]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return "one of " + ", ".join(quoted)


def _float_text(f: float) -> str:
    """A float as Rust prints it in serde's messages: never an exponent, always a point
    (`1.0`, `100000000000000000000.0`)."""
    if not math.isfinite(f):  # Python's json reads `NaN` and `Infinity`; serde does not
        return repr(f)
    text = format(Decimal(repr(f)), "f")
    return text if "." in text else text + ".0"


def got(value: Any) -> str:
    """What a JSON value is, in serde's words as the Rust SDK rewrites them
    (`integer `3``, `string "x"`, `a list`, `a mapping`, `null`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{_float_text(value)}`"
    if isinstance(value, str):
        return "string " + json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _literal_text(value: Any) -> str:
    """A literal as `one_of` lists it: strings bare (like serde's variant names), the
    rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def to_json(value: Any) -> Any:
    """`value` as JSON data: dataclasses as mappings, enums as their values, tuples and
    sets as lists. Used for defaults in the schema and for a step's outputs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON data")


# --- Docstrings -------------------------------------------------------------------------

#: Google-style section headers whose entries describe fields.
_FIELD_SECTIONS = ("Attributes", "Args", "Arguments", "Fields", "Inputs", "Parameters")
_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:(?:\s+(.*))?$")


def _own_doc(cls: type) -> Optional[str]:
    """`cls`'s docstring, or None when it has none of its own: `dataclass` invents one
    from the signature (`Inputs(name: str)`), which describes nothing."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return None
    if dataclasses.is_dataclass(cls) and re.fullmatch(
        re.escape(cls.__name__) + r"\(.*\)", doc.strip(), re.S
    ):
        return None
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and doc.strip() in (
        "An enumeration.",
        "",
    ):
        return None
    return doc


def parse_docstring(doc: Optional[str]) -> tuple:
    """`(summary, {field: description})` of a class docstring.

    The summary is the first paragraph (lines joined), unless it is a section header.
    Field descriptions come from an `Attributes:` (or `Args:`, `Fields:`...) section:

        Attributes:
            name: Who to greet.
            retries (int): How many times to try,
                before giving up.
    """
    if not doc:
        return None, {}
    para: list = []
    for line in inspect.cleandoc(doc).split("\n"):
        if not line.strip():
            break
        para.append(line.strip())
    summary = " ".join(para) or None
    if summary and _SECTION.match(para[0]):
        summary = None
    # Indentation is read from the raw text: `cleandoc` would flatten the entries of a
    # section that opens the docstring (`"""Attributes:\n    name: ..."""`) to the
    # header's level. A header on the first line has lost its indentation, so any
    # indentation counts as deeper.
    lines = doc.expandtabs().split("\n")
    fields: dict = {}
    i = 0
    while i < len(lines):
        m = _SECTION.match(lines[i].strip())
        if not (m and m.group(1) in _FIELD_SECTIONS):
            i += 1
            continue
        header = -1 if i == 0 else _indent(lines[i])
        i += 1
        indent = None
        current = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            width = _indent(line)
            if width <= header or (indent is not None and width < indent):
                break
            if indent is None:
                indent = width
            entry = _ENTRY.match(line.strip()) if width == indent else None
            if entry:
                current = entry.group(1)
                fields[current] = (entry.group(2) or "").strip()
            elif current is not None:
                fields[current] = (fields[current] + " " + line.strip()).strip()
            i += 1
    return summary, fields


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


# --- Types --------------------------------------------------------------------------------


class _Defs:
    """The `$defs` of a schema being built: one entry per nested class, by its name
    (`Name2` if two classes share one)."""

    def __init__(self, root: type) -> None:
        self.root = root
        self.names: dict = {}
        self.schemas: dict = {}

    def ref(self, node: "_Object") -> dict:
        if node.cls is self.root:
            return {"$ref": "#"}
        name = self.names.get(node.cls)
        if name is None:
            name = node.cls.__name__
            n = 2
            while name in self.schemas:
                name = f"{node.cls.__name__}{n}"
                n += 1
            self.names[node.cls] = name
            self.schemas[name] = {}  # reserved first: a class may refer to itself
            self.schemas[name] = node.object_schema(self)
        return {"$ref": f"#/$defs/{name}"}


class _Node:
    """One type of the inputs: its schema, its words in errors, its decoding."""

    #: What the value should be, in an error (`a string`).
    expected = "a value"
    #: The JSON kinds (`got()` classes) this type may take, to pick a union's option.
    kinds: frozenset = frozenset()

    def schema(self, defs: _Defs) -> dict:
        raise NotImplementedError

    def decode(self, value: Any, path: Path) -> Any:
        raise NotImplementedError

    def mismatch(self, value: Any, path: Path) -> InputError:
        return InputError(path, f"expected {self.expected}, got {got(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _Any(_Node):
    expected = "a value"
    kinds = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})

    def schema(self, defs: _Defs) -> dict:
        return {}

    def decode(self, value: Any, path: Path) -> Any:
        return value


class _Scalar(_Node):
    def __init__(self, json_type: str, expected: str, kinds: set, convert=None) -> None:
        self.json_type = json_type
        self.expected = expected
        self.kinds = frozenset(kinds)
        self.convert = convert

    def schema(self, defs: _Defs) -> dict:
        return {"type": self.json_type}

    def decode(self, value: Any, path: Path) -> Any:
        if _kind(value) not in self.kinds:
            raise self.mismatch(value, path)
        return self.convert(value) if self.convert else value


_STR = _Scalar("string", "a string", {"string"})
# JSON has one kind of number; serde's i64 refuses `1.0`, so does this.
_INT = _Scalar("integer", "an integer", {"integer"})
_FLOAT = _Scalar("number", "a number", {"integer", "number"}, float)
_BOOL = _Scalar("boolean", "a boolean", {"boolean"})
_NULL = _Scalar("null", "null", {"null"})


class _List(_Node):
    expected = "a list"
    kinds = frozenset({"array"})

    def __init__(self, item: _Node, make=list) -> None:
        self.item = item
        self.make = make

    def schema(self, defs: _Defs) -> dict:
        items = self.item.schema(defs)
        return {"type": "array", "items": items if items else True}

    def decode(self, value: Any, path: Path) -> Any:
        if not isinstance(value, list):
            raise self.mismatch(value, path)
        return self.make(self.item.decode(v, path + (i,)) for i, v in enumerate(value))


class _Dict(_Node):
    expected = "a mapping"
    kinds = frozenset({"object"})

    def __init__(self, value: _Node) -> None:
        self.value = value

    def schema(self, defs: _Defs) -> dict:
        values = self.value.schema(defs)
        return {"type": "object", "additionalProperties": values if values else True}

    def decode(self, value: Any, path: Path) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, path)
        return {k: self.value.decode(v, path + (k,)) for k, v in value.items()}


class _Choice(_Node):
    """`Literal[...]` or an `Enum`: one of fixed values."""

    def __init__(self, values: list, make=None) -> None:
        self.values = values
        self.make = make
        self.expected = one_of([_literal_text(v) for v in values])
        self.kinds = frozenset(_kind(v) for v in values)

    def schema(self, defs: _Defs) -> dict:
        kinds = {_kind(v) for v in self.values}
        out: dict = {}
        if len(kinds) == 1:
            out["type"] = kinds.pop()
        if len(self.values) == 1:
            out["const"] = self.values[0]
        else:
            out["enum"] = list(self.values)
        return out

    def decode(self, value: Any, path: Path) -> Any:
        # `True == 1` in Python; JSON's `true` is not the literal `1`.
        for v in self.values:
            if type(v) is type(value) and v == value:
                return self.make(value) if self.make else value
        raise self.mismatch(value, path)


class _Union(_Node):
    """`Optional[X]`, `X | None`, `Union[A, B]`: the first option that takes the value."""

    def __init__(self, options: list) -> None:
        self.options = options
        non_null = [o for o in options if o is not _NULL]
        # serde reports an `Option<T>` mismatch in T's words; so does this.
        self.expected = " or ".join(o.expected for o in non_null) or "null"
        self.kinds = frozenset().union(*(o.kinds for o in options))

    def schema(self, defs: _Defs) -> dict:
        schemas = [o.schema(defs) for o in self.options]
        if any(not s for s in schemas):
            return {}
        simple = [s for s in schemas if set(s) == {"type"} and isinstance(s["type"], str)]
        if len(simple) == len(schemas):
            return {"type": [s["type"] for s in schemas]}
        # `Optional[list[str]]` as schemars writes `Option<Vec<String>>`: one node.
        if len(schemas) == 2 and {"type": "null"} in schemas:
            other = schemas[0] if schemas[1] == {"type": "null"} else schemas[1]
            if isinstance(other.get("type"), str) and not {"enum", "const", "$ref"} & set(other):
                return {**other, "type": [other["type"], "null"]}
        return {"anyOf": schemas}

    def decode(self, value: Any, path: Path) -> Any:
        kind = _kind(value)
        fitting = [o for o in self.options if kind in o.kinds]
        # One option takes this kind of value: its own error says more (a nested path).
        if len(fitting) == 1:
            return fitting[0].decode(value, path)
        for option in fitting:
            try:
                return option.decode(value, path)
            except InputError:
                continue
        raise self.mismatch(value, path)


class _Field:
    def __init__(self, name: str, node: _Node, required: bool, fill, default, doc) -> None:
        self.name = name
        self.node = node
        self.required = required
        #: What to pass when the input is absent (`_ABSENT`: nothing, the class has a default).
        self.fill = fill
        self.default = default
        self.doc = doc


_ABSENT = object()


class _Object(_Node):
    """A dataclass or TypedDict: a mapping with known keys and no others."""

    expected = "a mapping"
    kinds = frozenset({"object"})

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: dict = {}
        self.summary: Optional[str] = None

    def build(self, seen: dict) -> None:
        cls = self.cls
        self.summary, docs = parse_docstring(_own_doc(cls))
        hints = typing.get_type_hints(cls, include_extras=True)
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if not f.init:
                    continue
                tp = hints.get(f.name, Any)
                node, note = _compile(tp, seen)
                has_default = (
                    f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                )
                default = _ABSENT
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                    default = f.default_factory()  # type: ignore[misc]
                nullable = _takes_null(node)
                doc = f.metadata.get("description") or note or docs.get(f.name)
                self.fields[f.name] = _Field(
                    f.name,
                    node,
                    required=not has_default and not nullable,
                    fill=_ABSENT if has_default else None,
                    default=default,
                    doc=doc,
                )
        else:  # TypedDict
            required_keys = getattr(cls, "__required_keys__", frozenset(hints))
            for name, tp in hints.items():
                node, note = _compile(tp, seen)
                nullable = _takes_null(node)
                self.fields[name] = _Field(
                    name,
                    node,
                    required=name in required_keys and not nullable,
                    fill=None if name in required_keys else _ABSENT,
                    default=_ABSENT,
                    doc=note or docs.get(name),
                )

    def schema(self, defs: _Defs) -> dict:
        return defs.ref(self)

    def object_schema(self, defs: _Defs) -> dict:
        out: dict = {}
        if self.summary:
            out["description"] = self.summary
        out["type"] = "object"
        props: dict = {}
        for f in self.fields.values():
            p = dict(f.node.schema(defs))
            if f.doc:
                p = {"description": f.doc, **p}
            if f.default is not _ABSENT:
                try:
                    p["default"] = to_json(f.default)
                except TypeError:
                    pass  # not JSON data: the step still has it, the schema cannot say it
            props[f.name] = p
        out["properties"] = props
        out["additionalProperties"] = False
        required = [f.name for f in self.fields.values() if f.required]
        if required:
            out["required"] = required
        return out

    def decode(self, value: Any, path: Path) -> Any:
        if not isinstance(value, dict):
            raise self.mismatch(value, path)
        given: dict = {}
        # In the order given, as serde reads them: an unknown input is reported as
        # itself, before the missing one it may be a misspelling of.
        for key, v in value.items():
            f = self.fields.get(key)
            if f is None:
                if not self.fields:
                    raise InputError(path, f"unknown input `{key}`, there are no fields")
                raise InputError(
                    path, f"unknown input `{key}` (it takes {one_of(list(self.fields))})"
                )
            given[key] = f.node.decode(v, path + (key,))
        for f in self.fields.values():
            if f.name in given:
                continue
            if f.required:
                raise InputError(path, f"missing input `{f.name}`")
            if f.fill is not _ABSENT:
                given[f.name] = f.fill
        if not dataclasses.is_dataclass(self.cls):
            return given
        try:
            return self.cls(**given)
        except ValueError as e:
            # A check in `__post_init__`: about this object's inputs.
            raise InputError(path, str(e)) from None


def _takes_null(node: _Node) -> bool:
    return isinstance(node, _Any) or "null" in node.kinds


def _compile(tp: Any, seen: dict) -> tuple:
    """The node for type `tp`, and the description an `Annotated[T, "..."]` gives it."""
    note = None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        args = typing.get_args(tp)
        note = next((a for a in args[1:] if isinstance(a, str)), None)
        node, inner = _compile(args[0], seen)
        return node, note or inner
    return _node(tp, origin, seen), note


def _node(tp: Any, origin: Any, seen: dict) -> _Node:
    if tp is Any or tp is object:
        return _Any()
    if tp is str:
        return _STR
    if tp is bool:
        return _BOOL
    if tp is int:
        return _INT
    if tp is float:
        return _FLOAT
    if tp is None or tp is type(None):
        return _NULL
    args = typing.get_args(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        options = [_compile(a, seen)[0] for a in args]
        # `Optional[Any]` is `Any`.
        if any(isinstance(o, _Any) for o in options):
            return _Any()
        return _Union(options)
    if origin is Literal:
        return _Choice(list(args))
    if tp in (list, abc.Sequence) or origin in (list, abc.Sequence):
        return _List(_compile(args[0], seen)[0] if args else _Any())
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _List(_compile(args[0], seen)[0], tuple)
    if tp in (dict, abc.Mapping) or origin in (dict, abc.Mapping):
        if args and args[0] is not str:
            raise TypeError(f"mapping keys must be str (JSON's are), not {args[0]!r}")
        return _Dict(_compile(args[1], seen)[0] if args else _Any())
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _Choice([m.value for m in tp], tp)
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)):
        node = seen.get(tp)
        if node is None:
            node = seen[tp] = _Object(tp)
            node.build(seen)
        return node
    raise TypeError(
        f"inputs of type {tp!r} are not supported: use str, int, float, bool, list[X], "
        "dict[str, X], Optional[X], Literal[...], an Enum, Any, or a dataclass"
    )


class InputType:
    """A step's inputs class, read once: its schema and its decoding.

    `cls` is a dataclass or a TypedDict; `None` stands for a step without inputs (an
    empty object, nothing else accepted).
    """

    def __init__(self, cls: Optional[type]) -> None:
        if cls is not None and not (dataclasses.is_dataclass(cls) or typing.is_typeddict(cls)):
            raise TypeError(f"a step's inputs must be a dataclass or a TypedDict, not {cls!r}")
        self.cls = cls
        self._root = _Object(cls) if cls is not None else None
        if self._root is not None:
            self._root.build({cls: self._root})

    def schema(self) -> dict:
        """The JSON Schema (draft 2020-12) of the inputs object, laid out as schemars
        lays out the Rust SDK's (`title`, `properties`, `required`, `$defs`)."""
        head = {"$schema": DIALECT}
        if self._root is None:
            return {
                **head,
                "title": "Inputs",
                "type": "object",
                "properties": {},
                "additionalProperties": False,
            }
        defs = _Defs(self.cls)
        body = self._root.object_schema(defs)
        out = {**head, "title": self.cls.__name__, **body}
        if defs.schemas:
            out["$defs"] = defs.schemas
        return out

    def decode(self, value: Any) -> Any:
        """The typed inputs from the JSON value the host sent; `InputError` otherwise."""
        if self._root is None:
            if not isinstance(value, dict):
                raise InputError((), f"expected a mapping, got {got(value)}")
            if value:
                raise InputError((), f"unknown input `{next(iter(value))}`, there are no fields")
            return None
        return self._root.decode(value, ())

    def decode_json(self, text: str) -> Any:
        """`decode` of the host's JSON text."""
        try:
            value = json.loads(text)
        except ValueError as e:
            raise InputError((), f"the inputs are not JSON: {e}") from None
        return self.decode(value)
