"""Test files (``*.test.yaml``): their JSON Schema and their reading into typed cases.

A test file names its topology (default: ``<name>.yaml`` beside ``<name>.test.yaml``, else
``topology.yaml``) and holds named cases. A case is a list of steps run in order: ``produce``
records to declared streams, ``advance_wall_clock``, and ``expect`` (records on streams and
dead-letter streams, store contents, late/skipped counts, mock calls, a processing error).
``produce:``/``expect:`` directly on a case are the steps [produce, *steps, expect].

Invariants:
- ``load_test_file`` never raises for a bad file: every problem is a ``Diagnostic`` at
  ``file:line:col`` (the same reader and messages as topology files), returned with no cases.
- Every expectation keeps the line it is written at (``Expectation.line``), for the report.
- Records read from a JSON-lines ``file:`` are checked when the file is loaded; a line that is
  not a record is a diagnostic at that file's ``line:col``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edm_runner.errors import Diagnostic
from edm_runner.language.durations import DURATION_PATTERN, parse_duration
from edm_runner.language.expressions import ExpressionError, compile_expression
from edm_runner.language.report import Report, where
from edm_runner.language.structure import check
from edm_runner.language.yaml_loader import read_source

SUFFIX = ".test.yaml"
SCHEMA_ID = "https://edm.dev/schemas/test.schema.json"

_TIME = {"description": "Milliseconds since the epoch, or an ISO 8601 date-time (2026-11-30T10:00:00Z).",
         "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "minLength": 1}]}
_DURATION = {"description": "A duration: milliseconds, or 250ms, 30s, 15m, 1h, 2d.",
             "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN}]}


def _record_props(extra: dict | None = None) -> dict:
    props = {
        "key": {"description": "The key, as `edm produce` reads it (JSON; bytes as {\"base64\": ...})."},
        "value": {"description": "The value, as `edm produce` reads it."},
        "headers": {"type": "object", "description": "Header name -> text (or {\"base64\": ...})."},
        "timestamp": _TIME,
        "partition": {"type": "integer", "minimum": 0,
                      "description": "Produce: the partition (default: the key's, as every producer). "
                                     "Expect: the partition the record must be on."},
    }
    props.update(extra or {})
    return props


def json_schema() -> dict:
    """The JSON Schema of test files (schemas/test.schema.json is this, rendered)."""
    expected_record = {"type": "object", "additionalProperties": False,
                       "description": "The fields to compare; a field left out is not compared.",
                       "properties": _record_props({"error": {
                           "type": "string",
                           "description": "Dead letters: text the edm.error header contains."}})}
    stream_expect = {
        "description": "A list: exactly these records, in the order written. Or a mapping of checks.",
        "oneOf": [
            {"type": "array", "items": {"$ref": "#/$defs/expected_record"}},
            {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
                "records": {"type": "array", "items": {"$ref": "#/$defs/expected_record"},
                            "description": "Exactly these records, in the order written."},
                "contains": {"type": "array", "items": {"$ref": "#/$defs/expected_record"},
                             "description": "These records among others, in any order."},
                "count": {"type": "integer", "minimum": 0, "description": "How many records."},
                "each": {"type": "string", "description": "An expression every record satisfies "
                                                          "(sees key, value, timestamp, headers, partition)."},
            }},
        ]}
    mock = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "description": "What a mocked function, or external API (the call steps naming a resource, or in a "
                           "pipeline, of that name), does.",
            "properties": {
                "returns": {"description": "Every call returns this value (an API: the response body, status 200)."},
                "returns_each": {"type": "array", "minItems": 1,
                                 "description": "Successive calls return these; the last repeats."},
                "raises": {"type": "string", "description": "Every call fails with this message (an API: a transport "
                                                                 "failure, retried by the step)."},
                "python": {"type": "string", "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                           "description": "module:function next to the test file, called instead (an API: "
                                          "with the request {method, url, body, headers}, returns the body)."},
            }}
    produce = {"type": "object", "minProperties": 1,
               "description": "Stream -> records, produced in order (streams in the order written).",
               "additionalProperties": {"type": "array", "items": {"oneOf": [
                   {"type": "object", "additionalProperties": False, "required": ["value"],
                    "properties": _record_props()},
                   {"type": "object", "additionalProperties": False, "required": ["file"],
                    "properties": {"file": {"type": "string", "description": "JSON lines as `edm produce` "
                                                                              "reads them, relative to the "
                                                                              "test file."}}},
               ]}}}
    counts = {"oneOf": [{"type": "integer", "minimum": 0},
                        {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}]}
    expect = {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
        "streams": {"type": "object", "additionalProperties": {"$ref": "#/$defs/stream_expect"},
                    "description": "Stream -> the records written to it since the case began."},
        "dead_letters": {"type": "object", "description": "Dead-letter stream -> a count or records.",
                         "additionalProperties": {"oneOf": [{"type": "integer", "minimum": 0},
                                                            {"$ref": "#/$defs/stream_expect"}]}},
        "stores": {"type": "object", "description": "Store or table -> {key: value}; null: no such key. "
                                                    "Window and session stores: key -> [{start, end?, value}].",
                   "additionalProperties": {"type": "object"}},
        "late": {**counts, "description": "Late window events: in total, or per pipeline."},
        "skipped": {**counts, "description": "Events skipped by `on_error: skip`: in total, or per pipeline."},
        "calls": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0},
                  "description": "Mock -> how many times it was called."},
        "error": {"type": "string", "description": "Processing stops with an error containing this text "
                                                   "(an event failed under `on_error: fail`)."},
    }}
    step = {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
            "properties": {"produce": {"$ref": "#/$defs/produce"},
                           "advance_wall_clock": _DURATION,
                           "expect": {"$ref": "#/$defs/expect"}}}
    case = {"type": "object", "additionalProperties": False, "properties": {
        "description": {"type": "string"},
        "wall_clock": {**_TIME, "description": "Where the wall clock starts (default: the file's, else now)."},
        "mocks": {"type": "object", "additionalProperties": {"$ref": "#/$defs/mock"},
                  "description": "Mocks of this case, over the file's."},
        "produce": {"$ref": "#/$defs/produce"},
        "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}},
        "expect": {"$ref": "#/$defs/expect"},
    }}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edm test file",
        "description": "Cases `edm test` runs against a topology, in process (docs: README, `edm test`).",
        "type": "object",
        "additionalProperties": False,
        "required": ["cases"],
        "properties": {
            "topology": {"type": "string",
                         "description": "The topology file, relative to this one "
                                        "(default: NAME.yaml for NAME.test.yaml, else topology.yaml)."},
            "wall_clock": {**_TIME, "description": "Where every case's wall clock starts (default: now)."},
            "mocks": {"type": "object", "additionalProperties": {"$ref": "#/$defs/mock"},
                      "description": "A declared function, a resource or a pipeline (its call steps) -> what it does."},
            "cases": {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/$defs/case"},
                      "description": "Case name -> case. Each runs on fresh state."},
        },
        "$defs": {"expected_record": expected_record, "stream_expect": stream_expect, "mock": mock,
                  "produce": produce, "expect": expect, "step": step, "case": case},
    }


def render_json_schema() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


# -- the typed form ------------------------------------------------------------------------

@dataclass
class Mock:
    name: str
    kind: str  # returns, returns_each, raises, python
    arg: Any
    line: int
    col: int = 1


@dataclass
class Produce:
    stream: str
    records: list[dict]  # {key?, value, headers?, timestamp?, partition?} plus "line", "col"
    line: int
    col: int = 1


@dataclass
class Advance:
    ms: int
    line: int


@dataclass
class StreamCheck:
    """One stream's expectation; ``each`` compiled (key, value, event)."""

    stream: str
    line: int
    col: int = 1
    records: list[dict] | None = None
    contains: list[dict] | None = None
    count: int | None = None
    each: tuple[str, Callable[..., Any]] | None = None
    dead_letters: bool = False


