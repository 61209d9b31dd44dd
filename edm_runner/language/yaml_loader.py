"""Reading a topology file into plain data plus a side table of positions.

Invariants:
- ``read_source`` never raises for bad input: unreadable files, non-UTF-8 bytes, YAML syntax
  errors, duplicate keys, unknown tags and template errors all become ``Diagnostic``s.
- Mapping keys are the key's literal text (so ``on:`` is the string ``"on"``, never ``True``).
- Every key and value node has a 1-based position under its path tuple, e.g.
  ``("pipelines", "by-user", "steps", 0, "filter")``. Keys live in ``SourceMap.keys``,
  values in ``SourceMap.values``. A value written as an alias (``*name``) is positioned where
  the alias is written, not at its anchor.
- Topologies are plain data: an explicit YAML tag (``!name``, ``!!type``) is refused on any
  node, mapping, list or scalar alike.
- Scalars containing ``{{`` are rendered by ``spec.templating`` (see its rule); positions stay
  those of the original scalar. ``SourceMap.inside`` maps a line and column inside a scalar's
  text back to the file (exactly for one-line and literal ``|`` scalars, which keep lines).
- YAML timestamps stay strings (topologies are JSON-shaped data).
- Aliases add at most ``MAX_ALIAS_NODES`` nodes to a document (a "billion laughs" file of a
  few lines would otherwise expand to billions): past that, the outermost alias being
  expanded is reported and the document is not built further.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

from edm_runner.errors import Diagnostic
from edm_runner.language import templating

try:
    from yaml._yaml import CParser as _EventParser
except ImportError:  # PyYAML built without libyaml
    class _EventParser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)

_CORE = "tag:yaml.org,2002:"
_TIMESTAMP = _CORE + "timestamp"
_SECTION_ITEMS = {("streams",): "stream", ("pipelines",): "pipeline", ("functions",): "function"}

Path_ = tuple  # a path into the document: keys (str) and list indices (int)
MAX_ALIAS_NODES = 10_000


@dataclass(frozen=True)
class NodePos:
    """Where a node starts (1-based) and, for scalars, its style and whether it spans lines."""

    line: int
    col: int
    one_line: bool = True
    style: str | None = None
    content_col: int = 0  # literal ``|`` scalars: the column of their text; line k is at line + k


@dataclass
class SourceMap:
    """Positions of the nodes of one file. Lookups fall back to the nearest ancestor."""

    file: str
    values: dict[Path_, NodePos] = field(default_factory=dict)
    keys: dict[Path_, NodePos] = field(default_factory=dict)
    broken: set[Path_] = field(default_factory=set)  # values that failed to load (reported)
    templated: set[Path_] = field(default_factory=set)  # values rendered from a template

    def is_broken(self, path: Path_) -> bool:
        """True when ``path`` is at or under a value already reported as unloadable, so later
        checks stay quiet about it instead of cascading."""
        return any(tuple(path[: n]) in self.broken for n in range(len(path) + 1))

    def value(self, path: Path_) -> NodePos:
        path = tuple(path)
        while path not in self.values and path:
            if path in self.keys:
                return self.keys[path]
            path = path[:-1]
        return self.values.get(path, NodePos(1, 1))

    def key(self, path: Path_) -> NodePos:
        path = tuple(path)
        return self.keys[path] if path in self.keys else self.value(path)

    def inside(self, path: Path_, line: int, col: int | None = None) -> NodePos:
        """The position of line ``line``, column ``col`` (1-based) of the text of the scalar at
        ``path``: exact for one-line scalars and literal ``|`` blocks (the start of that line
        when ``col`` is None); the scalar's own start for folded and multi-line flow scalars,
        whose lines YAML joins."""
        pos = self.value(path)
        if tuple(path) not in self.values:
            return pos
        if pos.content_col:
            return NodePos(pos.line + line, pos.content_col + (col or 1) - 1, True, pos.style)
        if not col or not pos.one_line or line != 1:
            return pos
        quote = 1 if pos.style in ("'", '"') else 0
        return NodePos(pos.line, pos.col + quote + col - 1, True, pos.style)

    def expression(self, path: Path_, offset: int | None, text: str = "") -> NodePos:
        """The position of character ``offset`` (1-based) of ``text``, the scalar expression at
        ``path``; the scalar's own start when ``offset`` is unknown."""
        if not offset:
            return self.inside(path, 1)
        start = text.rfind("\n", 0, offset - 1) + 1
        return self.inside(path, text.count("\n", 0, start) + 1, offset - start)


