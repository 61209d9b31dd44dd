"""join: a stream or a table joined with a table, a global table or another stream.

``value: EXPR`` (params key, value, other, event) builds each result; ``value``/``other`` are
None for the missing side of left/outer results.

- ``{table: T, kind: inner|left}`` on a stream: each event looks up T by its key (inner drops
  events without a match). On a table (``kind: inner|left|outer``): a change on either side
  emits the joined change (``old`` = the previous result) when the result exists now or
  existed before (then the value is None: the joined key is gone).
- ``{global_table: G, key: EXPR, kind: inner|left}``: the lookup key is computed per event.
- ``{stream: S, name: N, within: W, grace: G, kind: inner|left|outer}``: events of both sides
  are buffered per (key, time) in the window stores ``N-this``/``N-other`` as lists of
  ``[value, matched]``; an event joins every buffered event of the other side with
  ``|t - t'| <= W`` (result time: the later of the two). Stream time (per task) is kept in
  ``N-this`` under key None. An event is late (counted, dropped) when t + W + G <= stream
  time; a buffered event is final once t + 2W + G <= stream time (no accepted event can match
  it any more): then it is deleted, and, unmatched, emitted with the other side None (left:
  this side's, outer: both sides').
"""
from __future__ import annotations

from typing import Any

from edm_runner.errors import EventError
from edm_runner.operators.api import BuildContext, Event, EventwiseProcessor, Processor, event_time
from edm_runner.operators.common import EXPRESSION, STREAM_NAME, keyed_expressions
from edm_runner.operators.registry import Operator, register
from edm_runner.operators.table import reads_table
from edm_runner.language.durations import DURATION_SCHEMA, parse_duration
from edm_runner.language.model import StepSpec
from edm_runner.state.keys import META


class LookupJoin(Processor):
    """Stream-table and stream-global_table joins: read-only lookups, no state written."""

    def __init__(self, ref: Any, key_fn: Any, value_fn: Any, inner: bool, label: str, step: StepSpec) -> None:
        self.ref = ref
        self.key_fn = key_fn
        self.value_fn = value_fn
        self.inner = inner
        self.label = label
        self.pos = step.pos

    def process(self, batch: list[Event]) -> list[Event]:
        table, kf, vf = self.ref.get(), self.key_fn, self.value_fn
        results = []
        for e in batch:
            k = e.key if kf is None else kf(e.key, e.value, e)
            other = None if k is None else table.get(k)
            if other is None and self.inner:
                continue
            results.append((e, vf(e.key, e.value, other, e)))
        for e, v in results:
            e.value = v
        return [e for e, _ in results]


class TableTableJoin(Processor):
    """Joins two tables' changes (this side: ``process``, the other: ``process_other``)."""

    def __init__(self, this: Any, other: Any, value_fn: Any, kind: str, step: StepSpec) -> None:
        self.this = this
        self.other = other
        self.value_fn = value_fn
        self.kind = kind
        self.label = f"join ({kind}, table-table)"
        self.pos = step.pos

    def _result(self, key: Any, v: Any, o: Any, e: Event) -> Any:
        present = {"inner": v is not None and o is not None, "left": v is not None,
                   "outer": v is not None or o is not None}[self.kind]
        return self.value_fn(key, v, o, e) if present else None

    def _changes(self, batch: list[Event], this_side: bool) -> list[Event]:
        store = (self.other if this_side else self.this).get()
        out = []
        for e in batch:
            current = store.get(e.key)
            if this_side:
                old, new = self._result(e.key, e.old, current, e), self._result(e.key, e.value, current, e)
            else:
                old, new = self._result(e.key, current, e.old, e), self._result(e.key, current, e.value, e)
            if old is None and new is None:
                continue
            change = e.derive(e.key, new)
            change.old = old
            out.append(change)
        return out

    def process(self, batch: list[Event]) -> list[Event]:
        return self._changes(batch, True)

    def process_other(self, batch: list[Event]) -> list[Event]:
        return self._changes(batch, False)


