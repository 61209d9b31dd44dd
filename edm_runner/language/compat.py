"""Compatibility of event schemas (JSON Schema), with the modes of Confluent Schema Registry.

``readable(writer, reader)`` lists every way a consumer validating events with the ``reader``
schema may refuse an event the ``writer`` schema allows. It applies the rules Schema Registry
applies to JSON Schema (its ``SchemaDiff`` of an original and an updated schema):

- content models: an object is *open* (``additionalProperties`` absent or true, no
  ``patternProperties``), *closed* (``additionalProperties: false``) or *partially open*
  (an ``additionalProperties`` schema, or ``patternProperties``). A property the reader adds to
  the writer's open model breaks (old events may already carry it, with any value), unless its
  schema is empty; a property the reader drops from its closed model breaks; with a partially
  open model the schema that covers the property decides. Closing a model breaks, opening one
  does not.
- ``required``: a property newly required breaks. Schema Registry accepts it when the property
  has a ``default``; edm does not, because edm validates events with the schema as written and
  fills no defaults, so an old event without the property would fail (the one deliberate
  difference, documented in docs/language.md).
- types: widening (``integer`` -> ``number``, adding a type) is compatible, narrowing
  (``number`` -> ``integer``, removing a type, constraining an untyped schema) breaks.
- enums (and ``const``): adding values is compatible, removing one breaks.
- bounds (``minimum``, ``maxLength``, ``minItems``, ``maxProperties``, ``multipleOf`` ...) and
  ``pattern``/``uniqueItems``: relaxing is compatible, adding or tightening breaks.
- arrays: ``items`` compared item by item, tuples (``prefixItems``, or draft-07 ``items``
  lists with ``additionalItems``) position by position with the same open/closed rules.
- ``$ref`` within the document (``#/$defs/...``, ``#/definitions/...``) is followed (recursive
  schemas too); a reference to another document can only be compared as text.
- ``allOf`` is merged into one schema; ``anyOf``/``oneOf``: every branch of the writer must be
  readable by some branch of the reader (a writer that is not a union must fit one branch).
- any other assertion keyword the reader adds or changes (``not``, ``if``, ``contains``,
  ``propertyNames`` ...) is reported as a change edm cannot prove compatible; removing one
  is always compatible (the reader accepts more). Annotations (title, description, default,
  examples, format: edm does not assert formats) never matter.

``breaking_changes(previous, new, mode)`` applies a mode: BACKWARD (consumers on the new
schema read events written with the previous one: ``readable(previous, new)``), FORWARD
(consumers on the previous schema read events written with the new one), FULL (both), their
TRANSITIVE variants (against every previous version, not only the latest) and NONE.

Pure: no I/O; schemas are parsed JSON documents (dicts, or booleans).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Iterable, Literal, Sequence

MODES = ("BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE")
DEFAULT_MODE = "BACKWARD"
MODE_MEANINGS = {
    "BACKWARD": "consumers using the new schema can read events written with the previous one (the default)",
    "BACKWARD_TRANSITIVE": "consumers using the new schema can read events written with every previous one",
    "FORWARD": "consumers using the previous schema can read events written with the new one",
    "FORWARD_TRANSITIVE": "consumers using any previous schema can read events written with the new one",
    "FULL": "both BACKWARD and FORWARD",
    "FULL_TRANSITIVE": "both BACKWARD_TRANSITIVE and FORWARD_TRANSITIVE",
    "NONE": "no check",
}

Pointer = tuple  # a location in a schema document: keys and list indices

_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$comment", "$id", "$schema", "$anchor", "$dynamicAnchor",
    "$vocabulary", "$defs", "definitions", "readOnly", "writeOnly", "deprecated", "format",
    "contentMediaType", "contentEncoding", "contentSchema"})
_HANDLED = frozenset({
    "$ref", "allOf", "anyOf", "oneOf", "type", "enum", "const",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "properties", "required", "additionalProperties", "patternProperties",
    "unevaluatedProperties", "minProperties", "maxProperties", "items", "prefixItems", "additionalItems",
    "minItems", "maxItems", "uniqueItems"})
_KINDS = frozenset({"object", "array", "string", "number", "boolean", "null"})
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Problem:
    """One way a consumer validating with the reader schema may refuse an event the writer
    schema allows. ``path``: where in the event (``$.customer.id``, ``$.lines[*]``).
    ``why`` says what the writer's events may hold ("may hold 1.5"). ``what``, ``why`` and
    ``fix`` are templates naming the two schemas ``{writer}`` and ``{reader}`` (``render`` fills
    them in). ``writer_at``/``reader_at``: the nearest node of
    each document the problem is about."""

    path: str
    kind: str
    what: str
    why: str
    fix: str
    writer_at: Pointer = ()
    reader_at: Pointer = ()

    def render(self, writer: str, reader: str) -> tuple[str, str, str]:
        """(what, why, fix) with the two schemas named."""
        names = {"writer": writer, "reader": reader}
        return self.what.format(**names), self.why.format(**names), self.fix.format(**names)


@dataclass(frozen=True)
class Break:
    """A problem found under a mode. ``direction`` backward: the new schema reads events of
    previous version ``version`` (1-based index in the history); forward: the previous schema
    reads events of the new one. ``new_at``: the problem's node in the new schema."""

    problem: Problem
    mode: str
    direction: Literal["backward", "forward"]
    version: int

    @property
    def new_at(self) -> Pointer:
        return self.problem.reader_at if self.direction == "backward" else self.problem.writer_at

    def render(self, previous: str, new: str = "the new schema") -> tuple[str, str, str]:
        """(what, why, fix) naming the previous and the new schema; ``why`` starts with what the
        mode requires."""
        if self.direction == "backward":
            what, why, fix = self.problem.render(writer=previous, reader=new)
            rule = f"{self.mode} requires consumers using {new} to read the events already written with {previous}"
        else:
            what, why, fix = self.problem.render(writer=new, reader=previous)
            rule = f"{self.mode} requires consumers still using {previous} to read the events written with {new}"
        return what, f"{rule}, which {why}", fix


