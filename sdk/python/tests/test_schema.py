"""Schema generation, input checking and error wording of the Python SDK.

Plain CPython, standard library only, no componentize-py bindings:

    cd sdk/python && python3 -m unittest discover -s tests

The input-error cases are the Rust SDK's (`sdk/src/lib.rs`, `input_error_tests`) and
`hoist plan`'s (`host/runner/src/schema.rs`): a user reads the same words whichever
language a step is written in.
"""

import enum
import json
import os
import sys
import unittest
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, TypedDict, Union

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hoist_sdk import (  # noqa: E402
    OUTSIDE_HINT,
    Capability,
    Denied,
    Failed,
    InputError,
    InputType,
    InvalidInput,
    NotFound,
    encode_outputs,
)
from hoist_sdk import _step  # noqa: E402
from hoist_sdk.errors import from_exception  # noqa: E402
from hoist_sdk.schema import format_path, got, one_of, parse_docstring  # noqa: E402


@dataclass
class Credentials:
    """A registry login.

    Attributes:
        username: The user.
        token: The token or password,
            never logged.
    """

    username: str
    token: str


class Mode(enum.Enum):
    FAST = "fast"
    SAFE = "safe"


@dataclass
class Inputs:
    """Run a script, line by line.

    Each line is its own process.

    Attributes:
        script: The script; every line runs as a separate process.
        env: Extra environment variables.
        dirs (list): Directories, in order.
    """

    script: str
    env: Optional[Dict[str, str]] = None
    dirs: List[str] = field(default_factory=list)
    mode: Literal["a", "b", "c"] = "a"
    n: Optional[int] = None
    ratio: float = field(default=1.0, metadata={"description": "A ratio (metadata wins)."})
    credentials: Optional[Credentials] = None
    speed: Mode = Mode.SAFE
    extra: Any = None
    either: Union[int, str] = 0


class Greeting(TypedDict, total=False):
    """Whom to greet."""

    name: str
    loud: bool


@dataclass
class Node:
    name: str
    children: List["Node"] = field(default_factory=list)


@dataclass
class Tree:
    root: Node


@dataclass
class Port:
    number: int

    def __post_init__(self) -> None:
        if not 0 < self.number < 65536:
            raise ValueError(f"{self.number} is not a port")


@dataclass
class PortInputs:
    port: Port


@dataclass
class Greeted:
    greeting: str


def check(cls: type, value: Any) -> str:
    """The message `decode` refuses `value` with (the test fails if it is accepted)."""
    try:
        InputType(cls).decode(value)
    except InputError as e:
        return str(e)
    raise AssertionError(f"{value!r} was accepted")


