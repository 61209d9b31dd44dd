"""Validation of one microservice file: structure (JSON Schema), steps, then semantics.

Every check reports into the file's ``Report`` and carries on, so a user sees all problems at
once. Checks are defensive about shapes the structural pass already reported (they skip what
is not the expected type) so one mistake yields one diagnostic.

Besides diagnostics, validation returns the service's ``Flows``: which topics each pipeline
reads and writes, with positions; the cycle check and the business checks work on those.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from edm_runner.language import structure
from edm_runner.language.compat import DEFAULT_MODE, open_objects
from edm_runner.language.concurrency import check_functions as check_async_functions
from edm_runner.language.concurrency import check_pipeline as check_concurrency
from edm_runner.language.context import CheckContext, undefined_hint
from edm_runner.language.cycles import find_cycles
from edm_runner.language.expressions import function_name_problem
from edm_runner.language.flows import Flow, Ref
from edm_runner.language.functions import FunctionRefError, resolve_function
from edm_runner.language.http import LISTEN_PATTERN, check_http, split_listen
from edm_runner.language.report import Report, did_you_mean
from edm_runner.language.schema import IDENTIFIER_PATTERN, PYTHON_REF_PATTERN, validation_schema
from edm_runner.language.stateful import StateChecks, Step, expression_params

@dataclass
class Checked:
    """The outcome of validating a microservice file. ``table_reads``: the streams tables and
    global tables materialize (consumed, like pipeline sources). ``internal_topics``: topic ->
    what it is (a store's changelog, a repartition topic), never shared with other services."""

    name: str | None
    streams: dict[str, dict]
    flows: list[Flow]
    stream_dead_letters: dict[str, Ref]  # stream name -> its on_error dead letter
    table_reads: list[Ref] = field(default_factory=list)
    internal_topics: dict[str, str] = field(default_factory=dict)
    listen: tuple[str, int] | None = None  # ``http.listen`` (host, port), when it is valid
    event_schemas: dict[tuple[str, str], Any] = field(default_factory=dict)  # (stream, key|value) -> schema


def _placeholder(*args: Any, **kwargs: Any) -> None:
    """Stands for a function that could not be resolved, so expressions calling it are still
    checked without repeating the function's own error."""


def check_microservice(data: dict, report: Report, base_dir: Path, no_code: bool) -> Checked:
    """Validate a microservice document (a mapping with ``kind: microservice``)."""
    schema = validation_schema()
    structure.check({"$defs": schema["$defs"], "$ref": "#/$defs/microservice"}, data, report)
    ctx = CheckContext(data, report, base_dir, no_code)
    event_schemas: dict[tuple[str, str], Any] = {}
    stream_dead_letters = _check_streams(ctx, event_schemas)
    _check_functions(ctx)
    check_async_functions(ctx)
    _check_assignment(ctx)
    _check_resources(ctx)
    state = StateChecks(ctx)
    state.check_declarations()
    flows = _check_pipelines(ctx, state)
    state.finish()
    _check_cycles(flows, report)
    functions = ctx.data.get("functions")
    function_stores = {store for cfg in (functions.values() if isinstance(functions, dict) else [])
                       if isinstance(cfg, dict) and isinstance(cfg.get("stores"), list)
                       for store in cfg["stores"] if isinstance(store, str)}
    ingest = check_http(ctx, set(state.store_users) | function_stores)
    if ingest is not None:
        flows.append(ingest)  # after the cycle check: ingestion reads nothing
    _lint_open_models(ctx, flows, event_schemas)
    name = data.get("name")
    http = data.get("http")
    listen = http.get("listen", "0.0.0.0:8080") if isinstance(http, dict) else None
    return Checked(name if isinstance(name, str) else None, ctx.streams, flows, stream_dead_letters,
                   ctx.table_reads, state.internal_topics,
                   split_listen(listen) if isinstance(listen, str) and re.fullmatch(LISTEN_PATTERN, listen) else None,
                   event_schemas)


def _check_streams(ctx: CheckContext, event_schemas: dict[tuple[str, str], Any]) -> dict[str, Ref]:
    by_topic: dict[str, tuple[str, int]] = {}
    dead_letters: dict[str, Ref] = {}
    for name, cfg in ctx.streams.items():
        path = ("streams", name)
        partitions = cfg.get("partitions", 1)
        topic = ctx.topic(name)
        if isinstance(partitions, int) and not isinstance(partitions, bool):
            if topic in by_topic and by_topic[topic][1] != partitions:
                other, count = by_topic[topic]
                ctx.report.error(path + ("partitions",) if "partitions" in cfg else path,
                                 f"streams '{other}' and '{name}' share topic '{topic}' but declare "
                                 f"different partitions ({count} and {partitions})",
                                 "a topic has one partition count: make them equal or use another topic",
                                 key="partitions" not in cfg)
            by_topic.setdefault(topic, (name, partitions))
        for part in ("key", "value"):
            serde = cfg.get(part)
            if isinstance(serde, dict) and isinstance(serde.get("schema"), str):
                document = _check_event_schema(ctx, serde["schema"], path + (part, "schema"))
                if document is not None:
                    event_schemas[(name, part)] = document
        on_error = cfg.get("on_error")
        if isinstance(on_error, dict) and "dead_letter" in on_error:
            ref = ctx.stream_ref(on_error["dead_letter"], path + ("on_error", "dead_letter"))
            if ref:
                dead_letters[name] = ref
    return dead_letters


def _check_event_schema(ctx: CheckContext, relative: str, path: tuple) -> Any:
    """The event schema document at ``relative``, or None (reported) when it is not one."""
    file = ctx.base_dir / relative
    if not file.is_file():
        ctx.report.error(path, f"event schema file not found: {relative}",
                         f"the path is relative to the topology file's directory ({ctx.base_dir.resolve()})")
        return None
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        ctx.report.error(path, f"cannot read event schema {relative}: {e}",
                         "an event schema is a JSON file holding a JSON Schema")
        return None
    try:
        if not isinstance(document, (dict, bool)):
            raise SchemaError(f"a JSON Schema is an object or a boolean, not {type(document).__name__}")
        validator_for(document, default=Draft202012Validator).check_schema(document)
    except SchemaError as e:
        ctx.report.error(path, f"event schema {relative} is not a valid JSON Schema: {e.message} "
                               f"(at {e.json_path})",
                         "see https://json-schema.org/understanding-json-schema/")
        return None
    return document


def _lint_open_models(ctx: CheckContext, flows: list[Flow], event_schemas: dict[tuple[str, str], Any]) -> None:
    """A warning per schema of a stream the service writes whose objects are open: under a
    BACKWARD or FULL mode, adding a property to an open model later breaks (language.compat)."""
    written = dict.fromkeys(ref.stream for flow in flows for ref in flow.writes)
    for stream in written:
        mode = ctx.streams.get(stream, {}).get("compatibility", DEFAULT_MODE)
        if not isinstance(mode, str) or not mode.startswith(("BACKWARD", "FULL")):
            continue
        for part in ("key", "value"):
            paths = open_objects(event_schemas[(stream, part)]) if (stream, part) in event_schemas else []
            if paths:
                relative = ctx.streams[stream][part]["schema"]
                ctx.report.warn(
                    ("streams", stream, part, "schema"),
                    f"stream '{stream}' is written with an open content model in {relative} at {', '.join(paths)}: "
                    f"under {mode}, adding a property to it later breaks the stream's consumers",
                    "add \"additionalProperties\": false to those objects (properties can then be added as "
                    "optional), or set `compatibility: FORWARD` (or NONE) on the stream")


def _check_functions(ctx: CheckContext) -> None:
    functions = ctx.data.get("functions")
    if not isinstance(functions, dict):
        return
    for name, cfg in functions.items():
        if not re.fullmatch(IDENTIFIER_PATTERN, name):
            continue  # the structural check reported the name
        if problem := function_name_problem(name):
            ctx.report.error(("functions", name), f"function name '{name}' {problem}",
                             f"rename the function, e.g. to '{name.strip('_')}_fn', and "
                             "call it by that name", key=True)
            continue
        ref = cfg.get("python") if isinstance(cfg, dict) else None
        ctx.functions[name] = _placeholder
        for index, store in enumerate(cfg.get("stores", []) if isinstance(cfg, dict) else []):
            if isinstance(store, str) and store not in ctx.stores:
                ctx.report.error(("functions", name, "stores", index), f"undefined store '{store}'",
                                 undefined_hint(store, ctx.stores, "stores"))
        if not isinstance(ref, str) or not re.fullmatch(PYTHON_REF_PATTERN, ref):
            continue  # the structural check reported it
        path = ("functions", name, "python")
        if ctx.no_code:
            ctx.report.error(path, f"--no-code refuses Python functions; function '{name}' "
                                   f"references '{ref}'",
                             "rewrite the logic as an expression, or run without --no-code",
                             code="no-code")
            continue
        try:
            ctx.functions[name] = resolve_function(ref, ctx.base_dir)
        except FunctionRefError as e:
            ctx.report.error(path, f"function '{name}': {e}",
                             "the module is looked up next to the topology file, then on the Python path")


def _check_assignment(ctx: CheckContext) -> None:
    """``processing.assignment``: the strategy's own section is present, the other's absent,
    and a custom class resolves (``runtime.assignment.strategies.load_custom`` checks its interface)."""
    processing = ctx.data.get("processing")
    cfg = processing.get("assignment") if isinstance(processing, dict) else None
    if not isinstance(cfg, dict):
        return
    path = ("processing", "assignment")
    strategy = cfg.get("strategy", "balanced")
    for section in ("static", "custom"):
        if section in cfg and strategy != section:
            ctx.report.error(path + (section,), f"'{section}' is only used with strategy: {section} "
                                                f"(the strategy is {strategy})",
                             f"set strategy: {section}, or remove '{section}'", key=True)
        elif section not in cfg and strategy == section:
            ctx.report.error(path + ("strategy",), f"strategy {section} needs a '{section}' section",
                             "static: {instances: {INSTANCE: [TASK, ...]}}" if section == "static"
                             else "custom: {python: module:Class}")
    ref = cfg.get("custom", {}).get("python") if isinstance(cfg.get("custom"), dict) else None
    if strategy != "custom" or not isinstance(ref, str) or not re.fullmatch(PYTHON_REF_PATTERN, ref):
        return
    ref_path = path + ("custom", "python")
    if ctx.no_code:
        ctx.report.error(ref_path, f"--no-code refuses Python code; the custom assignor references '{ref}'",
                         "use strategy balanced, round_robin or static, or run without --no-code", code="no-code")
        return
    try:
        target = resolve_function(ref, ctx.base_dir)
    except FunctionRefError as e:
        ctx.report.error(ref_path, f"custom assignor: {e}",
                         "the module is looked up next to the topology file, then on the Python path")
        return
    if not isinstance(target, type) or not callable(getattr(target, "assign", None)):
        ctx.report.error(ref_path, f"custom assignor '{ref}' is not a class with an assign method",
                         "define a class with assign(self, tasks, members, previous) -> {instance_id: [task, ...]}")


def _check_resources(ctx: CheckContext) -> None:
    """Each resource limits something, and each budget it divides leaves every instance at least one."""
    for name, cfg in ctx.resources.items():
        path = ("resources", name)
        limits = [k for k in ("rate", "max_in_flight", "quota") if k in cfg]
        if not limits:
            ctx.report.error(path, f"resource '{name}' limits nothing",
                             "give it `rate: {requests: N, per: 1s}`, `max_in_flight: N` and/or "
                             "`quota: {requests: N, per: 1d}`", key=True)
        n = cfg.get("divide_by_instances", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n <= 1:
            continue
        for where_, value in (("rate", cfg.get("rate", {}).get("requests") if isinstance(cfg.get("rate"), dict)
                               else None),
                              ("max_in_flight", cfg.get("max_in_flight")),
                              ("quota", cfg.get("quota", {}).get("requests") if isinstance(cfg.get("quota"), dict)
                               else None)):
            if isinstance(value, int) and not isinstance(value, bool) and value < n:
                ctx.report.error(path + ("divide_by_instances",),
                                 f"resource '{name}': {where_} {value} divided by {n} instances leaves less than "
                                 f"one per instance (limits are per instance; each instance would still use 1, "
                                 f"{n} in all)",
                                 f"raise {where_} to at least {n}, or lower divide_by_instances")


def _check_pipelines(ctx: CheckContext, state: StateChecks) -> list[Flow]:
    pipelines = ctx.data.get("pipelines")
    flows: list[Flow] = []
    for name, cfg in (pipelines.items() if isinstance(pipelines, dict) else []):
        if not isinstance(cfg, dict):
            continue
        path = ("pipelines", name)
        flow = Flow(name)
        steps = _check_steps(ctx, cfg.get("steps"), path + ("steps",), flow)
        if "to" in cfg:
            _check_sink(ctx, cfg["to"], path + ("to",), flow)
        branches: list[list[Step]] = []
        if isinstance(cfg.get("branch"), list):
            if "to" in cfg:
                ctx.report.error(path + ("branch",), "a pipeline has either `to` or `branch`, not both",
                                 "move the `to` into the branches, or remove `branch`", key=True)
            branches = _check_branches(ctx, cfg["branch"], path + ("branch",), flow)
        state.pipeline(cfg, path, flow, steps, branches)
        check_concurrency(ctx, cfg, path)
        on_error = cfg.get("on_error")
        if isinstance(on_error, dict) and "dead_letter" in on_error:
            ref = ctx.stream_ref(on_error["dead_letter"], path + ("on_error", "dead_letter"))
            if ref:
                flow.dead_letters.append(ref)
        flows.append(flow)
    return flows


def _check_sink(ctx: CheckContext, sink: Any, path: tuple, flow: Flow) -> None:
    if isinstance(sink, str):
        ref = ctx.stream_ref(sink, path)
        if ref:
            flow.writes.append(ref)
    elif isinstance(sink, dict):
        ctx.expression(sink.get("select"), path + ("select",))
        streams = sink.get("streams")
        for i, stream in enumerate(streams if isinstance(streams, list) else []):
            ref = ctx.stream_ref(stream, path + ("streams", i))
            if ref:
                flow.writes.append(ref)


def _check_branches(ctx: CheckContext, branches: list, path: tuple, flow: Flow) -> list[list[Step]]:
    """Check each branch; returns each valid branch's steps (for the stateful checks)."""
    arms: list[list[Step]] = []
    otherwise_seen = False
    several = sum(1 for b in branches if isinstance(b, dict) and "otherwise" in b) > 1
    for i, branch in enumerate(branches):
        if not isinstance(branch, dict):
            continue
        bpath = path + (i,)
        has_when, has_otherwise = "when" in branch, "otherwise" in branch
        if has_when and has_otherwise:
            ctx.report.error(bpath + ("otherwise",), "a branch has either `when` or `otherwise: true`, not both",
                             "remove one of them", key=True)
        elif not has_when and not has_otherwise:
            ctx.report.error(bpath, "a branch needs `when: <expression>` or `otherwise: true`",
                             "add `when:` with the condition events of this branch satisfy")
        if has_otherwise:
            if otherwise_seen:
                ctx.report.error(bpath + ("otherwise",), "only one branch may be `otherwise`",
                                 "merge the two otherwise branches", key=True)
            elif i != len(branches) - 1 and not several:
                ctx.report.error(bpath + ("otherwise",), "the `otherwise` branch must be the last one",
                                 "branches are tried in order; move it to the end", key=True)
            otherwise_seen = True
        ctx.expression(branch.get("when"), bpath + ("when",))
        arms.append(_check_steps(ctx, branch.get("steps"), bpath + ("steps",), flow))
        if "to" in branch:
            _check_sink(ctx, branch["to"], bpath + ("to",), flow)
    return arms


def _check_steps(ctx: CheckContext, steps: Any, path: tuple, flow: Flow) -> list[Step]:
    """Check each step on its own; returns the steps in order (an unknown operator's as invalid)."""
    known: list[Step] = []
    if not isinstance(steps, list):
        return known
    for i, step in enumerate(steps):
        spath = path + (i,)
        if not isinstance(step, dict):
            continue  # the structural check reported it
        if len(step) != 1:
            if step:
                ctx.report.error(spath, f"a step has exactly one operator, found {len(step)}: "
                                        f"{', '.join(step)}",
                                 "write each operator as its own list item (`- filter: ...`)")
            else:
                ctx.report.error(spath, "empty step", "a step is `- operator: config`, e.g. `- filter: value.ok`")
            continue
        (op_name, config), = step.items()
        op = ctx.operators.get(op_name)
        opath = spath + (op_name,)
        if op is None:
            known.append(Step(opath, op_name, config, False))
            hint = did_you_mean(op_name, ctx.operators)
            ctx.report.error(opath, f"unknown operator '{op_name}'" + (f"; {hint}" if hint.startswith("did") else ""),
                             "" if hint.startswith("did") else hint, key=True)
            continue
        if op_name == "repartition" and isinstance(config, dict) \
                and "partitions" not in config and "to" not in config:
            ctx.report.error(opath, "repartition needs a partition count or a target stream",
                             "add `partitions: N` (with `name:`), or `to: <stream>` to repartition "
                             "through a declared stream", key=True)
            known.append(Step(opath, op_name, config, False))
            continue
        valid = structure.check(op.schema, config, ctx.report, opath)
        known.append(Step(opath, op_name, config, valid))
        if not valid:
            continue
        for subpath, source in op.expressions(config):
            ctx.expression(source, opath + tuple(subpath), expression_params(op_name, tuple(subpath)))
        _step_streams(ctx, op_name, config, opath, flow)
        for subpath, kind, name in op.references(config):
            if kind == "resource" and name not in ctx.resources:
                ctx.report.error(opath + tuple(subpath), f"undefined resource '{name}'",
                                 undefined_hint(name, ctx.resources, "resources"))
    return known


def _step_streams(ctx: CheckContext, op_name: str, config: Any, path: tuple, flow: Flow) -> None:
    """Names inside step configs: merge reads streams; repartition writes its `to` stream and
    may name a partitioner function. Called only for schema-valid configs."""
    if op_name == "merge":
        names = config if isinstance(config, list) else [config]
        for i, stream in enumerate(names):
            ref = ctx.stream_ref(stream, path + (i,) if isinstance(config, list) else path)
            if ref:
                flow.reads.append(ref)
    elif op_name == "repartition":
        if "to" in config:
            ref = ctx.stream_ref(config["to"], path + ("to",))
            if ref:
                flow.writes.append(ref)
        partitioner = config.get("partitioner")
        if isinstance(partitioner, dict) and partitioner["function"] not in ctx.functions:
            name = partitioner["function"]
            ctx.report.error(path + ("partitioner", "function"), f"undefined function '{name}'",
                             undefined_hint(name, ctx.functions, "functions"))


def _check_cycles(flows: list[Flow], report: Report) -> None:
    readers: dict[str, list[int]] = {}
    for i, flow in enumerate(flows):
        for ref in flow.reads:
            readers.setdefault(ref.topic, []).append(i)
    edges: dict[int, dict[int, Ref]] = {i: {} for i in range(len(flows))}
    for i, flow in enumerate(flows):
        for ref in flow.writes:
            for j in readers.get(ref.topic, []):
                edges[i].setdefault(j, ref)
    for cycle in find_cycles(len(flows), {i: list(e) for i, e in edges.items()}):
        first = edges[cycle[0]][cycle[1]]
        if len(cycle) == 2:
            message = (f"pipeline '{flows[cycle[0]].pipeline}' would consume its own output: "
                       f"it writes stream '{first.stream}' and reads it")
        else:
            steps = [f"'{flows[a].pipeline}' writes '{edges[a][b].stream}', read by '{flows[b].pipeline}'"
                     for a, b in zip(cycle, cycle[1:])]
            message = ("pipelines form a cycle, so each would consume its own output: "
                       + "; ".join(steps))
        report.error(first.path, message,
                     "a pipeline must not read, directly or through other pipelines, a stream it writes")