@dataclass
class Expect:
    line: int
    streams: list[StreamCheck] = field(default_factory=list)
    stores: dict[str, tuple[dict, int, int]] = field(default_factory=dict)  # store -> (expected, line, col)
    late: tuple[Any, int] | None = None
    skipped: tuple[Any, int] | None = None
    calls: tuple[dict[str, int], int] | None = None
    error: tuple[str, int] | None = None


Step = Produce | Advance | Expect


@dataclass
class Case:
    name: str
    line: int
    steps: list[Step]
    wall_clock: int | None
    mocks: dict[str, Mock]


@dataclass
class TestFile:
    path: Path
    topology: Path
    topology_line: int
    cases: list[Case]
    diagnostics: list[Diagnostic]

    __test__ = False  # not a pytest class


def topology_of(path: Path, data: Any) -> Path:
    """The topology file a test file tests (see the module docstring)."""
    if isinstance(data, dict) and isinstance(data.get("topology"), str):
        return path.parent / data["topology"]
    sibling = path.parent / (path.name[: -len(SUFFIX)] + ".yaml") if path.name.endswith(SUFFIX) else None
    if sibling is not None and sibling.is_file():
        return sibling
    return path.parent / "topology.yaml"


def parse_time(value: Any) -> int:
    """Milliseconds since the epoch from an integer or an ISO 8601 text (naive: UTC)."""
    if isinstance(value, int):
        return value
    text = value.strip()
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


