"""Running the cases of a test file on the driver and checking their expectations.

Invariants:
- Each case runs on fresh state: a new ``harness.Harness`` (a new ``TestDriver``: new logs,
  counters, partitioners and mocks; LMDB stores in a temporary directory removed after it).
- A case fails with one ``Failure`` per unmet expectation, each at the ``file:line`` it is
  written at, with a diff of expected and actual records; it never stops at the first.
- A problem of the test file found only while running (a stream the topology does not
  declare, a value its format cannot encode, a mock of no function) is a ``BrokenTest``
  at ``file:line:col`` (``edm test`` exits 2), not a failure.
"""
from __future__ import annotations

import copy
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edm_runner.errors import ConfigError, Diagnostic, EdmError, EventError
from edm_runner.language import load_file
from edm_runner.language.model import BusinessTopology, StreamSpec, Topology
from edm_runner.operators.api import Event
from edm_runner.state.offline import key_text
from edm_runner.testing.harness import Harness, NotDeclared
from edm_runner.testing.spec import Advance, Case, Expect, Mock, Produce, StreamCheck, TestFile, parse_time

_META = ("line", "col", "origin")
_FIELDS = ("key", "value", "headers", "timestamp", "partition", "error")


class BrokenTest(EdmError):
    """The test file (or its topology) cannot run: its diagnostics say where and why."""

    exit_code = 2

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


@dataclass
class Failure:
    file: str
    line: int
    message: str
    diff: str = ""

    def format(self) -> str:
        text = f"{self.file}:{self.line}: {self.message}"
        if self.diff:
            text += "\n" + "\n".join("    " + line for line in self.diff.splitlines())
        return text


@dataclass
class CaseResult:
    file: str
    name: str
    line: int
    seconds: float
    failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def services_of(path: Path) -> list[Topology]:
    """The microservices a test file's topology runs (``BrokenTest`` when it is invalid)."""
    try:
        topology = load_file(path)
    except ConfigError as error:
        raise BrokenTest(error.diagnostics) from None
    return list(topology.services) if isinstance(topology, BusinessTopology) else [topology]


def run_file(test: TestFile) -> Iterator[CaseResult]:
    """Runs every case of ``test`` (a file without diagnostics), in order."""
    if not test.topology.is_file():
        raise BrokenTest([Diagnostic(str(test.path), test.topology_line, 1, f"no topology file {test.topology}",
                                     "name it with `topology: FILE` (relative to the test file), or call the "
                                     "test file NAME.test.yaml beside NAME.yaml")])
    services = services_of(test.topology)
    for case in test.cases:
        yield run_case(test, case, services)