@dataclass
class Source:
    """A parsed file: ``data`` is None when the file could not be parsed at all."""

    path: Path
    data: Any
    smap: SourceMap
    diagnostics: list[Diagnostic]


def read_source(path: Path, env: Mapping[str, str]) -> Source:
    """Read, decode, parse and template ``path``; see the module invariants."""
    file = str(path)
    smap = SourceMap(file)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        return _fail(path, smap, f"{file} is a directory, not a topology file",
                     "pass the path of a .yaml file")
    except FileNotFoundError:
        return _fail(path, smap, f"file not found: {file}", "check the path")
    except OSError as e:
        return _fail(path, smap, f"cannot read {file}: {e.strerror or e}",
                     "check the path and its permissions")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        return _fail(path, smap, f"the file is not UTF-8 text (byte 0x{raw[e.start]:02x})",
                     "save the file as UTF-8", line, col)
    return parse_text(text, path, env)


def parse_text(text: str, path: Path, env: Mapping[str, str]) -> Source:
    """Parse and template decoded ``text`` as the contents of ``path``; see the module invariants."""
    smap = SourceMap(str(path))
    if text.startswith("\ufeff"):
        text = text[1:]
    loader = _Composer(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or "invalid YAML"
        if mark and _tab_at(text, mark.line, mark.column):
            return _fail(path, smap, "YAML indentation must use spaces, not tabs",
                         "replace the tab with spaces", mark.line + 1, mark.column + 1)
        if e.context and "single document" in e.context:
            problem = "a topology file holds one YAML document, but a second one starts here"
        elif e.context:
            started = e.context_mark
            where = f" at line {started.line + 1}" if started and mark and started.line != mark.line else ""
            problem = f"{problem} ({e.context}{where})"
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return _fail(path, smap, f"YAML syntax error: {problem}",
                     "check indentation, quoting and brackets near here", line, col)
    except yaml.YAMLError as e:
        return _fail(path, smap, f"YAML syntax error: {e}", "check the YAML syntax")
    finally:
        loader.dispose()
    if node is None:
        return _fail(path, smap, "the file is empty",
                     "a topology starts with `kind: microservice` or `kind: business`")
    builder = _Builder(smap, env, text.splitlines())
    data = builder.build(node, ())
    return Source(path, data, smap, builder.diagnostics)


class _Composer(Composer, Resolver):
    """PyYAML's composer over libyaml's event parser (when built), except that:
    - an alias yields a shallow copy of its anchor's node carrying the alias's own position;
      the copy shares the anchor's children (``value``), so recursion checks key on
      ``id(node.value)``;
    - a node written with an explicit tag gets ``explicit_tag`` (the tag as written), which
      the resolved ``tag`` no longer tells apart (``!!str 1`` and ``"1"`` both resolve to str).
    """

    def __init__(self, text: str):
        self._events = _EventParser(text)
        self.check_event = self._events.check_event
        self.peek_event = self._events.peek_event
        self.get_event = self._events.get_event
        Composer.__init__(self)
        Resolver.__init__(self)

    def dispose(self) -> None:
        self._events.dispose()

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = copy.copy(super().compose_node(parent, index))
            node.start_mark, node.end_mark = event.start_mark, event.end_mark
            node.from_alias = True
            return node
        node = super().compose_node(parent, index)
        if getattr(event, "tag", None) is not None:
            node.explicit_tag = event.tag
        return node


def _tab_at(text: str, line: int, col: int) -> bool:
    """True when the character at 0-based ``line``, ``col`` of ``text`` is a tab."""
    lines = text.splitlines()
    return line < len(lines) and col < len(lines[line]) and lines[line][col] == "\t"


def _fail(path: Path, smap: SourceMap, message: str, hint: str = "", line: int = 1,
          col: int = 1) -> Source:
    return Source(path, None, smap, [Diagnostic(str(path), line, col, message, hint)])


def _pos(node: yaml.Node, lines: list[str] | None = None) -> NodePos:
    """The position of ``node``; with the file's ``lines``, a literal block's ``content_col``."""
    start, end = node.start_mark, node.end_mark
    style = node.style if isinstance(node, yaml.ScalarNode) else None
    one_line = start.line == end.line and style not in ("|", ">")
    content_col = 0
    if style == "|" and lines is not None:
        last = end.line + 1 if end.column else end.line  # the end mark may open the next line
        body = [text for text in lines[start.line + 1: last] if text.strip()]
        content_col = min((len(t) - len(t.lstrip(" ")) for t in body), default=0) + 1
    return NodePos(start.line + 1, start.column + 1, one_line, style, content_col)


def _explicit_tag(node: yaml.Node) -> str | None:
    """The explicit tag of ``node`` as the user wrote it (``!!int``, ``!mine``), else None."""
    tag = getattr(node, "explicit_tag", None)
    return "!!" + tag.removeprefix(_CORE) if tag and tag.startswith(_CORE) else tag


class _Builder:
    """Turns a composed node tree into plain data, recording positions and problems."""

    def __init__(self, smap: SourceMap, env: Mapping[str, str], lines: list[str]):
        self.smap = smap
        self.env = env
        self.lines = lines
        self.diagnostics: list[Diagnostic] = []
        self._constructor = SafeConstructor()
        self._active: set[int] = set()
        self._alias_depth = 0  # > 0 while building what an alias refers to
        self._alias_nodes = 0  # nodes built through aliases so far
        self._alias_exhausted = False

    def error(self, pos: NodePos, message: str, hint: str = "") -> None:
        self.diagnostics.append(Diagnostic(self.smap.file, pos.line, pos.col, message, hint))

    def build(self, node: yaml.Node, path: Path_) -> Any:
        alias = getattr(node, "from_alias", False)
        if alias or self._alias_depth:
            if self._alias_exhausted:
                return None
            self._alias_nodes += 1
            if self._alias_nodes > MAX_ALIAS_NODES:
                self._alias_exhausted = True
                self.error(self._alias_pos, f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} "
                                            "values (an alias of an alias of ... multiplies them)",
                           "write the repeated parts out, or use fewer nested aliases")
                self.smap.broken.add(self._alias_path)
                return None
        if alias and not self._alias_depth:
            self._alias_pos, self._alias_path = _pos(node), path
        self._alias_depth += alias
        try:
            return self._build(node, path)
        finally:
            self._alias_depth -= alias

    def _build(self, node: yaml.Node, path: Path_) -> Any:
        pos = self.smap.values[path] = _pos(node, self.lines)
        if tag := _explicit_tag(node):
            self.error(pos, f"YAML tags are not supported (found '{tag}')",
                       "remove the tag: a topology holds plain mappings, lists, strings, numbers "
                       "and booleans (quote a value to make it a string)")
            self.smap.broken.add(path)
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node.value) in self._active:
            self.error(pos, "recursive YAML alias", "an anchor cannot contain itself")
            self.smap.broken.add(path)
            return None
        self._active.add(id(node.value))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._active.discard(id(node.value))

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            kpos = _pos(key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(kpos, "a mapping key must be a plain string",
                           "write the key as a simple word, e.g. `name:`")
                continue
            key = key_node.value
            if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                self.error(kpos, "YAML merge keys (<<) are not supported",
                           "write the keys out explicitly")
                continue
            if tag := _explicit_tag(key_node):  # reported; the key's text still counts
                self.error(kpos, f"YAML tags are not supported (found '{tag}')",
                           "remove the tag: a key is a plain word")
            if key in result:
                first = self.smap.keys[path + (key,)]
                what = _SECTION_ITEMS.get(path, "key")
                self.error(kpos, f"duplicate {what} '{key}' (first defined at line {first.line})",
                           f"each {what} may appear once; remove or rename one")
                continue
            self.smap.keys[path + (key,)] = kpos
            result[key] = self.build(value_node, path + (key,))
        return result

    def _scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        if node.tag == _TIMESTAMP:
            return node.value
        if isinstance(node.value, str) and templating.is_template(node.value):
            try:
                rendered = templating.render(node.value, self.env)
            except templating.TemplateProblem as e:
                self.error(self.smap.inside(path, e.line), e.message, e.hint)
                self.smap.broken.add(path)
                return None
            self.smap.templated.add(path)
            return templating.retype(node.value, node.style, rendered)
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e)
            self.error(_pos(node), f"invalid YAML value: {problem}",
                       "remove the tag or quote the value")
            self.smap.broken.add(path)
            return None
