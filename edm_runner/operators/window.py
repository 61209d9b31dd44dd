"""window: windowed aggregations (tumbling, hopping, sliding, session).

The ``window`` step is a pass-through marker; the aggregation that follows it
(``count``/``reduce``/``aggregate``) does the windowing (``build_windowed``).

Time, per task: an event's time is its record timestamp or the ``time`` expression (ms), checked
by ``operators.api.event_time`` (0..year 9999, else an error of the event), so the window bounds
computed from it and a duration stay inside 64 bits.
Stream time is the max event time seen; it lives in the store under the reserved key None
(window start 0, session [0, 0]; aggregations never store a null group key), with the
emit-final and retention watermarks, so it survives restarts and restores.

Windows (ends exclusive for tumbling/hopping, inclusive for sliding and sessions):
- tumbling ``[s, s+size)``, s a multiple of size; hopping: s a multiple of ``advance``.
- sliding (Kafka Streams semantics): windows ``[s, s+size]`` created per event at its
  boundaries; the store value is ``[aggregate, max event time in the window]``.
- session: events closer than ``gap`` share a session; an event bridging sessions merges
  them (``merger``); update mode emits merged-away sessions with value null.
A window is closed when end + grace <= stream time (sessions: end + grace < stream time). An
event that can update no open window is late: counted (``ServiceStats.late``) and dropped or
dead-lettered (``ctx.late_events``); a hopping/sliding event that still updates some window
is not late (its closed windows are skipped). A session event is late when its own time +
grace < stream time (so a closed session can never be merged again).
``emit: final`` emits each window once when it closes (sessions: when end + gap + grace <
stream time, the earliest no accepted event can change it): the emitted-up-to watermark is
in the store, written in the same batch as the windows. Windows whose end + retention <
stream time are deleted (retention: the store's, default max(size + grace, 1 day)).
Output: key = group key, value = ``{"start", "end", "value"}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edm_runner.errors import EventError
from edm_runner.operators.aggregation import AggregateFns, null_group_key
from edm_runner.operators.api import BuildContext, Event, EventwiseProcessor, ExprFn, PassThrough, Processor, event_time
from edm_runner.operators.common import EXPRESSION, STREAM_NAME
from edm_runner.operators.registry import Operator, register
from edm_runner.operators.table import reads_table
from edm_runner.language.durations import DURATION_SCHEMA, POSITIVE_DURATION_SCHEMA, parse_duration
from edm_runner.language.model import StepSpec
from edm_runner.state.keys import META

DAY_MS = 86_400_000
EMPTY: Any = object()  # an empty sliding window's aggregate (before any value)


@dataclass(frozen=True)
class WindowDef:
    kind: str
    size: int  # session: the gap
    advance: int
    grace: int
    emit: str
    time: str | None
    dead_letter: str | None


def window_def(config: dict) -> WindowDef:
    kind = config["type"]
    size = parse_duration(config["gap"] if kind == "session" else config["size"])
    advance = parse_duration(config["advance"]) if kind == "hopping" else size
    late = config.get("late", "skip")
    return WindowDef(kind, size, advance, parse_duration(config.get("grace", 0)), config.get("emit", "update"),
                     config.get("time"), late["dead_letter"] if isinstance(late, dict) else None)


def store_type(window_config: dict | None) -> str:
    """The store type an aggregation needs after this window step (None: no window)."""
    if window_config is None:
        return "key_value"
    return "session" if window_config.get("type") == "session" else "window"


def _time_fn(ctx: BuildContext, w: WindowDef, pos: Any) -> ExprFn | None:
    return ctx.compile(w.time, pos) if w.time else None


class _Windowed(EventwiseProcessor):
    """Stream time, lateness, emit-final and retention shared by the window kinds.

    ``meta`` = {"time": stream time, "swept": the stream time of the last emission/retention
    pass (emit final: windows closed by then were emitted), "retained": the last window start
    (session: end) deleted by retention}. The pass runs once per batch (``end``), after its
    events: ``fetch_all`` costs a scan of the store.
    """

    def __init__(self, fns: AggregateFns, ref: Any, w: WindowDef, retention: int, time_fn: ExprFn | None,
                 late: Any, step: StepSpec) -> None:
        self.fns = fns
        self.ref = ref
        self.w = w
        self.retention = retention
        self.time_fn = time_fn
        self.late = late
        self.final = w.emit == "final"
        self.label = f"{step.op} ({w.kind} window)"
        self.pos = step.pos

    def begin(self) -> None:
        self.store = self.ref.get()
        self.meta = self.read_meta() or {"time": None, "swept": None, "retained": None}

    def event_time(self, e: Event) -> int:
        return event_time(self.time_fn(e.key, e.value, e) if self.time_fn else e.timestamp)

    def apply(self, e: Event) -> list[Event]:
        key = e.key
        if key is None:
            raise null_group_key()
        if e.value is None:
            return []
        t = self.event_time(e)
        prev = self.meta["time"]
        now = t if prev is None or t > prev else prev
        updates = self.update(key, e, t, now)
        if updates is None:
            self.late(e, f"event time {t} is too far behind stream time {now} "
                              f"(grace {self.w.grace} ms): its windows are closed")
            updates = []
        if now != prev:
            self.meta = {**self.meta, "time": now}
            self.write_meta(self.meta)
        return [] if self.final else updates

    def end(self, last: Event) -> list[Event]:
        meta = self.meta
        now, swept = meta["time"], meta["swept"]
        if now is None or now == swept:
            return []
        out = self.emit_closed(last, swept, now) if self.final else []
        self.meta = {**meta, "swept": now, "retained": self.expire(meta["retained"], now)}
        self.write_meta(self.meta)
        return out

    def opened(self, e: Event, key: Any, start: int, end: int, agg: Any) -> Event:
        return e.derive(key, {"start": start, "end": end, "value": agg})

    # -- per kind ----------------------------------------------------------------------------

    def update(self, key: Any, e: Event, t: int, now: int) -> list[Event] | None:
        """Apply the event; its update events, or None when it is late."""
        raise NotImplementedError

    def emit_closed(self, e: Event, swept: int | None, now: int) -> list[Event]:
        """The windows that closed since stream time ``swept``, in close order."""
        raise NotImplementedError

    def expire(self, retained: int | None, now: int) -> int | None:
        """Deletes windows past retention; the new ``retained`` mark."""
        raise NotImplementedError

    def read_meta(self) -> dict | None:
        raise NotImplementedError

    def write_meta(self, meta: dict) -> None:
        raise NotImplementedError


def _has_multiple(lo: int, hi: int, step: int) -> bool:
    """Whether [lo, hi] holds a multiple of ``step``."""
    return hi >= lo and -(-lo // step) * step <= hi


class _StartKeyed(_Windowed):
    """Windows stored by start in a window store: tumbling, hopping, sliding. ``adv`` is the
    spacing of possible window starts (1 for sliding windows)."""

    adv = 1

    def read_meta(self) -> dict | None:
        return self.store.get(META, 0)

    def write_meta(self, meta: dict) -> None:
        self.store.put(META, 0, meta)

    def stored_agg(self, value: Any) -> Any:
        return value

    def emit_closed(self, e: Event, swept: int | None, now: int) -> list[Event]:
        size, grace = self.w.size, self.w.grace
        lo = 0 if swept is None else max(0, swept - grace - size + 1)
        hi = now - grace - size
        if not _has_multiple(lo, hi, self.adv):
            return []
        return [Event(k, {"start": s, "end": s + size, "value": self.stored_agg(v)}, s + size - 1, (), e.origin)
                for k, s, v in self.store.fetch_all(lo, hi) if k is not META]

    def expire(self, retained: int | None, now: int) -> int | None:
        lo = 0 if retained is None else retained + 1
        hi = now - self.w.size - self.retention - 1
        if not _has_multiple(lo, hi, self.adv):
            return retained if hi < lo else hi
        store = self.store
        for k, s in [(k, s) for k, s, _ in store.fetch_all(lo, hi) if k is not META]:
            store.put(k, s, None)
        return hi


class TimeWindowAggregate(_StartKeyed):
    """Tumbling and hopping windows ``[s, s + size)``, s a multiple of ``advance``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.adv = self.w.advance

    def update(self, key: Any, e: Event, t: int, now: int) -> list[Event] | None:
        size, adv, fns, store, v = self.w.size, self.adv, self.fns, self.store, e.value
        close = now - self.w.grace
        first = max(0, -(-(t - size + 1) // adv) * adv)
        starts = [s for s in range(first, t + 1, adv) if s + size > close]
        if not starts:
            return None
        news = []
        for s in starts:
            agg = store.get(key, s)
            news.append((s, fns.add(key, v, agg, e) if agg is not None else fns.first(key, v, e)))
        for s, agg in news:
            store.put(key, s, agg)
        return [self.opened(e, key, s, s + size, agg) for s, agg in news]


class SlidingWindowAggregate(_StartKeyed):
    """Kafka Streams' sliding windows: ``[s, s + size]`` (both ends inclusive), created at each
    event's boundaries; stored values are ``[aggregate, max event time in the window]``."""

    def stored_agg(self, value: Any) -> Any:
        return value[0]

    def _fold(self, key: Any, e: Event, agg: Any) -> Any:
        v = e.value
        return self.fns.first(key, v, e) if agg is EMPTY else self.fns.add(key, v, agg, e)

    def update(self, key: Any, e: Event, t: int, now: int) -> list[Event] | None:
        size = self.w.size
        close = now - self.w.grace
        if t + 1 + size <= close:
            return None
        if t < size:
            raise EventError(f"sliding windows need event times of at least the window size ({size} ms), "
                             f"got {t}")
        store = self.store
        left_agg: Any = EMPTY
        prev_ts: int | None = None
        left_made = right_made = False
        right_win: list | None = None
        starts: set[int] = set()
        updates: list[tuple[int, Any, int]] = []  # (start, base aggregate, base max time)
        for s, (agg, mx) in store.fetch(key, max(0, t - 2 * size), t + 1):
            starts.add(s)
            end = s + size
            if end < t:
                left_agg, prev_ts = agg, mx
            elif end == t:
                left_made = True
                if mx < t:
                    prev_ts = mx
                updates.append((s, agg, mx))
            elif s <= t:
                right_win = [agg, mx]
                updates.append((s, agg, mx))
            elif s == t + 1:
                right_made = True
        if prev_ts is not None and prev_ts + 1 not in starts and prev_ts + 1 + size >= t:
            updates.append((prev_ts + 1, EMPTY, t))
        if not left_made:
            base = left_agg if prev_ts is not None and t - size <= prev_ts else EMPTY
            updates.append((t - size, base, t))
        news = [(s, [self._fold(key, e, agg), max(mx, t)]) for s, agg, mx in updates if s + size > close]
        if not right_made and right_win is not None and right_win[1] > t:
            news.append((t + 1, right_win))
        for s, value in news:
            store.put(key, s, value)
        return [self.opened(e, key, s, s + size, value[0]) for s, value in news]


class SessionWindowAggregate(_Windowed):
    """Session windows ``[start, end]`` (inclusive) in a session store."""

    def read_meta(self) -> dict | None:
        found = self.store.find(META, 0, 0)
        return found[0][2] if found else None

    def write_meta(self, meta: dict) -> None:
        self.store.put(META, 0, 0, meta)

    def update(self, key: Any, e: Event, t: int, now: int) -> list[Event] | None:
        gap, fns, v = self.w.size, self.fns, e.value
        if t + self.w.grace < now:
            return None
        found = sorted(self.store.find(key, t - gap, t + gap))
        merged: Any = None
        start, end = t, t
        for s, en, agg in found:
            if merged is None:
                merged = agg
            elif fns.merge is None:
                raise EventError("merging sessions needs a `merger` expression on the aggregate step")
            else:
                merged = fns.merge(key, merged, agg, e)
            start, end = min(start, s), max(end, en)
        new = fns.first(key, v, e) if merged is None else fns.add(key, v, merged, e)
        out = []
        for s, en, _ in found:
            if (s, en) != (start, end):
                self.store.put(key, s, en, None)
                out.append(self.opened(e, key, s, en, None))
        self.store.put(key, start, end, new)
        out.append(self.opened(e, key, start, end, new))
        return out

    def emit_closed(self, e: Event, swept: int | None, now: int) -> list[Event]:
        lag = self.w.size + self.w.grace  # a session ending at `end` is final once end + lag < now
        lo = 0 if swept is None else max(0, swept - lag)
        hi = now - lag - 1
        if hi < lo:
            return []
        return [Event(k, {"start": s, "end": en, "value": v}, en, (), e.origin)
                for k, s, en, v in sorted(self.store.fetch_all(lo, hi), key=lambda r: (r[2], r[1]))
                if k is not META]

    def expire(self, retained: int | None, now: int) -> int | None:
        lo = 0 if retained is None else retained + 1
        hi = now - self.retention - 1
        if hi < lo:
            return retained
        store = self.store
        for k, s, en in [(k, s, en) for k, s, en, _ in store.fetch_all(lo, hi) if k is not META]:
            store.put(k, s, en, None)
        return hi


_KINDS: dict[str, type[_Windowed]] = {"tumbling": TimeWindowAggregate, "hopping": TimeWindowAggregate,
                                      "sliding": SlidingWindowAggregate, "session": SessionWindowAggregate}


def build_windowed(step: StepSpec, window_step: StepSpec, fns: AggregateFns, ctx: BuildContext) -> Processor:
    """The windowed form of the aggregation ``step`` that follows ``window_step``."""
    from edm_runner.errors import EdmError

    if reads_table(ctx):
        raise EdmError(f"{step.pos}: a windowed aggregation needs a stream; pipeline {ctx.pipeline!r} "
                       f"reads a table (remove the `window` step or read the table's stream)")
    w = window_def(window_step.config)
    if w.kind == "session" and step.op == "aggregate" and fns.merge is None:
        raise EdmError(f"{step.pos}: an aggregate over session windows needs `merger: EXPR` (params key, "
                       f"aggregate, other) to combine two sessions' aggregates")
    name = step.config["store"]
    params: dict = {"aggregation": step.op, "window": w.kind}
    params.update({"gap": w.size} if w.kind == "session" else {"size": w.size, "advance": w.advance})
    ref = ctx.store(name, store_type(window_step.config), params, step.pos)
    declared = ctx.topology.stores.get(name)
    retention = declared.retention_ms if declared and declared.retention_ms is not None \
        else max(w.size + w.grace, DAY_MS)
    late = ctx.late_events(w.dead_letter, window_step.pos)
    return _KINDS[w.kind](fns, ref, w, retention, _time_fn(ctx, w, window_step.pos), late, step)


def _requires(kind: str, keys: list[str]) -> dict:
    return {"if": {"properties": {"type": {"const": kind}}}, "then": {"required": keys}}


def _references(config: Any) -> list[tuple[tuple, str, str]]:
    late = config.get("late") if isinstance(config, dict) else None
    if isinstance(late, dict) and isinstance(late.get("dead_letter"), str):
        return [(("late", "dead_letter"), "stream", late["dead_letter"])]
    return []


register(Operator(
    name="window",
    schema={
        "type": "object",
        "properties": {
            "type": {"enum": ["tumbling", "hopping", "sliding", "session"],
                     "description": "tumbling (size), hopping (size, advance), sliding (size: the max "
                                    "time difference), session (gap)."},
            "size": {**POSITIVE_DURATION_SCHEMA, "description": "The window length."},
            "advance": {**POSITIVE_DURATION_SCHEMA,
                        "description": "Hopping windows: the distance between window starts."},
            "gap": {**POSITIVE_DURATION_SCHEMA,
                    "description": "Session windows: the inactivity gap closing a session."},
            "grace": {**DURATION_SCHEMA, "description": "How long after its end a window accepts late "
                                                        "events (default 0)."},
            "time": {**EXPRESSION, "description": "The event time in ms (default: the record timestamp)."},
            "emit": {"enum": ["update", "final"],
                     "description": "`update`: every change (default); `final`: once per window when it closes."},
            "late": {"oneOf": [{"const": "skip"},
                               {"type": "object", "properties": {"dead_letter": STREAM_NAME},
                                "required": ["dead_letter"], "additionalProperties": False}],
                     "description": "Late events: `skip` (counted, default) or `{dead_letter: STREAM}`."},
        },
        "required": ["type"],
        "additionalProperties": False,
        "allOf": [_requires("tumbling", ["size"]), _requires("hopping", ["size", "advance"]),
                  _requires("sliding", ["size"]), _requires("session", ["gap"])],
        "description": "{type, size|advance|gap, grace?, time?, emit?, late?}: window the aggregation "
                       "that follows.",
    },
    build=lambda step, ctx: PassThrough("window", step.pos),
    description="Window the aggregation that follows (tumbling, hopping, sliding, session).",
    expressions=lambda config: [(("time",), config["time"])]
    if isinstance(config, dict) and isinstance(config.get("time"), str) else [],
    references=_references,
))