def breaking_changes(history: Sequence[Any], new: Any, mode: str) -> list[Break]:
    """What breaks when ``new`` follows the versions in ``history`` (oldest first) under ``mode``.
    Non-transitive modes compare with the latest version only; an empty history breaks nothing."""
    if mode not in MODES:
        raise ValueError(f"unknown compatibility mode {mode!r}")
    if mode == "NONE" or not history:
        return []
    indices = range(len(history)) if mode.endswith("_TRANSITIVE") else [len(history) - 1]
    base = mode.removesuffix("_TRANSITIVE")
    out: list[Break] = []
    for i in reversed(indices):
        previous = history[i]
        if base in ("BACKWARD", "FULL"):
            out += [Break(p, mode, "backward", i + 1) for p in readable(previous, new)]
        if base in ("FORWARD", "FULL"):
            out += [Break(p, mode, "forward", i + 1) for p in readable(new, previous)]
    return out


def readable(writer: Any, reader: Any) -> list[Problem]:
    """Every way the ``reader`` schema may refuse an event the ``writer`` schema allows (empty:
    the reader reads everything the writer may write)."""
    return _Compare(writer, reader).compare(writer, reader, (), (), (), 0)


def open_objects(schema: Any) -> list[str]:
    """Data paths of the object schemas in ``schema`` whose content model is open (properties
    may be added without ``additionalProperties: false``): where adding a property later breaks
    BACKWARD consumers. Follows local ``$ref``s once each."""
    found: list[str] = []
    seen: set[int] = set()

    def visit(node: Any, path: tuple, depth: int) -> None:
        node, _ = _resolve(schema, node, ())
        if not isinstance(node, dict) or id(node) in seen or depth > _MAX_DEPTH:
            return
        seen.add(id(node))
        types = _types(node)
        if (types is None or "object" in types) and ("properties" in node or types == {"object"}) \
                and _model(node) == "open":
            found.append(_format_path(path))
        for name, sub in (node.get("properties") or {}).items():
            visit(sub, path + (name,), depth + 1)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key], path + ("*" if key == "items" else ".*",), depth + 1)
        for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
            for sub in node.get(key) or []:
                visit(sub, path, depth + 1)
    visit(schema, (), 0)
    return found


