"""Reading user-supplied YAML and JSON: data only, bounded, and every refusal names its place.

Config files, ``--set`` values, task files and the config stored in a checkpoint all come
through here. On top of what ``yaml.safe_load`` and ``json.loads`` already refuse (tags that
name Python objects: nothing read is ever imported or executed), a document is refused when

| what | why | limit |
|---|---|---|
| a file larger than :data:`MAX_BYTES` | a config or task file is a few kB | 1 MiB |
| bytes that are not UTF-8 (the error gives the byte offset) | the files are text | |
| YAML anchors (``&a``), aliases (``*a``) and merge keys (``<<``) | an alias bomb of a few hundred bytes expands to gigabytes, a self-referencing alias never ends; robometa's files never need them | none allowed |
| a key given twice in one mapping (the error gives both lines) | YAML and JSON silently keep the last one | |
| nesting deeper than :data:`MAX_DEPTH` | a config is 5 levels deep at most | 16 levels |
| integers of more than 4300 digits, JSON's ``NaN``/``Infinity`` | not numbers any setting can use | |

Every refusal is an :class:`InputError` (a ``ValueError``) whose one-line message names the
file (or the flag), the line and column where known, and the reason. Writers of YAML that
these readers read back use :func:`dump_yaml`, which never emits anchors or aliases.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    CParser = None

#: the largest config or task file read (bytes)
MAX_BYTES = 1 << 20
#: the deepest nesting of mappings and lists a document may have
MAX_DEPTH = 16
_MERGE_TAG = "tag:yaml.org,2002:merge"


class InputError(ValueError):
    """A document robometa refuses to read. ``source`` is what was read (``config file X``,
    ``--set KEY=VALUE``); ``reason`` is the message without it, for callers that word the
    source themselves; ``syntax`` tells a document that does not parse from one refused."""

    def __init__(self, message: str, source: str, reason: str, syntax: bool = False) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason
        self.syntax = syntax


def _refuse(source: str, reason: str, mark: Any = None) -> InputError:
    if mark is not None:
        reason = f"{_position(mark)}: {reason}"
    return InputError(
        f"{source}, {reason}" if mark is not None else f"{source}: {reason}", source, reason
    )


def _position(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


# ------------------------------------------------------------------------------ files


def read_text(path: str | Path, what: str) -> str:
    """The text of the file ``path``, strictly UTF-8 and at most :data:`MAX_BYTES` long.

    ``what`` names the file in errors (``"config file"``, ``"task file"``); a file that cannot
    be read is a ``ValueError`` too (``cannot read config file X: No such file or directory``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:
        size = _file_size(path)
        raise InputError(
            f"{what} {path} is {size} bytes, more than the {MAX_BYTES:,} bytes (1 MiB) robometa "
            "reads",
            f"{what} {path}",
            "too large",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        reason = (
            f"is not UTF-8 text: byte 0x{data[err.start]:02x} at byte offset {err.start} "
            f"({err.reason})"
        )
        raise InputError(f"{what} {path} {reason}", f"{what} {path}", reason) from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not content


def _file_size(path: Path) -> str:
    try:
        return f"{os.path.getsize(path):,}"
    except OSError:
        return f"more than {MAX_BYTES:,}"


def load_file(path: str | Path, what: str) -> Any:
    """A ``.json`` file as JSON, anything else as YAML, both checked as the module says."""
    path = Path(path)
    text = read_text(path, what)
    if path.suffix.lower() == ".json":
        return parse_json(text, f"{what} {path}")
    return parse_yaml(text, f"{what} {path}")


# ------------------------------------------------------------------------------ YAML


class _Composer:
    """PyYAML's composer without anchors and aliases, and with a depth limit."""

    source = ""

    def __init__(self) -> None:
        self.anchors: dict[str, Any] = {}
        self.depth = 0

    def check_node(self) -> bool:  # pragma: no cover - only get_single_node is used
        raise NotImplementedError

    def get_single_node(self) -> Any:
        self.get_event()  # STREAM-START
        document = None
        if not self.check_event(yaml.StreamEndEvent):
            self.get_event()  # DOCUMENT-START
            document = self.compose_node(None, None)
            self.get_event()  # DOCUMENT-END
        if not self.check_event(yaml.StreamEndEvent):
            event = self.get_event()
            raise _refuse(self.source, "a second YAML document ('---'): give one", event.start_mark)
        self.get_event()  # STREAM-END
        return document

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _refuse(
                self.source,
                f"YAML alias *{event.anchor} refused: robometa's config and task files never "
                "need anchors or aliases; write the value out",
                event.start_mark,
            )
        if event.anchor is not None:
            raise _refuse(
                self.source,
                f"YAML anchor &{event.anchor} refused: robometa's config and task files never "
                "need anchors or aliases; write the value out",
                event.start_mark,
            )
        nested = isinstance(event, (SequenceStartEvent, MappingStartEvent))
        if nested:
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _refuse(
                    self.source, f"nested deeper than {MAX_DEPTH} levels", event.start_mark
                )
        self.descend_resolver(parent, index)
        if isinstance(event, ScalarEvent):
            node = self._scalar()
        elif isinstance(event, SequenceStartEvent):
            node = self._sequence()
        else:
            node = self._mapping()
        self.ascend_resolver()
        if nested:
            self.depth -= 1
        return node

    def _tag(self, kind: type, event: Any, value: Any) -> str:
        if event.tag is None or event.tag == "!":
            return self.resolve(kind, value, event.implicit)
        return event.tag

    def _scalar(self) -> ScalarNode:
        event = self.get_event()
        tag = self._tag(ScalarNode, event, event.value)
        return ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)

    def _sequence(self) -> SequenceNode:
        start = self.get_event()
        tag = self._tag(SequenceNode, start, None)
        node = SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        index = 0
        while not self.check_event(yaml.SequenceEndEvent):
            node.value.append(self.compose_node(node, index))
            index += 1
        node.end_mark = self.get_event().end_mark
        return node

    def _mapping(self) -> MappingNode:
        start = self.get_event()
        tag = self._tag(MappingNode, start, None)
        node = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        while not self.check_event(yaml.MappingEndEvent):
            key = self.compose_node(node, None)
            node.value.append((key, self.compose_node(node, key)))
        node.end_mark = self.get_event().end_mark
        return node


class _Constructor(SafeConstructor):
    """``SafeConstructor`` that refuses duplicate keys, merge keys and absurd integers."""

    source = ""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _refuse(
                        self.source,
                        "YAML merge key '<<' refused: write the keys out",
                        key_node.start_mark,
                    )
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: SafeConstructor says so below
                    continue
                if first is not None:
                    raise _refuse(
                        self.source,
                        f"duplicate key {key!r} (first given at line {first.line + 1}); "
                        "give each key once",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_int(self, node: Any) -> int:
        try:
            return self.construct_yaml_int(node)
        except ValueError:  # Python refuses to parse integers of more than 4300 digits
            raise ConstructorError(
                None,
                None,
                f"an integer of {len(node.value)} characters ({node.value[:12]}...) is not a "
                "number any setting can take",
                node.start_mark,
            ) from None


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_bounded_int)

if CParser is not None:

    class _Loader(_Composer, CParser, _Constructor, Resolver):  # type: ignore[misc]
        def __init__(self, text: str, source: str) -> None:
            CParser.__init__(self, text)
            _Composer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)
            self.source = source

