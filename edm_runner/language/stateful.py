"""Validation of the stateful language (docs/design/stateful.md): stores, tables, global
tables, and the order and references of stateful steps in pipelines.

Invariants the checks establish for a file without diagnostics:
- streams, tables and global tables have distinct names; a table reads a declared entity
  stream; a pipeline reading a table reads nothing else (no other source, no merge);
- every `store:` names a declared store of the type its step needs (windowed: window, session
  window: session, else key_value), used by exactly one step;
- group_by/group_by_key is followed by a window or an aggregation, a window by an
  aggregation, and every aggregation follows a group; group_by_key and stream joins never
  follow a key-changing step of the same sub-topology;
- `aggregate` has `aggregator` on streams and `adder` + `subtractor` on tables; `merger`
  exactly for session windows;
- both sides of a stream-table, stream-stream and table-table join are copartitioned (equal
  partition counts, key formats and partitioners: ``spec.partitioning``, checked in ``finish``
  once every internal topic's key format is decided);
- internal topics (repartition topics, changelogs) have distinct names, none of them a
  declared stream's topic.

Walking a pipeline tracks, per step, the topics feeding it (``partitioning.Side``: partition
count, key format, partitioner), whether the key changed since the last repartition, and the
pending group/window.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from edm_runner.language.context import EXPRESSION_PARAMS, CheckContext
from edm_runner.language.durations import DurationError, parse_duration
from edm_runner.language.report import did_you_mean, where

from edm_runner.language.flows import Flow, Ref
from edm_runner.language.partitioning import Side, internal_key_format, mismatch, partitioner_name

_AGGREGATE_PARAMS = ("key", "value", "aggregate", "event")

# Expression parameters by (operator, config key); any other expression gets EXPRESSION_PARAMS.
_PARAMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("aggregate", "aggregator"): _AGGREGATE_PARAMS,
    ("aggregate", "adder"): _AGGREGATE_PARAMS,
    ("aggregate", "subtractor"): _AGGREGATE_PARAMS,
    ("aggregate", "merger"): ("key", "aggregate", "other", "event"),
    ("reduce", "reducer"): _AGGREGATE_PARAMS,
    ("reduce", "adder"): _AGGREGATE_PARAMS,
    ("reduce", "subtractor"): _AGGREGATE_PARAMS,
    ("join", "value"): ("key", "value", "other", "event"),
}

KEY_CHANGING = frozenset({"select_key", "map", "flat_map"})
GROUPS = frozenset({"group_by", "group_by_key"})
AGGREGATIONS = frozenset({"count", "reduce", "aggregate"})
_UNGROUPED_HINT = ("aggregations work per key: add `- group_by_key: {}` (the current key) or "
                   "`- group_by: {key: EXPR, name: NAME}` before it")


def expression_params(op: str, subpath: tuple) -> tuple[str, ...]:
    """The parameter names of the expression at ``subpath`` inside a config of ``op``."""
    return _PARAMS.get((op, subpath[0] if subpath else ""), EXPRESSION_PARAMS)


@dataclass(frozen=True)
class Step:
    """A step with a registered operator; ``valid`` when its config matched the schema."""

    path: tuple
    op: str
    config: Any
    valid: bool


@dataclass
class _Walk:
    """Where a walk through a pipeline is: see the module docstring."""

    table: str | None = None
    feeds: list[Side] = field(default_factory=list)
    rekeyed: Step | None = None
    grouped: Step | None = None
    window: Step | None = None
    expect: tuple[Step, frozenset[str], str, str] | None = None  # step, allowed next ops, message, hint
    blind: bool = False  # after an unknown operator: its effect is unknown, order checks stop


class StateChecks:
    """The stateful checks of one microservice file; ``internal_topics`` (topic -> what it is)
    is complete after ``finish``."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self.report = ctx.report
        name = ctx.data.get("name")
        self.service = name if isinstance(name, str) else None
        self.store_users: dict[str, tuple] = {}
        self.join_names: dict[str, tuple] = {}
        self.internal_topics: dict[str, str] = {}
        self._internal_paths: dict[str, tuple] = {}
        self.joins: list[tuple[tuple, list[Side]]] = []  # (path, inputs + other side) per join

    # -- declarations -------------------------------------------------------------------

    def check_declarations(self) -> None:
        """Tables, global tables and stores on their own (before any pipeline)."""
        ctx = self.ctx
        self._tables("tables", "table", "table", {"stream": ctx.streams})
        self._tables("global_tables", "global table", "global", {"stream": ctx.streams, "table": ctx.tables})
        for name, cfg in ctx.stores.items():
            path = ("stores", name)
            for kind, names in (("table", ctx.tables), ("global table", ctx.global_tables)):
                if name in names:
                    self.report.error(path, f"store '{name}' has the name of {kind} '{name}', whose store "
                                            f"is implicit and named after it", "rename the store", key=True)
            if "retention" in cfg and cfg.get("type", "key_value") == "key_value":
                self.report.error(path + ("retention",), f"retention applies to window and session stores; "
                                                         f"'{name}' is a key_value store",
                                  "remove `retention:`, or declare `type: window`", key=True)
            if cfg.get("changelog", True) is not False:
                self._internal(self._topic(name, "changelog"), f"the changelog of store '{name}'",
                               path, check=False)

    def _tables(self, section: str, kind: str, suffix: str, taken: dict[str, dict]) -> None:
        """One namespace for sources; a table reads a declared entity stream (a table read)."""
        ctx = self.ctx
        for name, cfg in getattr(ctx, section).items():
            path = (section, name)
            for other, names in taken.items():
                if name in names:
                    self.report.error(path, f"'{name}' names both a {other} and a {kind}: streams, tables "
                                            f"and global tables share one namespace",
                                      f"rename the {kind}, e.g. '{name}-{suffix}'", key=True)
            source = cfg.get("from")
            ref = ctx.stream_ref(source, path + ("from",))
            if ref is None:
                continue
            stream_type = ctx.streams[source].get("type", "keyed")
            if stream_type != "entity":
                self.report.error(path + ("from",), f"{kind} '{name}' reads stream '{source}', which is "
                                                    f"not an entity stream (type: {stream_type})",
                                  f"declare `type: entity` on stream '{source}': a table keeps the "
                                  f"latest value per key, so its topic is compacted")
            ctx.table_reads.append(ref)

    # -- pipelines ----------------------------------------------------------------------

    def pipeline(self, cfg: dict, path: tuple, flow: Flow, steps: list[Step],
                 branches: list[list[Step]]) -> None:
        """Check the sources, the steps and the branches' steps of one pipeline."""
        walk = self._sources(cfg.get("from"), path, flow)
        for step in steps:
            self._step(walk, step, flow)
        for branch in branches or [[]]:
            arm = replace(walk, feeds=list(walk.feeds)) if branches else walk
            for step in branch:
                self._step(arm, step, flow)
            self._expectation(arm, None)

    def _sources(self, sources: Any, path: tuple, flow: Flow) -> _Walk:
        ctx = self.ctx
        walk = _Walk()
        listed = isinstance(sources, list)
        names = sources if listed else [sources]
        for i, name in enumerate(names):
            spath = path + ("from", i) if listed else path + ("from",)
            if not isinstance(name, str):
                continue
            if name in ctx.tables:
                if len(names) > 1:
                    self.report.error(spath, f"pipeline '{path[-1]}' reads table '{name}' and other sources: "
                                             f"a pipeline reads one table, or streams",
                                      f"read the table in a pipeline of its own; to combine it with a "
                                      f"stream, read the stream and `join: {{table: {name}}}`")
                    continue
                walk.table = name
                ref = self._table_stream(name)
                if ref is not None:
                    flow.reads.append(Ref(ref[0], ctx.topic(ref[0]), spath))
                    walk.feeds.append(self._table_side(name))
            elif name in ctx.global_tables:
                self.report.error(spath, f"'{name}' is a global table: a pipeline cannot read it",
                                  f"look values up with `join: {{global_table: {name}, key: EXPR}}` in a "
                                  f"pipeline that reads a stream")
            elif name not in ctx.streams and ctx.tables:
                self.report.error(spath, f"undefined stream or table '{name}'",
                                  did_you_mean(name, [*ctx.streams, *ctx.tables]))
            else:
                ref = ctx.stream_ref(name, spath)
                if ref:
                    flow.reads.append(ref)
                    walk.feeds.append(self._stream_side(name))
        return walk

    def _step(self, walk: _Walk, step: Step, flow: Flow) -> None:
        if step.op not in self.ctx.operators:
            walk.blind, walk.expect = True, None
            return
        self._expectation(walk, step)
        op, cfg = step.op, step.config
        config = cfg if isinstance(cfg, dict) else {}
        if op in KEY_CHANGING:
            walk.rekeyed = step
        elif op == "repartition":
            self._repartition(walk, step, config)
        elif op == "merge":
            self._merge(walk, step, cfg)
        elif op in GROUPS:
            self._group(walk, step, config)
        elif op == "window":
            self._window(walk, step, config, flow)
        elif op in AGGREGATIONS:
            self._aggregation(walk, step, config)
        elif op == "join":
            self._join(walk, step, config, flow)

    def _expectation(self, walk: _Walk, step: Step | None) -> None:
        """Report the pending group/window when ``step`` (None: the end) does not follow it."""
        if walk.expect is None:
            return
        at, allowed, message, hint = walk.expect
        walk.expect = None
        if step is None or step.op not in allowed:
            self.report.error(at.path, message, hint, key=True)

    def _repartition(self, walk: _Walk, step: Step, config: dict) -> None:
        walk.rekeyed = None
        partitioner, line = partitioner_name(config.get("partitioner")), self._line(step.path)
        if "to" in config:
            known = config["to"] in self.ctx.streams
            walk.feeds = [replace(self._stream_side(config["to"]), partitioner=partitioner, line=line)] if known else []
        elif isinstance(config.get("name"), str):
            topic = self._topic(config["name"], "repartition")
            walk.feeds = [self._internal_side(topic, config, partitioner, line)]
            self._internal(topic, f"the repartition topic of repartition '{config['name']}'",
                           step.path + ("name",))

    def _merge(self, walk: _Walk, step: Step, cfg: Any) -> None:
        if walk.table is not None:
            self.report.error(step.path, f"a pipeline reading table '{walk.table}' cannot merge streams",
                              "merge the streams in a pipeline that reads streams", key=True)
            return
        for name in cfg if isinstance(cfg, list) else [cfg]:
            if isinstance(name, str) and name in self.ctx.streams:
                walk.feeds.append(self._stream_side(name))

    def _group(self, walk: _Walk, step: Step, config: dict) -> None:
        if step.op == "group_by_key" and walk.rekeyed is not None and not walk.blind:
            changed = walk.rekeyed
            self.report.error(step.path, f"group_by_key after `{changed.op}` "
                                         f"(line {self._line(changed.path)}): the key changed in this "
                                         f"sub-topology, so events are not partitioned by it; use group_by",
                              "`- group_by: {key: key, name: NAME}` repartitions by the new key", key=True)
        if step.op == "group_by" and step.valid:
            name = config.get("name")
            partitions = config.get("partitions", max((f.partitions or 0 for f in walk.feeds), default=None))
            topic = self._topic(name, "repartition")
            self._internal(topic, f"the repartition topic of group_by '{name}'", step.path + ("name",))
            walk.feeds = [self._internal_side(topic, {**config, "partitions": partitions}, partitioner_name(None),
                                              self._line(step.path))]
            walk.rekeyed = None
        walk.grouped = step
        walk.expect = None if walk.blind else (
            step, AGGREGATIONS | {"window"}, f"{step.op} must be followed by window, count, reduce or aggregate",
            "a group only feeds an aggregation: add `- count: {store: NAME}` (or reduce, aggregate) after "
            "it, optionally with a `- window:` in between")

    def _window(self, walk: _Walk, step: Step, config: dict, flow: Flow) -> None:
        if walk.table is not None:
            self.report.error(step.path, f"a pipeline reading table '{walk.table}' cannot window: "
                                         f"windows group the events of a stream by time",
                              "read the table's stream instead of the table", key=True)
        elif walk.grouped is None and not walk.blind:
            self.report.error(step.path, "window must follow group_by or group_by_key",
                              "group the events first, e.g. `- group_by_key: {}` before the window",
                              key=True)
            walk.grouped = step  # reported once here, not again at the aggregation
        walk.window = step
        walk.expect = None if walk.blind else (
            step, AGGREGATIONS, "window must be followed directly by count, reduce or aggregate",
            "a window only feeds an aggregation: add e.g. `- count: {store: NAME}` after it")
        if not step.valid:
            return
        self._window_shape(step, config)
        late = config.get("late")
        if isinstance(late, dict) and "dead_letter" in late:
            ref = self.ctx.stream_ref(late["dead_letter"], step.path + ("late", "dead_letter"))
            if ref:
                flow.dead_letters.append(ref)

    def _window_shape(self, step: Step, config: dict) -> None:
        kind = config.get("type")
        needs = {"session": ("gap",), "hopping": ("size", "advance")}.get(kind, ("size",))
        for key in ("size", "advance", "gap"):
            if key in needs and key not in config:
                self.report.error(step.path, f"a {kind} window needs `{key}`", _WINDOW_HINTS.get(kind, ""), key=True)
            elif key not in needs and key in config:
                self.report.error(step.path + (key,), f"`{key}` does not apply to a {kind} window",
                                  _WINDOW_HINTS.get(kind, ""), key=True)
        if kind == "hopping" and "size" in config and "advance" in config:
            try:
                size, advance = parse_duration(config["size"]), parse_duration(config["advance"])
            except DurationError:  # reported by the schema
                return
            if advance > size:
                self.report.error(step.path + ("advance",), f"a hopping window's advance must be > 0 and "
                                                            f"at most its size ({config['size']})",
                                  "advance = size is a tumbling window; a smaller advance makes windows overlap")

    def _aggregation(self, walk: _Walk, step: Step, config: dict) -> None:
        window, grouped = walk.window, walk.grouped
        walk.grouped = walk.window = None
        if grouped is None and not walk.blind:
            self.report.error(step.path, f"{step.op} needs group_by or group_by_key before it",
                              _UNGROUPED_HINT, key=True)
        if not step.valid:
            return
        window_type = window.config.get("type") if window and isinstance(window.config, dict) else None
        windowed = {None: "key_value", "session": "session"}.get(window_type, "window")
        why = f"a {window_type}-windowed {step.op}" if window_type else f"{step.op} without a window"
        for name, store_type in self.ctx.operators[step.op].stores(config):
            self._store(step, name, store_type or (None if walk.blind else windowed), why)
        if step.op in ("aggregate", "reduce"):
            self._combiners(walk, step, config, window_type == "session")

    def _combiners(self, walk: _Walk, step: Step, config: dict, session: bool) -> None:
        """`aggregator`/`reducer` on streams, `adder` + `subtractor` on tables (the schema asks
        for one of the two forms); `merger` exactly for session windows."""
        stream_key = "aggregator" if step.op == "aggregate" else "reducer"
        table_keys = [k for k in ("adder", "subtractor") if k in config]
        if walk.table is None and table_keys:
            self.report.error(step.path + (table_keys[0],),
                              "`adder` and `subtractor` apply only when the pipeline reads a table",
                              f"on a stream, use `{stream_key}: EXPR` (params key, value, aggregate)", key=True)
        elif walk.table is not None and stream_key in config:
            self.report.error(step.path + (stream_key,),
                              f"a pipeline reading table '{walk.table}' {step.op}s with `adder` and "
                              f"`subtractor`, not `{stream_key}`",
                              "a table update replaces a value: `subtractor` (params key, value, aggregate) "
                              "takes the old value out of its group's aggregate, `adder` adds the new one",
                              key=True)
        if step.op != "aggregate":
            return
        if session and "merger" not in config:
            self.report.error(step.path, "a session-window aggregate needs `merger: EXPR`",
                              "params key, aggregate, other: combines two sessions that an event joins, "
                              "e.g. `aggregate + other`", key=True)
        elif not session and "merger" in config:
            self.report.error(step.path + ("merger",), "`merger` applies only to session windows",
                              "remove it", key=True)

    def _store(self, step: Step, name: str, expected: str | None, why: str) -> None:
        """``expected`` None: the type is unknown (after an unknown operator), not checked."""
        ctx = self.ctx
        path = step.path + ("store",)
        if name not in ctx.stores:
            kind = "table" if name in ctx.tables else "global table" if name in ctx.global_tables else None
            if kind:
                self.report.error(path, f"'{name}' is a {kind}: its store is written only by the {kind}",
                                  f"declare a store for the {step.op} under `stores:`")
            else:
                close = did_you_mean(name, ctx.stores) if ctx.stores else ""
                self.report.error(path, f"undefined store '{name}'",
                                  close if close.startswith("did")
                                  else f"declare it under `stores:` as `{name}: {{type: {expected or 'key_value'}}}`")
            return
        declared = ctx.stores[name].get("type", "key_value")
        if expected is not None and declared != expected:
            self.report.error(path, f"store '{name}' is a {declared} store, but {why} needs a {expected} store",
                              f"declare `{name}: {{type: {expected}}}` under `stores:`, or use another store")
        first = self.store_users.setdefault(name, path)
        if first is not path:
            self.report.error(path, f"store '{name}' is already used by {where(first[:-1])} "
                                    f"(line {self._line(first)})",
                              "each stateful step needs its own store: declare another one under `stores:`")

    def _join(self, walk: _Walk, step: Step, config: dict, flow: Flow) -> None:
        if not step.valid:
            return
        if "table" in config:
            self._table_join(walk, step, config, flow)
        elif "global_table" in config:
            self._global_join(walk, step, config)
        elif "stream" in config:
            self._stream_join(walk, step, config, flow)

    def _table_join(self, walk: _Walk, step: Step, config: dict, flow: Flow) -> None:
        ctx = self.ctx
        name, path = config["table"], step.path + ("table",)
        if name not in ctx.tables:
            if name in ctx.global_tables:
                self.report.error(path, f"'{name}' is a global table, not a table",
                                  f"join it with `global_table: {name}` and a lookup `key: EXPR`")
            elif name in ctx.streams:
                self.report.error(path, f"'{name}' is a stream, not a table",
                                  f"join a stream with `stream: {name}, name: NAME, within: DURATION`, "
                                  f"or declare a table over it under `tables:`")
            else:
                self.report.error(path, f"undefined table '{name}'", _hint(name, ctx.tables, "tables"))
            return
        if walk.table is None and config.get("kind") == "outer":
            self.report.error(step.path + ("kind",), "a stream-table join is inner or left, not outer",
                              "an outer join needs a table on both sides (a pipeline reading a table)")
        ref = self._table_stream(name)
        if walk.table is not None and ref is not None:
            flow.reads.append(Ref(ref[0], ctx.topic(ref[0]), path))  # its changes trigger the join
        if not self._rekeyed(walk, step) and ref is not None:
            self.joins.append((path, [*walk.feeds, self._table_side(name)]))

    def _global_join(self, walk: _Walk, step: Step, config: dict) -> None:
        ctx = self.ctx
        name, path = config["global_table"], step.path + ("global_table",)
        if walk.table is not None:
            self.report.error(path, f"a pipeline reading table '{walk.table}' can only join another table",
                              "look global tables up from a pipeline that reads a stream")
        elif name not in ctx.global_tables:
            if name in ctx.tables:
                self.report.error(path, f"'{name}' is a table, not a global table",
                                  f"join it with `table: {name}` (copartitioned), or declare it under "
                                  f"`global_tables:`")
            else:
                self.report.error(path, f"undefined global table '{name}'",
                                  _hint(name, ctx.global_tables, "global_tables"))

    def _stream_join(self, walk: _Walk, step: Step, config: dict, flow: Flow) -> None:
        ctx = self.ctx
        name, path = config["stream"], step.path + ("stream",)
        if walk.table is not None:
            self.report.error(path, f"a pipeline reading table '{walk.table}' can only join another table",
                              "join streams from a pipeline that reads a stream")
            return
        if name in ctx.tables:
            self.report.error(path, f"'{name}' is a table, not a stream", f"join it with `table: {name}`")
            return
        ref = ctx.stream_ref(name, path)
        if ref is not None:
            flow.reads.append(ref)
        self._join_stores(step, config.get("name"))
        if not self._rekeyed(walk, step) and ref is not None:
            self.joins.append((path, [*walk.feeds, self._stream_side(name)]))

    def _join_stores(self, step: Step, name: Any) -> None:
        """A stream-stream join buffers both sides in implicit stores `<name>-this`/`-other`."""
        if not isinstance(name, str):
            return
        path = step.path + ("name",)
        first = self.join_names.setdefault(name, path)
        if first is not path:
            self.report.error(path, f"join name '{name}' is already used at line {self._line(first)}",
                              "each stream-stream join needs its own `name` (it names its stores)")
            return
        for store in (f"{name}-this", f"{name}-other"):
            taken = [kind for kind, names in (("store", self.ctx.stores), ("table", self.ctx.tables),
                                              ("global table", self.ctx.global_tables)) if store in names]
            if taken:
                self.report.error(path, f"join '{name}' keeps its events in store '{store}', the name of a "
                                        f"declared {taken[0]}", "give the join another `name`")
            self._internal(self._topic(store, "changelog"), f"the changelog of join '{name}' ('{store}')",
                           path, check=False)

    def _rekeyed(self, walk: _Walk, step: Step) -> bool:
        """Report a join after a key change without a repartition; True when reported, or when
        an unknown operator came before (then keys and partitions are not checked)."""
        if walk.blind:
            return True
        if walk.rekeyed is None:
            return False
        changed = walk.rekeyed
        self.report.error(step.path, f"join after `{changed.op}` (line {self._line(changed.path)}): the key "
                                     f"changed, so events are not in the partition of their new key",
                          "repartition first: `- repartition: {name: NAME, partitions: N}` before the join",
                          key=True)
        return True

    # -- internal topics ----------------------------------------------------------------

    def finish(self) -> None:
        """After every pipeline: each join's sides are copartitioned, and no declared stream
        uses an internal topic."""
        groups = [sides for _, sides in self.joins]
        formats = {s.topic: internal_key_format(s.topic, None, groups)
                   for sides in groups for s in sides if s.key_format is None}
        for path, sides in self.joins:
            for side in sides[:-1]:
                problem = mismatch(side, sides[-1], formats)
                if problem is not None:
                    self.report.error(path, f"join is not copartitioned: {problem[0]}", problem[1])
        for name in self.ctx.streams:
            topic = self.ctx.topic(name)
            if topic in self.internal_topics:
                path = ("streams", name, "topic") if "topic" in self.ctx.streams[name] else ("streams", name)
                self.report.error(path, f"stream '{name}' uses topic '{topic}', {self.internal_topics[topic]} "
                                        f"of this service", "internal topics belong to the runner: choose "
                                                            "another topic or name",
                                  key=len(path) == 2)

    def _topic(self, name: Any, suffix: str) -> str:
        # the names operators.api.repartition_topic / changelog_topic give
        return f"{self.service}-{name}-{suffix}"

    def _internal(self, topic: str, what: str, path: tuple, check: bool = True) -> None:
        if self.service is None:
            return
        if check and topic in self.internal_topics:
            self.report.error(path, f"topic '{topic}' is already {self.internal_topics[topic]} "
                                    f"(line {self._line(self._internal_paths[topic])})",
                              "each group_by and repartition needs its own `name` (it names its topic)")
            return
        self.internal_topics.setdefault(topic, what)
        self._internal_paths.setdefault(topic, path)

    # -- helpers ------------------------------------------------------------------------

    def _stream_side(self, stream: str, what: str | None = None, kind: str = "stream") -> Side:
        """A declared stream as a join sees it (written by the default partitioner)."""
        cfg = self.ctx.streams.get(stream, {})
        key = cfg.get("key", "string")
        key_format = key.get("format", "json") if isinstance(key, dict) else key
        if not isinstance(key_format, str):  # reported by the schema
            key_format = "string"
        partitions = self._partitions(stream)
        return Side(kind, what or f"stream '{stream}'", self.ctx.topic(stream),  # type: ignore[arg-type]
                    partitions if _is_count(partitions) else None, key_format)

    def _table_side(self, table: str) -> Side:
        source = self.ctx.tables[table]["from"]
        return self._stream_side(source, f"table '{table}' (stream '{source}')", "table")

    @staticmethod
    def _internal_side(topic: str, config: dict, partitioner: str, line: int) -> Side:
        """A repartition or group_by topic; ``config``: its step's (partitions, key_format)."""
        partitions, key_format = config.get("partitions"), config.get("key_format")
        return Side("internal", f"repartition topic '{topic}'", topic, partitions if _is_count(partitions) else None,
                    key_format if isinstance(key_format, str) else None, partitioner, line)

    def _partitions(self, stream: str) -> Any:
        return self.ctx.streams.get(stream, {}).get("partitions", 1)

    def _table_stream(self, table: str) -> tuple[str, int] | None:
        """(source stream, its partitions) of a table whose source is a declared stream."""
        source = self.ctx.tables.get(table, {}).get("from")
        if not isinstance(source, str) or source not in self.ctx.streams:
            return None
        partitions = self._partitions(source)
        return (source, partitions) if _is_count(partitions) else None

    def _line(self, path: tuple) -> int:
        return self.report.smap.key(path).line


_WINDOW_HINTS = {
    "tumbling": "a tumbling window takes `size` (and grace, time, emit, late)",
    "sliding": "a sliding window takes `size`: events within `size` of each other are aggregated together",
    "hopping": "a hopping window takes `size` and `advance` (how far each window starts after the previous one)",
    "session": "a session window takes `gap`: a session closes after `gap` without events",
}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _hint(name: str, declared: Any, section: str) -> str:
    close = did_you_mean(name, declared) if declared else ""
    if close.startswith("did"):
        return f"{close} (or declare '{name}' under `{section}:`)"
    return f"declare '{name}' under `{section}:`"