# -- the comparison ------------------------------------------------------------------------


def _q(name: Any) -> str:
    """A name quoted for a message template (braces escaped)."""
    return ("'" + str(name) + "'").replace("{", "{{").replace("}", "}}")


def _v(value: Any) -> str:
    return json.dumps(value, sort_keys=True).replace("{", "{{").replace("}", "}}")


def _format_path(path: Iterable[Any]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "*":
            out += "[*]"
        elif part == ".*":
            out += ".*"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", str(part)):
            out += f".{part}"
        else:
            out += "[" + json.dumps(part) + "]"
    return out


def _pointer_get(root: Any, fragment: str) -> tuple[Any, Pointer] | None:
    """The node at JSON pointer ``fragment`` (``/$defs/x``) of ``root``."""
    node, at = root, []
    for raw in fragment.split("/")[1:] if fragment else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
            at.append(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            at.append(int(part))
        else:
            return None
    return node, tuple(at)


def _resolve(root: Any, node: Any, at: Pointer) -> tuple[Any, Pointer]:
    """Follow local ``$ref``s (siblings of a ``$ref`` are merged over its target). A reference
    to another document, or one that does not resolve, is left as it is."""
    for _ in range(_MAX_DEPTH):
        if not isinstance(node, dict) or not isinstance(node.get("$ref"), str):
            return node, at
        ref = node["$ref"]
        if not ref.startswith("#"):
            return node, at
        target = _pointer_get(root, ref[1:])
        if target is None:
            return node, at
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node, at = target
        if siblings and isinstance(node, dict):
            node = {**node, **siblings}
        elif siblings and node is True:
            node = siblings
    return node, at


def _is_any(schema: Any) -> bool:
    """True for schemas that accept every value: ``true`` and those with no assertion."""
    return schema is True or (isinstance(schema, dict) and all(k in _ANNOTATIONS for k in schema))


def _is_none(schema: Any) -> bool:
    return schema is False or (isinstance(schema, dict) and schema.get("not") == {} and len(schema) == 1)


def _canon(value: Any) -> str:
    """A JSON value's identity for enum comparison: 1 and 1.0 are equal, true and 1 are not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _enum(schema: dict) -> dict[str, Any] | None:
    if "const" in schema:
        return {_canon(schema["const"]): schema["const"]}
    if isinstance(schema.get("enum"), list):
        return {_canon(v): v for v in schema["enum"]}
    return None


def _types(schema: dict) -> set[str] | None:
    """The JSON types the schema allows (``integer`` kept apart from ``number``), None: any."""
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared) if isinstance(declared, list) else None
    values = _enum(schema)
    if values is not None:
        kinds = {_kind_of(v) for v in values.values()}
        types = kinds if types is None else {t for t in kinds if t in types or (t == "integer" and "number" in types)}
    return types


def _kinds(types: set[str] | None) -> set[str]:
    """Which groups of keywords apply (``number`` covers integers)."""
    if types is None:
        return set(_KINDS)
    return {"number" if t == "integer" else t for t in types} & _KINDS


def _additional(schema: dict) -> Any:
    """What the schema says of properties it does not declare: True (open), False, or a schema."""
    value = schema.get("additionalProperties", schema.get("unevaluatedProperties", True))
    if _is_any(value):
        return True
    return False if _is_none(value) else value


def _model(schema: dict) -> Literal["open", "closed", "partial"]:
    extra = _additional(schema)
    if schema.get("patternProperties"):
        return "partial"
    return "open" if extra is True else "closed" if extra is False else "partial"


def _covering(schema: dict, name: str, at: Pointer) -> tuple[Any, Pointer]:
    """The schema ``schema`` applies to a property ``name`` it does not declare."""
    for pattern, sub in (schema.get("patternProperties") or {}).items():
        try:
            if re.search(pattern, name):
                return sub, at + ("patternProperties", pattern)
        except re.error:
            continue
    return _additional(schema), at + ("additionalProperties",)


def _merge(base: dict, other: Any) -> Any:
    """``base`` and ``other`` as one schema (for ``allOf``, and a union's shared keywords):
    properties merged, required joined, types intersected; other keywords from ``other``."""
    if other is False:
        return False
    if not isinstance(other, dict) or not other:
        return base
    merged = {**base, **other}
    if "properties" in base and "properties" in other:
        props = dict(base["properties"])
        for name, sub in other["properties"].items():
            props[name] = {"allOf": [props[name], sub]} if name in props else sub
        merged["properties"] = props
    if "required" in base and "required" in other:
        merged["required"] = list(dict.fromkeys(list(base["required"]) + list(other["required"])))
    if "type" in base and "type" in other:
        a = _types({"type": base["type"]}) or set()
        b = _types({"type": other["type"]}) or set()
        both = {t for t in a if t in b or (t == "integer" and "number" in b)} | \
               {t for t in b if t == "integer" and "number" in a}
        merged["type"] = sorted(both)
    return merged


def _flatten(node: dict) -> dict:
    """``allOf`` merged into the schema (its branches resolved by the caller)."""
    if not isinstance(node.get("allOf"), list):
        return node
    out = {k: v for k, v in node.items() if k != "allOf"}
    for branch in node["allOf"]:
        out = _merge(out, branch) if isinstance(out, dict) else out
    return out


class _Compare:
    def __init__(self, writer_root: Any, reader_root: Any):
        self.w_root = writer_root
        self.r_root = reader_root
        self.assumed: set[tuple[int, int]] = set()  # pairs under comparison (recursive schemas)

    def _resolve_all(self, root: Any, node: Any, at: Pointer) -> tuple[Any, Pointer]:
        node, at = _resolve(root, node, at)
        if isinstance(node, dict) and isinstance(node.get("allOf"), list):
            branches = [_resolve(root, b, at)[0] for b in node["allOf"]]
            node = _flatten({**node, "allOf": branches})
            node, _ = _resolve(root, node, at)
        return node, at

    def compare(self, w: Any, r: Any, path: tuple, wat: Pointer, rat: Pointer, depth: int) -> list[Problem]:
        if depth > _MAX_DEPTH:
            return []
        pair = (id(w), id(r))  # the nodes as written: a recursive schema meets the same $ref nodes again
        w, wat = self._resolve_all(self.w_root, w, wat)
        r, rat = self._resolve_all(self.r_root, r, rat)
        if pair in self.assumed:
            return []  # a recursive schema: assume compatible while proving the pair
        self.assumed.add(pair)
        try:
            return self._compare(w, r, path, wat, rat, depth)
        finally:
            self.assumed.discard(pair)

    def _problem(self, kind: str, path: tuple, what: str, why: str, fix: str, wat: Pointer,
                 rat: Pointer) -> Problem:
        return Problem(_format_path(path), kind, what, why, fix, wat, rat)

    def _compare(self, w: Any, r: Any, path: tuple, wat: Pointer, rat: Pointer, depth: int) -> list[Problem]:
        if _is_any(r) or _is_none(w):
            return []
        if _is_none(r):
            return [self._problem("SCHEMA_REFUSES_ALL", path, "{reader} refuses every value here",
                                  "may hold values here", "allow the values {writer} allows", wat, rat)]
        if w is True:
            w = {}
        if not isinstance(w, dict) or not isinstance(r, dict):
            return []
        for refs in (w, r):
            if isinstance(refs.get("$ref"), str):
                return self._foreign_ref(w, r, path, wat, rat)
        union = self._unions(w, r, path, wat, rat, depth)
        if union is not None:
            return union
        out: list[Problem] = []
        wt, rt = _types(w), _types(r)
        out += self._type(wt, rt, path, wat, rat)
        out += self._enum(w, r, path, wat, rat)
        kinds = _kinds(wt) & _kinds(rt)
        if "string" in kinds:
            out += self._bounds(w, r, path, wat, rat, ("minLength", "min", "string length"),
                                ("maxLength", "max", "string length"))
            if "pattern" in r and r.get("pattern") != w.get("pattern"):
                out.append(self._problem(
                    "PATTERN_CHANGED" if "pattern" in w else "PATTERN_ADDED", path + (),
                    "{reader} requires the pattern " + _v(r["pattern"]) +
                    (", {writer} " + _v(w["pattern"]) if "pattern" in w else ", {writer} none"),
                    "may hold strings that do not match it", "keep the pattern {writer} has, or drop it",
                    wat + ("pattern",), rat + ("pattern",)))
        if "number" in kinds:
            out += self._bounds(w, r, path, wat, rat, ("minimum", "min", "value"), ("maximum", "max", "value"),
                                ("exclusiveMinimum", "min", "exclusive bound"),
                                ("exclusiveMaximum", "max", "exclusive bound"))
            out += self._multiple_of(w, r, path, wat, rat)
        if "object" in kinds:
            out += self._object(w, r, path, wat, rat, depth)
        if "array" in kinds:
            out += self._array(w, r, path, wat, rat, depth)
        for key in sorted(set(r) - _HANDLED - _ANNOTATIONS):
            if key not in w or w[key] != r[key]:
                out.append(self._problem(
                    "KEYWORD_CHANGED", path,
                    f"{{reader}} {'changes' if key in w else 'adds'} the keyword {_q(key)}",
                    "may not satisfy it (edm cannot prove they do)",
                    f"keep {_q(key)} as {{writer}} has it, or give the change a new stream",
                    wat + ((key,) if key in w else ()), rat + (key,)))
        return out

    def _foreign_ref(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer) -> list[Problem]:
        if w.get("$ref") == r.get("$ref") and {k: v for k, v in w.items() if k != "$ref"} == \
                {k: v for k, v in r.items() if k != "$ref"}:
            return []
        return [self._problem(
            "REFERENCE_CHANGED", path,
            "{reader} refers to " + _v(r.get("$ref", "an inline schema")) + ", {writer} to " +
            _v(w.get("$ref", "an inline schema")),
            "may not fit it: edm follows only references within the document (#/...)",
            "move the referenced definitions into the schema file ($defs) so edm can compare them",
            wat + ("$ref",), rat + ("$ref",))]

    def _unions(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer,
                depth: int) -> list[Problem] | None:
        """anyOf/oneOf: None when neither schema is a union."""
        wkey = next((k for k in ("anyOf", "oneOf") if isinstance(w.get(k), list)), None)
        rkey = next((k for k in ("anyOf", "oneOf") if isinstance(r.get(k), list)), None)
        if wkey is not None:
            base = {k: v for k, v in w.items() if k != wkey}
            out: list[Problem] = []
            for i, branch in enumerate(w[wkey]):
                branch, bat = _resolve(self.w_root, branch, wat + (wkey, i))
                merged = _merge(base, branch)
                problems = self.compare(merged, r, path, bat, rat, depth + 1)
                out += [replace(p, what=f"{wkey}[{i}] of {{writer}}: " + p.what) for p in problems]
            if not out and rkey == "oneOf" and wkey == "anyOf" and len(w[wkey]) > 1 and len(r[rkey]) > 1:
                out.append(self._problem(
                    "COMBINED_TYPE_CHANGED", path, "{reader} has oneOf where {writer} has anyOf",
                    "may hold values matching several branches, which oneOf refuses",
                    "keep anyOf", wat + (wkey,), rat + (rkey,)))
            return out
        if rkey is not None:
            base = {k: v for k, v in r.items() if k != rkey}
            best: list[Problem] | None = None
            best_index = 0
            for i, branch in enumerate(r[rkey]):
                branch, bat = _resolve(self.r_root, branch, rat + (rkey, i))
                merged = _merge(base, branch)
                problems = self.compare(w, merged, path, wat, bat, depth + 1)
                if not problems:
                    return []
                if best is None or len(problems) < len(best):
                    best, best_index = problems, i
            return [replace(p, what=f"no branch of {rkey} in {{reader}} fits; against {rkey}[{best_index}]: "
                            + p.what) for p in best or []]
        return None

    def _type(self, wt: set[str] | None, rt: set[str] | None, path: tuple, wat: Pointer,
              rat: Pointer) -> list[Problem]:
        if rt is None:
            return []
        allowed = " or ".join(sorted(rt))
        if wt is None:
            return [self._problem(
                "TYPE_NARROWED", path, f"{{reader}} requires type {allowed} where {{writer}} allows any type",
                "may hold any JSON value here",
                "allow every type here, as {writer} does", wat, rat + ("type",))]
        out = []
        lost = sorted(t for t in wt if t not in rt and not (t == "integer" and "number" in rt))
        if "number" in lost and "integer" in rt:
            lost.remove("number")
            out.append(self._problem(
                "TYPE_NARROWED", path, "{reader} narrows number to integer",
                "may hold a fractional number here (e.g. 1.5)",
                "keep type number", wat + ("type",), rat + ("type",)))
        if lost:
            out.append(self._problem(
                "TYPE_CHANGED", path,
                f"{{reader}} allows type {allowed}, not {' or '.join(lost)} as {{writer}} does",
                f"may hold a {' or '.join(lost)} here",
                f"keep type {' and '.join(lost)} allowed (\"type\": [...]); a new type for old data needs a new "
                "stream", wat + ("type",), rat + ("type",)))
        return out

    def _enum(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer) -> list[Problem]:
        rv, wv = _enum(r), _enum(w)
        if rv is None:
            return []
        key = "const" if "const" in r else "enum"
        if wv is None:
            return [self._problem(
                "ENUM_ADDED", path, f"{{reader}} adds {key} {_v(list(rv.values()))}",
                "may hold other values here",
                f"drop the {key}, or list every value {{writer}} allows", wat, rat + (key,))]
        removed = [v for c, v in wv.items() if c not in rv]
        if not removed:
            return []
        return [self._problem(
            "ENUM_NARROWED", path, f"{{reader}} no longer allows {_v(removed)[1:-1]} (in {{writer}}'s {key})",
            f"may hold {_v(removed)[1:-1]}",
            "keep the value in the enum (consumers can treat it as unknown)", wat + (key,), rat + (key,))]

    def _bounds(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer,
                *keys: tuple[str, str, str]) -> list[Problem]:
        out = []
        for key, side, noun in keys:
            rv, wv = r.get(key), w.get(key)
            if not isinstance(rv, (int, float)) or isinstance(rv, bool):
                continue
            numeric = isinstance(wv, (int, float)) and not isinstance(wv, bool)
            tighter = not numeric or (rv > wv if side == "min" else rv < wv)
            if not tighter:
                continue
            out.append(self._problem(
                f"{key.upper()}_{'ADDED' if not numeric else 'INCREASED' if side == 'min' else 'DECREASED'}", path,
                f"{{reader}} sets {key} {rv}" + (f" ({{writer}}: {wv})" if numeric else ", {writer} none"),
                f"may hold a {noun} beyond it",
                f"keep {key} at {wv}" if numeric else f"drop {key}", wat + ((key,) if key in w else ()),
                rat + (key,)))
        return out

    def _multiple_of(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer) -> list[Problem]:
        rv, wv = r.get("multipleOf"), w.get("multipleOf")
        if not isinstance(rv, (int, float)) or rv == wv:
            return []
        if isinstance(wv, (int, float)) and (Fraction(str(wv)) / Fraction(str(rv))).denominator == 1:
            return []  # every multiple of wv is a multiple of rv
        return [self._problem(
            "MULTIPLE_OF_CHANGED" if wv else "MULTIPLE_OF_ADDED", path,
            f"{{reader}} requires multiples of {rv}" + (f" ({{writer}}: {wv})" if wv else ""),
            "may hold numbers that are not multiples of it",
            f"use a divisor of {wv}" if wv else "drop multipleOf", wat, rat + ("multipleOf",))]

    def _object(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer, depth: int) -> list[Problem]:
        out: list[Problem] = []
        wp, rp = w.get("properties") or {}, r.get("properties") or {}
        for name in list(wp) + [n for n in rp if n not in wp]:
            at = path + (name,)
            if name in wp and name in rp:
                out += self.compare(wp[name], rp[name], at, wat + ("properties", name), rat + ("properties", name),
                                    depth + 1)
            elif name in wp:  # the reader does not declare it
                cover, cat = _covering(r, name, rat)
                if cover is True or _is_none(wp[name]):
                    continue
                if cover is False:
                    out.append(self._problem(
                        "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", at,
                        f"{{writer}} declares the property {_q(name)}, {{reader}} does not and its content model "
                        "is closed (additionalProperties false)",
                        f"may carry {_q(name)}, which {{reader}} refuses",
                        f"keep {_q(name)} declared in {{reader}} (optional is fine)",
                        wat + ("properties", name), rat + ("additionalProperties",)))
                else:
                    out += self.compare(wp[name], cover, at, wat + ("properties", name), cat, depth + 1)
            else:  # the reader declares a property the writer does not
                cover, cat = _covering(w, name, wat)
                if cover is False or _is_any(rp[name]):
                    continue
                if cover is True:
                    out.append(self._problem(
                        "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", at,
                        f"{{reader}} declares the property {_q(name)}, which {{writer}} does not declare in its "
                        "open content model",
                        f"may already carry {_q(name)}, with any value",
                        f"give {_q(name)} an empty schema ({{{{}}}}), or use a new stream; declare models closed "
                        "(\"additionalProperties\": false) so properties can be added later",
                        wat, rat + ("properties", name)))
                else:
                    out += self.compare(cover, rp[name], at, cat, rat + ("properties", name), depth + 1)
        wreq = set(w.get("required") or [])
        for name in r.get("required") or []:
            if name in wreq:
                continue
            new = name not in wp
            out.append(self._problem(
                "REQUIRED_PROPERTY_ADDED" if new else "REQUIRED_ATTRIBUTE_ADDED", path + (name,),
                f"{{reader}} requires {_q(name)}" + (", which {writer} does not declare" if new
                                                     else ", which is optional in {writer}"),
                f"may lack {_q(name)} (edm fills no defaults)",
                f"make {_q(name)} optional", wat + (("properties", name) if not new else ()),
                rat + ("required",)))
        wa, ra = _additional(w), _additional(r)
        extra = path + (".*",)
        if ra is False and wa is not False:
            out.append(self._problem(
                "ADDITIONAL_PROPERTIES_REMOVED", path,
                "{reader} closes the content model (additionalProperties false), {writer} is "
                + ("open" if wa is True else "partially open"),
                "may carry properties {reader} does not declare",
                "keep the model as open as {writer}'s, or give the closed model a new stream",
                wat, rat + ("additionalProperties",)))
        elif ra is not True and ra is not False:
            if wa is True and not w.get("patternProperties"):
                out.append(self._problem(
                    "ADDITIONAL_PROPERTIES_NARROWED", extra,
                    "{reader} constrains undeclared properties (additionalProperties schema), {writer} allows any",
                    "may carry undeclared properties of any value",
                    "keep additionalProperties as {writer} has it", wat, rat + ("additionalProperties",)))
            elif wa is not False and wa is not True:
                out += self.compare(wa, ra, extra, wat + ("additionalProperties",), rat + ("additionalProperties",),
                                    depth + 1)
        wpat = w.get("patternProperties") or {}
        for pattern, sub in (r.get("patternProperties") or {}).items():
            at = path + (f"/{pattern}/",)
            if pattern in wpat:
                out += self.compare(wpat[pattern], sub, at, wat + ("patternProperties", pattern),
                                    rat + ("patternProperties", pattern), depth + 1)
            elif wa is not False:
                cover = wa if wa is not True else {}
                problems = self.compare(cover, sub, at, wat, rat + ("patternProperties", pattern), depth + 1)
                if problems:
                    out.append(self._problem(
                        "PATTERN_PROPERTIES_ADDED", at,
                        f"{{reader}} constrains properties matching {_v(pattern)}, {{writer}} does not",
                        "may carry such properties with other values",
                        "drop the patternProperties entry", wat, rat + ("patternProperties", pattern)))
        out += self._bounds(w, r, path, wat, rat, ("minProperties", "min", "property count"),
                            ("maxProperties", "max", "property count"))
        return out

    def _array(self, w: dict, r: dict, path: tuple, wat: Pointer, rat: Pointer, depth: int) -> list[Problem]:
        out: list[Problem] = []
        wpre, wrest, wrest_key = _tuple(w)
        rpre, rrest, rrest_key = _tuple(r)
        for i in range(max(len(wpre), len(rpre))):
            at = path + (i,)
            wi_at = wat + (("prefixItems" if "prefixItems" in w else "items"), i)
            ri_at = rat + (("prefixItems" if "prefixItems" in r else "items"), i)
            if i < len(wpre) and i < len(rpre):
                out += self.compare(wpre[i], rpre[i], at, wi_at, ri_at, depth + 1)
            elif i < len(wpre):  # the reader's rest covers the writer's item i
                if rrest is False and not _is_none(wpre[i]):
                    out.append(self._problem(
                        "ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL", at,
                        f"{{writer}} allows an item at position {i}, {{reader}} allows {len(rpre)} item(s)",
                        "may hold arrays longer than {reader} accepts",
                        "keep the item in {reader}'s tuple", wi_at, rat))
                elif rrest is not True:
                    out += self.compare(wpre[i], rrest, at, wi_at, rat + (rrest_key,), depth + 1)
            else:  # the reader declares item i, the writer's rest covers it
                if wrest is False or _is_any(rpre[i]):
                    continue
                out += self.compare({} if wrest is True else wrest, rpre[i], at, wat + (wrest_key,), ri_at,
                                    depth + 1)
        rest = path + ("*",)
        if rrest is False and wrest is not False:
            out.append(self._problem(
                "ADDITIONAL_ITEMS_REMOVED", rest,
                f"{{reader}} allows no items past position {len(rpre)}, {{writer}} does",
                "may hold longer arrays", "keep further items allowed", wat, rat + (rrest_key,)))
        elif rrest is not True and rrest is not False and wrest is not False:
            out += self.compare({} if wrest is True else wrest, rrest, rest, wat + (wrest_key,),
                                rat + (rrest_key,), depth + 1)
        out += self._bounds(w, r, path, wat, rat, ("minItems", "min", "item count"),
                            ("maxItems", "max", "item count"))
        if r.get("uniqueItems") is True and w.get("uniqueItems") is not True:
            out.append(self._problem(
                "UNIQUE_ITEMS_ADDED", path, "{reader} requires unique items, {writer} does not",
                "may hold arrays that repeat an item", "drop uniqueItems", wat, rat + ("uniqueItems",)))
        return out


def _tuple(schema: dict) -> tuple[list, Any, str]:
    """An array schema as (the schemas of its first items, the schema of the others, the
    keyword holding it): ``prefixItems`` + ``items`` (2020-12), or an ``items`` list +
    ``additionalItems`` (draft-07), or one ``items`` for all."""
    if isinstance(schema.get("prefixItems"), list):
        prefix, key = schema["prefixItems"], "items"
    elif isinstance(schema.get("items"), list):
        prefix, key = schema["items"], "additionalItems"
    else:
        prefix, key = [], "items"
    rest = schema.get(key, True)
    return list(prefix), True if _is_any(rest) else False if _is_none(rest) else rest, key