else:  # pragma: no cover - PyYAML without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _Composer, _Constructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str, source: str) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _Composer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)
            self.source = source


def parse_yaml(text: str, source: str) -> Any:
    """The data of one YAML document (``None`` for an empty one); ``source`` names it in
    errors, e.g. ``"config file runs/exp.yaml"`` or ``"--set network.hidden=[8]"``."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{source} is longer than {MAX_BYTES:,} characters", source, "too long")
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(node)
    except InputError:
        raise
    except yaml.YAMLError as err:
        reason = _yaml_reason(err)
        raise InputError(f"{source} is not valid YAML: {reason}", source, reason, True) from None
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise _refuse(source, f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _yaml_reason(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, then what."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        what = ", ".join(x for x in (err.context, err.problem) if x)
        return f"{_position(mark)}: {what}" if mark is not None else what
    if isinstance(err, yaml.reader.ReaderError):
        return f"character {err.character!r} at position {err.position}: {err.reason}"
    return " ".join(str(err).split())


def dump_yaml(data: Any) -> str:
    """YAML text of plain data (mappings keep their order) that :func:`parse_yaml` reads back:
    never an anchor or alias, even where one object appears twice."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


# ------------------------------------------------------------------------------ JSON


def parse_json(text: str, source: str) -> Any:
    """The data of a JSON document; ``source`` names it in errors."""
    if len(text) > MAX_BYTES:
        raise InputError(f"{source} is longer than {MAX_BYTES:,} characters", source, "too long")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise _refuse(source, f"duplicate key {key!r}; give each key once")
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise _refuse(source, f"{name} is not a JSON number (robometa needs finite numbers)")

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except InputError:
        raise
    except json.JSONDecodeError as err:
        reason = f"line {err.lineno}, column {err.colno}: {err.msg}"
        raise InputError(f"{source} is not valid JSON: {reason}", source, reason, True) from None
    except RecursionError:
        raise _refuse(source, f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # Python refuses to parse integers of more than 4300 digits
        reason = "an integer of more than 4300 digits is not a number any setting can take"
        raise InputError(f"{source} is not valid JSON: {reason}", source, reason, True) from None
    if _depth(data) > MAX_DEPTH:
        raise _refuse(source, f"nested deeper than {MAX_DEPTH} levels")
    return data


def _depth(data: Any) -> int:
    """Nesting depth of mappings and lists (1 for a flat one), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "InputError",
    "dump_yaml",
    "load_file",
    "parse_json",
    "parse_yaml",
    "read_text",
]