class SchemaTest(unittest.TestCase):
    def setUp(self) -> None:
        self.schema = InputType(Inputs).schema()
        self.props = self.schema["properties"]

    def test_the_root_is_a_closed_object_of_the_2020_12_dialect(self) -> None:
        s = self.schema
        self.assertEqual(s["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertEqual(s["title"], "Inputs")
        self.assertEqual(s["type"], "object")
        self.assertIs(s["additionalProperties"], False)
        self.assertEqual(s["required"], ["script"])
        self.assertEqual(list(self.props), [
            "script", "env", "dirs", "mode", "n", "ratio", "credentials", "speed", "extra", "either",
        ])
        json.dumps(s)  # JSON data throughout

    def test_descriptions_come_from_the_docstring_and_metadata(self) -> None:
        self.assertEqual(self.schema["description"], "Run a script, line by line.")
        self.assertEqual(
            self.props["script"]["description"], "The script; every line runs as a separate process."
        )
        self.assertEqual(self.props["dirs"]["description"], "Directories, in order.")
        self.assertEqual(self.props["ratio"]["description"], "A ratio (metadata wins).")
        self.assertNotIn("description", self.props["n"])
        creds = self.schema["$defs"]["Credentials"]
        self.assertEqual(creds["description"], "A registry login.")
        self.assertEqual(
            creds["properties"]["token"]["description"], "The token or password, never logged."
        )

    def test_types_defaults_and_requirement(self) -> None:
        p = self.props
        self.assertEqual(p["script"]["type"], "string")
        self.assertNotIn("default", p["script"])
        self.assertEqual(p["env"]["type"], ["object", "null"])
        self.assertEqual(p["env"]["additionalProperties"], {"type": "string"})
        self.assertIsNone(p["env"]["default"])
        self.assertEqual(p["dirs"], {"description": "Directories, in order.", "type": "array",
                                     "items": {"type": "string"}, "default": []})
        self.assertEqual(p["mode"], {"type": "string", "enum": ["a", "b", "c"], "default": "a"})
        self.assertEqual(p["n"], {"type": ["integer", "null"], "default": None})
        self.assertEqual(p["ratio"]["type"], "number")
        self.assertEqual(p["ratio"]["default"], 1.0)
        self.assertEqual(
            p["credentials"],
            {"anyOf": [{"$ref": "#/$defs/Credentials"}, {"type": "null"}], "default": None},
        )
        self.assertEqual(p["speed"], {"type": "string", "enum": ["fast", "safe"], "default": "safe"})
        self.assertEqual(p["extra"], {"default": None})
        self.assertEqual(p["either"], {"type": ["integer", "string"], "default": 0})
        creds = self.schema["$defs"]["Credentials"]
        self.assertIs(creds["additionalProperties"], False)
        self.assertEqual(creds["required"], ["username", "token"])

    def test_optional_without_default_is_not_required_and_absent_is_none(self) -> None:
        @dataclass
        class I:
            name: str
            note: Optional[str]

        self.assertEqual(InputType(I).schema()["required"], ["name"])
        self.assertEqual(InputType(I).decode({"name": "x"}), I(name="x", note=None))

    def test_typed_dicts_and_steps_without_inputs(self) -> None:
        s = InputType(Greeting).schema()
        self.assertEqual(s["description"], "Whom to greet.")
        self.assertNotIn("required", s)
        self.assertEqual(InputType(Greeting).decode({"name": "x"}), {"name": "x"})
        none = InputType(None)
        self.assertEqual(none.schema()["properties"], {})
        self.assertIsNone(none.decode({}))
        with self.assertRaises(InputError) as e:
            none.decode({"x": 1})
        self.assertEqual(str(e.exception), "unknown input `x`, there are no fields")

    def test_a_class_that_refers_to_itself_is_a_ref(self) -> None:
        s = InputType(Tree).schema()
        self.assertEqual(s["properties"]["root"], {"$ref": "#/$defs/Node"})
        self.assertEqual(
            s["$defs"]["Node"]["properties"]["children"]["items"], {"$ref": "#/$defs/Node"}
        )
        value = InputType(Tree).decode({"root": {"name": "a", "children": [{"name": "b"}]}})
        self.assertEqual(value.root.children[0].name, "b")

    def test_unsupported_types_fail_when_declared(self) -> None:
        @dataclass
        class I:
            when: complex

        with self.assertRaises(TypeError):
            InputType(I)
        with self.assertRaises(TypeError):
            InputType(dict)


class DecodeTest(unittest.TestCase):
    def test_values_are_converted(self) -> None:
        v = InputType(Inputs).decode({
            "script": "echo",
            "env": {"A": "1"},
            "dirs": ["x"],
            "mode": "b",
            "n": 2,
            "ratio": 3,
            "credentials": {"username": "u", "token": "t"},
            "speed": "fast",
            "extra": [1, {"a": None}],
            "either": "s",
        })
        self.assertEqual(v.credentials, Credentials("u", "t"))
        self.assertIs(v.speed, Mode.FAST)
        self.assertEqual(v.ratio, 3.0)
        self.assertIsInstance(v.ratio, float)
        self.assertEqual(v.either, "s")
        d = InputType(Inputs).decode({"script": "x"})
        self.assertEqual((d.env, d.dirs, d.mode, d.speed), (None, [], "a", Mode.SAFE))

    def test_errors_speak_the_rust_sdks_words(self) -> None:
        cases = [
            ({"script": ["a"]}, "input `script`: expected a string, got a list"),
            ({"script": "x", "env": {"N": 3}}, "input `env.N`: expected a string, got integer `3`"),
            ({}, "missing input `script`"),
            ({"script": "x", "credentials": {"username": "u"}},
             "input `credentials`: missing input `token`"),
            ({"script": "x", "dirs": ["a", 1]}, "input `dirs[1]`: expected a string, got integer `1`"),
            ({"script": {"a": 1}}, "input `script`: expected a string, got a mapping"),
            ({"script": None}, "input `script`: expected a string, got null"),
            ({"script": True}, "input `script`: expected a string, got boolean `true`"),
            ({"script": "x", "n": 1.5}, "input `n`: expected an integer, got floating point `1.5`"),
            ({"script": "x", "n": 1.0}, "input `n`: expected an integer, got floating point `1.0`"),
            ({"script": "x", "n": False}, "input `n`: expected an integer, got boolean `false`"),
            ({"script": "x", "ratio": "1"}, "input `ratio`: expected a number, got string \"1\""),
            ({"script": "x", "mode": "d"},
             "input `mode`: expected one of `a`, `b`, `c`, got string \"d\""),
            ({"script": "x", "speed": 1},
             "input `speed`: expected `fast` or `safe`, got integer `1`"),
            ({"script": "x", "either": None},
             "input `either`: expected an integer or a string, got null"),
            ({"script": "x", "credentials": {"username": "u", "token": "t", "tokn": "t"}},
             "input `credentials`: unknown input `tokn` (it takes `username` or `token`)"),
            ({"script": "x", "credentials": []}, "input `credentials`: expected a mapping, got a list"),
        ]
        for value, message in cases:
            with self.subTest(value=value):
                self.assertEqual(check(Inputs, value), message)

    def test_unknown_inputs_are_refused_and_named_first(self) -> None:
        @dataclass
        class One:
            name: str

        self.assertEqual(check(One, {"nmae": "x"}), "unknown input `nmae` (it takes `name`)")
        # Reported as itself, not as the missing `script` it misspells.
        self.assertEqual(
            check(Inputs, {"scirpt": "y"}),
            "unknown input `scirpt` (it takes one of `script`, `env`, `dirs`, `mode`, `n`, "
            "`ratio`, `credentials`, `speed`, `extra`, `either`)",
        )

    def test_the_root_must_be_a_mapping_of_json(self) -> None:
        self.assertEqual(check(Inputs, [1]), "expected a mapping, got a list")
        with self.assertRaises(InputError) as e:
            InputType(Inputs).decode_json("{")
        self.assertTrue(str(e.exception).startswith("the inputs are not JSON: "))

    def test_post_init_checks_are_input_errors_at_their_path(self) -> None:
        self.assertEqual(check(PortInputs, {"port": {"number": 0}}), "input `port`: 0 is not a port")

    def test_words(self) -> None:
        self.assertEqual(format_path(()), ".")
        self.assertEqual(format_path(("a", 0, "b", 2, 3)), "a[0].b[2][3]")
        self.assertEqual(one_of(["a"]), "`a`")
        self.assertEqual(one_of(["a", "b"]), "`a` or `b`")
        self.assertEqual(one_of(["a", "b", "c"]), "one of `a`, `b`, `c`")
        self.assertEqual(got(1e20), "floating point `100000000000000000000.0`")
        self.assertEqual(got('say "hi"'), 'string "say \\"hi\\""')


class DocstringTest(unittest.TestCase):
    def test_sections_and_summary(self) -> None:
        summary, fields = parse_docstring(
            """First line
            continued.

            Second paragraph.

            Args:
                a: One.
                b (int): Two,
                    three.

            Returns:
                nothing: not a field.
            """
        )
        self.assertEqual(summary, "First line continued.")
        self.assertEqual(fields, {"a": "One.", "b": "Two, three."})
        self.assertEqual(parse_docstring("Attributes:\n    x: X."), (None, {"x": "X."}))

    def test_a_dataclass_without_docstring_has_no_description(self) -> None:
        @dataclass
        class Bare:
            x: int

        self.assertNotIn("description", InputType(Bare).schema())


class CapabilityTest(unittest.TestCase):
    def test_the_command_line_spellings(self) -> None:
        cases = {
            "process:git": ("process", "git"),
            "process:*": ("process", "*"),
            "env:HOME": ("env", "HOME"),
            "set-cwd": ("set-cwd", None),
            "read:/data": ("read-dir", "/data"),
            "write:/out": ("write-dir", "/out"),
            "net:https://*.github.com:443": ("net", "https://*.github.com:443"),
            "docker:build": ("docker-build", None),
            "docker:push:127.0.0.1:5000/*": ("docker-push", "127.0.0.1:5000/*"),
        }
        for text, (kind, value) in cases.items():
            with self.subTest(text=text):
                c = Capability.parse(text)
                self.assertEqual((c.kind, c.value), (kind, value))
                self.assertEqual(str(c), text)

    def test_what_the_host_refuses_is_refused(self) -> None:
        for bad in ["git", "process:", "fs:/x", "", "docker:", "docker:push:", "docker:run",
                    "read:data", "write:/srv/../x", "read:/srv/./x"]:
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    Capability.parse(bad)

    def test_the_wit_case_names(self) -> None:
        class Types:
            class Capability_ReadDir:
                def __init__(self, value: str) -> None:
                    self.value = value

            class Capability_SetCwd:
                pass

        self.assertEqual(Capability.parse("read:/d").to_wit(Types).value, "/d")
        self.assertIsInstance(Capability.parse("set-cwd").to_wit(Types), Types.Capability_SetCwd)


class ErrorsAndOutputsTest(unittest.TestCase):
    def test_exceptions_become_step_errors(self) -> None:
        e = Failed("x", hint="h", exit_code=3)
        self.assertIs(from_exception(e), e)
        self.assertIsInstance(from_exception(InputError(("a",), "bad")), InvalidInput)
        self.assertEqual(str(from_exception(InputError(("a",), "bad"))), "input `a`: bad")
        try:
            open("/nonexistent/hoist-sdk-test")
        except OSError as os_error:
            nf = from_exception(os_error)
        self.assertIsInstance(nf, NotFound)
        self.assertEqual(
            nf.message, f"No such file or directory: '/nonexistent/hoist-sdk-test' ({OUTSIDE_HINT})"
        )
        denied = from_exception(PermissionError(13, "Permission denied", "/root/x"))
        self.assertIsInstance(denied, Denied)
        self.assertNotIn("Errno", denied.message)
        exited = from_exception(SystemExit(4))
        self.assertEqual((exited.message, exited.exit_code), ("the step called sys.exit(4)", 4))

    def test_other_exceptions_are_failures_with_where_as_the_hint(self) -> None:
        def inner() -> None:
            raise ValueError("boom from python")

        try:
            inner()
        except ValueError as e:
            f = from_exception(e)
        self.assertIsInstance(f, Failed)
        self.assertEqual(f.message, "ValueError: boom from python")
        self.assertNotIn("\n", f.hint)
        self.assertTrue(f.hint.startswith("at test_schema.py:"), f.hint)
        self.assertTrue(f.hint.endswith('in inner: raise ValueError("boom from python")'), f.hint)
        self.assertEqual(from_exception(KeyError()).message, "KeyError")

    def test_outputs(self) -> None:
        @dataclass
        class Out:
            path: str
            mode: Mode
            creds: Optional[Credentials] = None

        self.assertEqual(
            json.loads(encode_outputs(Out("p", Mode.FAST, Credentials("u", "t")))),
            {"path": "p", "mode": "fast", "creds": {"username": "u", "token": "t"}},
        )
        self.assertEqual(encode_outputs({"a": [1, (2, 3)]}), '{"a": [1, [2, 3]]}')
        self.assertEqual(encode_outputs(None), "{}")
        with self.assertRaises(Failed) as e:
            encode_outputs({"x": object()})
        self.assertTrue(e.exception.message.startswith("outputs could not be encoded as JSON"))
        with self.assertRaises(Failed):
            encode_outputs({"x": float("nan")})


class StepTest(unittest.TestCase):
    def tearDown(self) -> None:
        _step._registered = None

    def test_a_decorated_function_runs_without_the_host(self) -> None:
        @_step.step(name="greet", version="0.1.0", capabilities=["process:echo"])
        def greet(inputs: Credentials) -> Greeted:
            """Greets someone."""
            return Greeted(greeting=f"hello {inputs.username}")

        s = _step.registered()
        self.assertEqual((s.name, s.summary), ("greet", "Greets someone."))
        self.assertEqual([str(c) for c in s.capabilities], ["process:echo"])
        self.assertEqual(json.loads(s.input_schema)["title"], "Credentials")
        self.assertEqual(
            json.loads(s.call('{"username": "ann", "token": "t"}')), {"greeting": "hello ann"}
        )
        with self.assertRaises(InputError) as e:
            s.call('{"username": "ann"}')
        self.assertEqual(str(e.exception), "missing input `token`")
        # componentize-py finds the exports class in the app module.
        self.assertIs(sys.modules[__name__].WitWorld, _step.WitWorld)

    def test_declaration_mistakes_fail_at_once(self) -> None:
        with self.assertRaises(ValueError):
            _step.step(name="x", version="1", summary="s", capabilities=["proc:git"])
        with self.assertRaises(TypeError):
            @_step.step(name="x", version="1", summary="s")
            def untyped(inputs):  # type: ignore[no-untyped-def]
                return {}


if __name__ == "__main__":
    unittest.main()