class StreamStreamJoin(EventwiseProcessor):
    """A windowed join of two streams (see the module docstring)."""

    def __init__(self, this: Any, other: Any, value_fn: Any, kind: str, within: int, grace: int,
                 late: Any, step: StepSpec) -> None:
        self.this_ref = this
        self.other_ref = other
        self.value_fn = value_fn
        self.kind = kind
        self.within = within
        self.grace = grace
        self.late = late
        self.label = f"join ({kind}, stream-stream)"
        self.pos = step.pos

    def begin(self) -> None:
        self.mine = self.this_ref.get()
        self.theirs = self.other_ref.get()
        self.meta = self.mine.get(META, 0) or {"time": None, "swept": None}

    def apply(self, e: Event) -> list[Event]:
        return self._join(e, True)

    def apply_other(self, e: Event) -> list[Event]:
        return self._join(e, False)

    def _join(self, e: Event, this_side: bool) -> list[Event]:
        key, t, w = e.key, event_time(e.timestamp), self.within
        if key is None:
            raise EventError("the join key is null; a stream-stream join matches events by key: filter "
                             "such events out first or compute a non-null key")
        prev = self.meta["time"]
        now = t if prev is None or t > prev else prev
        if t + w + self.grace <= now:
            self.late(e, f"event time {t} is too far behind stream time {now} (within {w} ms, "
                         f"grace {self.grace} ms)")
            return []
        mine, theirs = (self.mine, self.theirs) if this_side else (self.theirs, self.mine)
        vf = self.value_fn
        out, touched = [], []
        for ts, entries in theirs.fetch(key, t - w, t + w):
            for entry in entries:
                v, o = (e.value, entry[0]) if this_side else (entry[0], e.value)
                out.append(Event(key, vf(key, v, o, e), max(t, ts), e.headers, e.origin))
            touched.append((ts, [[entry[0], True] for entry in entries]))
        for ts, entries in touched:
            theirs.put(key, ts, entries)
        mine.put(key, t, (mine.get(key, t) or []) + [[e.value, bool(touched)]])
        if now != prev:
            self.meta = {**self.meta, "time": now}
            self.mine.put(META, 0, self.meta)
        return out

    def end(self, last: Event) -> list[Event]:
        now, swept = self.meta["time"], self.meta["swept"]
        if now is None or now == swept:
            return []
        lo = 0 if swept is None else swept - 2 * self.within - self.grace + 1
        hi = now - 2 * self.within - self.grace
        out: list[Event] = []
        if hi >= lo:
            emit_this, emit_other = self.kind in ("left", "outer"), self.kind == "outer"
            for store, emit, this_side in ((self.mine, emit_this, True), (self.theirs, emit_other, False)):
                for key, ts, entries in list(store.fetch_all(max(lo, 0), hi)):
                    if key is META:
                        continue
                    store.put(key, ts, None)
                    for v, matched in entries if emit else ():
                        if not matched:
                            value, other = (v, None) if this_side else (None, v)
                            out.append(Event(key, self.value_fn(key, value, other, last), ts, (), last.origin))
            out.sort(key=lambda ev: ev.timestamp)
        self.meta = {**self.meta, "swept": now}
        self.mine.put(META, 0, self.meta)
        return out


class SideInput(Processor):
    """Feeds a join the events of its other side (``Processor.process_other``)."""

    def __init__(self, join: Processor) -> None:
        self.join = join
        self.label = f"{join.label} (other side)"
        self.pos = join.pos

    def process(self, batch: list[Event]) -> list[Event]:
        return self.join.process_other(batch)


def _build(step: StepSpec, ctx: BuildContext) -> Processor:
    cfg = step.config
    kind = cfg.get("kind", "inner")
    value_fn = _compile_value(ctx, cfg["value"])
    if "global_table" in cfg:
        return LookupJoin(ctx.table(cfg["global_table"], step.pos), ctx.compile(cfg["key"], step.pos), value_fn,
                          kind == "inner", f"join ({kind}, global table {cfg['global_table']})", step)
    if "table" in cfg:
        if reads_table(ctx):
            this = ctx.topology.pipelines[ctx.pipeline].sources[0]
            return TableTableJoin(ctx.table(this, step.pos), ctx.table(cfg["table"], step.pos), value_fn,
                                  kind, step)
        return LookupJoin(ctx.table(cfg["table"], step.pos), None, value_fn, kind == "inner",
                          f"join ({kind}, table {cfg['table']})", step)
    within = parse_duration(cfg["within"])
    params = {"within": within}
    this = ctx.store(f"{cfg['name']}-this", "window", params, step.pos)
    other = ctx.store(f"{cfg['name']}-other", "window", params, step.pos)
    return StreamStreamJoin(this, other, value_fn, kind, within, parse_duration(cfg.get("grace", 0)),
                            ctx.late_events(None, step.pos), step)


def _compile_value(ctx: BuildContext, source: str) -> Any:
    return ctx.compile(source, params=("key", "value", "other", "event"))


def _references(config: Any) -> list[tuple[tuple, str, str]]:
    if not isinstance(config, dict):
        return []
    return [((kind,), kind, config[kind]) for kind in ("table", "global_table", "stream")
            if isinstance(config.get(kind), str)]


_VALUE = {**EXPRESSION, "description": "The result (params key, value, other, event; None for a missing side)."}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]+$",
         "description": "Names the join's buffer stores `<name>-this` and `<name>-other`."}

register(Operator(
    name="join",
    schema={
        "oneOf": [
            {"type": "object",
             "properties": {"table": {"type": "string", "minLength": 1, "description": "A table under `tables:`."},
                            "kind": {"enum": ["inner", "left", "outer"],
                                     "description": "inner (default) or left; outer for table-table joins."},
                            "value": _VALUE},
             "required": ["table", "value"], "additionalProperties": False},
            {"type": "object",
             "properties": {"global_table": {"type": "string", "minLength": 1,
                                             "description": "A table under `global_tables:`."},
                            "key": {**EXPRESSION, "description": "The lookup key (params key, value, event)."},
                            "kind": {"enum": ["inner", "left"], "description": "inner (default) or left."},
                            "value": _VALUE},
             "required": ["global_table", "key", "value"], "additionalProperties": False},
            {"type": "object",
             "properties": {"stream": STREAM_NAME, "name": _NAME,
                            "within": {**DURATION_SCHEMA, "description": "Max time between joined events."},
                            "grace": {**DURATION_SCHEMA, "description": "How late an event may arrive (default 0)."},
                            "kind": {"enum": ["inner", "left", "outer"],
                                     "description": "inner (default), left or outer."},
                            "value": _VALUE},
             "required": ["stream", "name", "within", "value"], "additionalProperties": False},
        ],
        "description": "{table, kind?, value}, {global_table, key, kind?, value} or "
                       "{stream, name, within, grace?, kind?, value}.",
    },
    build=_build,
    description="Join with a table, a global table, or another stream within a time window.",
    expressions=lambda config: keyed_expressions(config, "key", "value"),
    references=_references,
))