class _Reader:
    def __init__(self, path: Path, report: Report) -> None:
        self.path = path
        self.report = report
        self.smap = report.smap

    def line(self, path: tuple) -> int:
        return self.smap.value(path).line

    def key_pos(self, path: tuple) -> tuple[int, int]:
        pos = self.smap.key(path)
        return pos.line, pos.col

    def time(self, value: Any, path: tuple) -> int | None:
        try:
            return parse_time(value)
        except (ValueError, OverflowError):
            self.report.error(path, f"{where(path)}: {value!r} is not a time",
                              "write milliseconds since the epoch or an ISO 8601 date-time, "
                              "e.g. 2026-11-30T10:00:00Z")
            return None

    def record(self, item: dict, path: tuple, produce: bool) -> dict:
        out = dict(item)
        pos = self.smap.value(path)
        out["line"], out["col"] = pos.line, pos.col
        if "timestamp" in item:
            out["timestamp"] = self.time(item["timestamp"], path + ("timestamp",))
        return out

    def lines_file(self, name: str, path: tuple) -> list[dict]:
        file = self.path.parent / name
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.report.error(path, f"cannot read the records file {file}: {getattr(e, 'strerror', None) or e}",
                              "give a JSON-lines file relative to the test file")
            return []
        records = []
        for number, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as e:
                self.report.diagnostics.append(Diagnostic(str(file), number, e.colno, f"not valid JSON: {e.msg}"))
                continue
            allowed = {"key", "value", "headers", "timestamp", "partition", "topic", "offset"}
            if not isinstance(item, dict) or "value" not in item or not set(item) <= allowed:
                self.report.diagnostics.append(Diagnostic(
                    str(file), number, 1, 'expected an object with "value" and optionally "key", "headers", '
                                          '"timestamp" (the lines `edm consume` prints)'))
                continue
            item.pop("topic", None)
            item.pop("offset", None)
            if "timestamp" in item and (type(item["timestamp"]) is not int or item["timestamp"] < 0):
                self.report.diagnostics.append(Diagnostic(
                    str(file), number, 1, '"timestamp" must be milliseconds since the epoch (an integer)'))
                continue
            pos = self.smap.value(path)
            item["line"], item["col"] = pos.line, pos.col
            item["origin"] = f"{file}:{number}"
            records.append(item)
        return records

    def produce(self, data: dict, path: tuple) -> list[Produce]:
        out = []
        for stream, items in data.items():
            records: list[dict] = []
            for i, item in enumerate(items):
                if "file" in item:
                    records.extend(self.lines_file(item["file"], path + (stream, i, "file")))
                else:
                    records.append(self.record(item, path + (stream, i), True))
            out.append(Produce(stream, records, *self.key_pos(path + (stream,))))
        return out

    def stream_check(self, stream: str, spec: Any, path: tuple, dead_letters: bool) -> StreamCheck:
        check_ = StreamCheck(stream, *self.key_pos(path), dead_letters=dead_letters)
        if isinstance(spec, int):
            check_.count = spec
            return check_
        if isinstance(spec, list):
            spec = {"records": spec}
        for name in ("records", "contains"):
            if name in spec:
                setattr(check_, name, [self.record(r, path + (name, i), False) for i, r in enumerate(spec[name])])
        check_.count = spec.get("count")
        if "each" in spec:
            source = spec["each"]
            try:
                fn = compile_expression(source, params=("key", "value", "event"))
            except ExpressionError as e:
                pos = self.smap.expression(path + ("each",), e.col, source)
                self.report.add(pos, f"{where(path + ('each',))}: {e}")
            else:
                check_.each = (source, fn)
        return check_

    def expect(self, data: dict, path: tuple) -> Expect:
        exp = Expect(self.line(path))
        for stream, spec in (data.get("streams") or {}).items():
            exp.streams.append(self.stream_check(stream, spec, path + ("streams", stream), False))
        for stream, spec in (data.get("dead_letters") or {}).items():
            exp.streams.append(self.stream_check(stream, spec, path + ("dead_letters", stream), True))
        for store, entries in (data.get("stores") or {}).items():
            exp.stores[store] = (entries, *self.key_pos(path + ("stores", store)))
        for name in ("late", "skipped", "calls", "error"):
            if name in data:
                setattr(exp, name, (data[name], self.line(path + (name,))))
        return exp

    def mocks(self, data: dict, path: tuple) -> dict[str, Mock]:
        out = {}
        for name, spec in data.items():
            (kind, arg), = spec.items()
            out[name] = Mock(name, kind, arg, *self.key_pos(path + (name,)))
        return out

    def case(self, name: str, data: dict, file_mocks: dict[str, Mock], file_clock: int | None) -> Case:
        path = ("cases", name)
        steps: list[Step] = []
        if "produce" in data:
            steps.extend(self.produce(data["produce"], path + ("produce",)))
        for i, step in enumerate(data.get("steps") or []):
            (kind, arg), = step.items()
            spath = path + ("steps", i, kind)
            if kind == "produce":
                steps.extend(self.produce(arg, spath))
            elif kind == "advance_wall_clock":
                steps.append(Advance(parse_duration(arg), self.line(spath)))
            else:
                steps.append(self.expect(arg, spath))
        if "expect" in data:
            steps.append(self.expect(data["expect"], path + ("expect",)))
        clock = self.time(data["wall_clock"], path + ("wall_clock",)) if "wall_clock" in data else file_clock
        mocks = {**file_mocks, **self.mocks(data.get("mocks") or {}, path + ("mocks",))}
        if not any(isinstance(s, Expect) for s in steps):
            self.report.error(path, f"case '{name}' expects nothing",
                              "add `expect:` (streams, dead_letters, stores, late, skipped, calls or error)",
                              key=True)
        return Case(name, self.smap.key(path).line, steps, clock, mocks)


def load_test_file(path: Path) -> TestFile:
    """Reads and checks ``path``; see the module invariants."""
    source = read_source(path, os.environ)
    report = Report(source.smap, list(source.diagnostics))
    data = source.data
    topology = topology_of(path, data)
    result = TestFile(path, topology, 1, [], report.diagnostics)
    if data is None or report.diagnostics:
        return result
    if not check(json_schema(), data, report):
        return result
    reader = _Reader(path, report)
    result.topology_line = reader.line(("topology",)) if "topology" in data else 1
    clock = reader.time(data["wall_clock"], ("wall_clock",)) if "wall_clock" in data else None
    mocks = reader.mocks(data.get("mocks") or {}, ("mocks",))
    cases = [reader.case(name, case, mocks, clock) for name, case in data["cases"].items()]
    if not report.diagnostics:
        result.cases = cases
    return result