def _mock(mock: Mock, base_dir: Path, calls: dict[str, int]) -> Callable[..., Any]:
    kind, arg = mock.kind, mock.arg
    if kind == "python":
        from edm_runner.language.functions import resolve_function
        fn = resolve_function(arg, base_dir)
    elif kind == "raises":
        def fn(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(arg)
    elif kind == "returns_each":
        answers = list(arg)

        def fn(*args: Any, **kwargs: Any) -> Any:
            return copy.deepcopy(answers.pop(0) if len(answers) > 1 else answers[0])
    else:
        def fn(*args: Any, **kwargs: Any) -> Any:
            return copy.deepcopy(arg)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[mock.name] = calls.get(mock.name, 0) + 1
        return fn(*args, **kwargs)

    return counted


def _call_names(topology: Topology) -> set[str]:
    """What a mock of an external API may name: the resources, and the pipelines with a call step."""
    names = set(topology.resources)
    for name, pipeline in topology.pipelines.items():
        steps = [*pipeline.steps, *(s for b in pipeline.branch for s in b.steps)]
        if any(step.op == "call" for step in steps):
            names.add(name)
    return names


class _Case:
    """One case being run: its harness (driver, streams by name) and its failures."""

    def __init__(self, test: TestFile, case: Case, services: list[Topology]) -> None:
        self.test = test
        self.file = str(test.path)
        self.case = case
        self.services = services
        functions = {n for t in services for n in t.functions}
        apis = {n for t in services for n in _call_names(t)}
        declared = functions | apis
        unknown = [m for m in case.mocks.values() if m.name not in declared]
        if unknown:
            raise BrokenTest([Diagnostic(
                self.file, m.line, m.col, f"mocks: '{m.name}' is not a function of the topology",
                f"a mock replaces a declared function, or the call steps naming a resource or in a pipeline; "
                f"here: {', '.join(sorted(declared)) or 'none'}")
                for m in unknown])
        self.calls: dict[str, int] = {}
        mocked: dict[str, dict[str, Callable[..., Any]]] = {"functions": {}, "apis": {}}
        for m in case.mocks.values():
            try:
                mocked["functions" if m.name in functions else "apis"][m.name] = _mock(m, test.path.parent, self.calls)
            except EdmError as error:  # a `python:` mock that does not resolve
                raise BrokenTest([Diagnostic(self.file, m.line, m.col, f"mocks: '{m.name}': {error}",
                                             "give module:function of a Python file beside the test file")]) from None
        self.harness = Harness(services, clock_ms=case.wall_clock, functions=mocked["functions"],
                               apis=mocked["apis"], name=str(test.topology))
        self.failures: list[Failure] = []

    def broken(self, line: int, col: int, message: str, hint: str = "") -> BrokenTest:
        return BrokenTest([Diagnostic(self.file, line, col, message, hint)])

    def stream(self, name: str, line: int, col: int) -> StreamSpec:
        try:
            return self.harness.stream(name)
        except NotDeclared as error:
            raise self.broken(line, col, str(error), error.hint) from None

    # -- steps ------------------------------------------------------------------------------

    def produce(self, step: Produce) -> None:
        self.stream(step.stream, step.line, step.col)
        for item in step.records:
            where = item.get("origin") or f"{self.file}:{item['line']}"
            try:
                self.harness.produce(step.stream, item["value"], item.get("key"), timestamp=item.get("timestamp"),
                                     headers=item.get("headers"), partition=item.get("partition"))
            except EventError as error:
                raise self.broken(item["line"], item["col"],
                                  f"a record for stream '{step.stream}' ({where}): {error}") from None
            except NotDeclared as error:
                raise self.broken(item["line"], item["col"], str(error)) from None
            if self.harness.failed is not None:
                return

    def run(self) -> None:
        failed_at = None
        for step in self.case.steps:
            if isinstance(step, Produce):
                self.produce(step)
                if self.harness.failed is not None and failed_at is None:
                    failed_at = step.line
            elif isinstance(step, Advance):
                self.harness.advance(step.ms)
            else:
                self.expect(step)
        error = self.harness.failed
        if error is not None and not any(isinstance(s, Expect) and s.error for s in self.case.steps):
            self.failures.append(Failure(self.file, failed_at or self.case.line,
                                         f"processing stopped: {error}"))

    # -- expectations -----------------------------------------------------------------------

    def fail(self, line: int, message: str, diff: str = "") -> None:
        self.failures.append(Failure(self.file, line, message, diff))

    def expect(self, exp: Expect) -> None:
        for check in exp.streams:
            self.check_stream(check)
        for store, (expected, line, col) in exp.stores.items():
            self.check_store(store, expected, line, col)
        stats = list(self.harness.stats.services.values())
        for name in ("late", "skipped"):
            wanted = getattr(exp, name)
            if wanted is None:
                continue
            value, line = wanted
            total = sum(getattr(s, name) for s in stats)
            by = {}
            for s in stats:
                for pipeline, n in getattr(s, f"{name}_by_pipeline").items():
                    by[pipeline] = by.get(pipeline, 0) + n
            if isinstance(value, int):
                if total != value:
                    self.fail(line, f"{name}: expected {value} event(s), got {total}"
                                    + (f" ({_counts(by)})" if by else ""))
            else:
                actual = {p: by.get(p, 0) for p in value}
                if actual != value:
                    self.fail(line, f"{name}: expected {_counts(value)}, got {_counts(by) or 'none'}")
        if exp.calls is not None:
            value, line = exp.calls
            actual = {name: self.calls.get(name, 0) for name in value}
            if actual != value:
                self.fail(line, f"calls: expected {_counts(value)}, got {_counts(actual)}")
        if exp.error is not None:
            text, line = exp.error
            failed = self.harness.failed
            if failed is None:
                self.fail(line, f"expected processing to stop with an error containing {text!r}, "
                                "but every event was processed")
            elif text not in str(failed):
                self.fail(line, f"expected processing to stop with an error containing {text!r}; "
                                f"it stopped with: {failed}")

    def check_stream(self, check: StreamCheck) -> None:
        spec = self.stream(check.stream, check.line, check.col)
        what = f"{'dead letters' if check.dead_letters else 'stream'} {check.stream}"
        actual = self.harness.records(check.stream)
        if check.records is not None:
            ok = len(actual) == len(check.records) and all(
                _matches(e, a) for e, a in zip(check.records, actual))
            if not ok:
                self.fail(check.line, f"{what}: expected {_n(len(check.records))}, got {_n(len(actual))}"
                          if len(actual) != len(check.records) else f"{what}: the records differ",
                          _diff(check.records, actual))
        if check.contains is not None:
            left = list(actual)
            missing = []
            for expected in check.contains:
                found = next((i for i, a in enumerate(left) if _matches(expected, a)), None)
                if found is None:
                    missing.append(expected)
                else:
                    del left[found]
            if missing:
                self.fail(check.line, f"{what}: {_n(len(missing))} expected among {_n(len(actual))} "
                                      "not found", _diff(missing, actual, "missing", "actual"))
        if check.count is not None and len(actual) != check.count:
            self.fail(check.line, f"{what}: expected {_n(check.count)}, got {_n(len(actual))}",
                      "\n".join(_show(a) for a in actual))
        if check.each is not None:
            source, fn = check.each
            bad = []
            for i, a in enumerate(actual):
                try:
                    ok = fn(a["key"], a["value"], _event(spec.topic, a, i))
                except Exception as error:  # the expression failed on this record
                    bad.append(f"{_show(a)}  ({type(error).__name__}: {error})")
                    continue
                if not ok:
                    bad.append(_show(a))
            if bad:
                self.fail(check.line, f"{what}: {_n(len(bad))} of {len(actual)} fail `{source}`", "\n".join(bad))

    def window_times(self, window: Any, line: int, col: int) -> Any:
        """An expected window with its ``start`` and ``end`` in milliseconds, as the store holds
        them: a test may write them as ISO 8601 date-times, like record timestamps."""
        if not isinstance(window, dict):
            return window
        times = {}
        for bound in ("start", "end"):
            if isinstance(window.get(bound), str):
                try:
                    times[bound] = parse_time(window[bound])
                except (ValueError, OverflowError):
                    raise self.broken(line, col, f"stores: {bound} {window[bound]!r} is not a time",
                                      "write milliseconds since the epoch or an ISO 8601 date-time, "
                                      "e.g. 2026-11-30T10:00:00Z") from None
        return {**window, **times}

    def check_store(self, store: str, expected: dict, line: int, col: int) -> None:
        try:
            entries = self.harness.store(store)
        except NotDeclared as error:
            raise self.broken(line, col, str(error)) from None
        wrong = []
        for key, value in expected.items():
            text = key_text(key)
            if isinstance(value, list) and isinstance(entries.get(text), list):  # a key's windows
                value = [self.window_times(w, line, col) for w in value]
            if entries.get(text) != value:
                shape = (" (a key of a window or session store holds its windows: write "
                         f"{text}: [{{start, value}}, ...])"
                         if isinstance(entries.get(text), list) and not isinstance(value, list) else "")
                wrong.append(f"{text}: expected {_json(value)}, got "
                             f"{_json(entries[text]) if text in entries else 'no such key'}{shape}")
        if wrong:
            self.fail(line, f"store {store}: {len(wrong)} key(s) differ", "\n".join(wrong))


def run_case(test: TestFile, case: Case, services: list[Topology]) -> CaseResult:
    started = time.perf_counter()
    running = _Case(test, case, services)
    with running.harness:
        running.run()
    return CaseResult(str(test.path), case.name, case.line, time.perf_counter() - started, running.failures)


# -- rendering ------------------------------------------------------------------------------

def _n(count: int) -> str:
    return f"{count} record{'' if count == 1 else 's'}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _matches(expected: dict, actual: dict) -> bool:
    for name, want in expected.items():
        if name in _META:
            continue
        got = actual.get(name)
        if name == "headers":
            if any(got.get(k) != v for k, v in want.items()):
                return False
        elif name == "error":
            if got is None or want not in got:
                return False
        elif got != want:
            return False
    return True


def _project(actual: dict, fields: set[str]) -> dict:
    out = {}
    for name in _FIELDS:
        if name in fields and name in actual:
            out[name] = actual[name]
    return out


def _show(record: dict, fields: set[str] | None = None) -> str:
    shown = _project(record, fields or {"key", "value"})
    return _json(shown)


def _diff(expected: list[dict], actual: list[dict], a: str = "expected", b: str = "actual") -> str:
    """A unified diff of the records as JSON lines, showing of each actual record only the
    fields the expected ones compare (key and value when they compare none)."""
    fields = {k for e in expected for k in e if k not in _META} or {"key", "value"}
    left = [_show({k: v for k, v in e.items() if k not in _META}, fields) for e in expected]
    right = []
    for r in actual:
        shown = _project(r, fields)
        if "headers" in fields:
            keys = {k for e in expected for k in (e.get("headers") or {})}
            shown["headers"] = {k: v for k, v in r.get("headers", {}).items() if k in keys}
        right.append(_json(shown))
    lines = list(difflib.unified_diff(left, right, a, b, lineterm="", n=len(left) + len(right)))
    return "\n".join(lines)


def _event(topic: str, record: dict, offset: int) -> Event:
    from edm_runner.records import Record
    headers = tuple((k, v.encode() if isinstance(v, str) else b"") for k, v in record["headers"].items())
    origin = Record(topic, record["partition"], offset, None, None, record["timestamp"], headers)
    return Event(record["key"], record["value"], record["timestamp"], headers, origin)
