"""Validation of concurrency inside a partition (docs/design/concurrency.md): a pipeline's
``processing`` (ordering, max_in_flight, attempts) and the Python functions declared
``async def``.

Invariants the checks establish for a file without diagnostics:
- a pipeline driven event by event (``PipelineProcessing.per_event``: ordering key or none,
  or attempts > 1) reads no table (its changes are applied to the table's store) and writes no store
  before its first ``group_by`` or ``repartition`` (where a
  new sub-topology starts, processed in partition order again): no store-writing operator
  (``STORE_WRITERS``, a stream-stream join) and no call of a function that declares ``stores``.
  Interleaved events would reach a store in another order than the offsets' (windows, stream
  time), and a retried event would apply its earlier steps' writes twice;
- an ``async def`` function declares no ``stores``, is called only by the steps whose result
  the runtime awaits (``AWAITING_OPS``), and its call is the whole expression
  (``async_call_problem``).
"""
from __future__ import annotations

import inspect
import json
import re
from typing import Any, Callable

from edm_runner.language.context import CheckContext

# Operators that write a store of their sub-topology (a join writes when it joins a stream).
STORE_WRITERS = frozenset({"group_by_key", "count", "reduce", "aggregate", "window"})
# Operators whose expressions' results the runtime awaits when they call an async function.
AWAITING_OPS = frozenset({"map_values", "map", "select_key", "filter", "filter_not"})
_NEW_SUBTOPOLOGY = frozenset({"group_by", "repartition"})


def async_functions(functions: dict[str, Callable[..., Any]]) -> frozenset[str]:
    """The names of the functions declared ``async def``."""
    return frozenset(name for name, fn in functions.items() if inspect.iscoroutinefunction(fn))


def calls(source: str, names: frozenset[str]) -> set[str]:
    """The names among ``names`` that ``source`` (an expression) calls."""
    return {name for name in names if re.search(rf"(?<![\w.]){re.escape(name)}\s*\(", source)}


def async_call_problem(source: str, async_names: frozenset[str]) -> str | None:
    """Why ``source`` cannot be awaited, or None: an expression calling an async function must
    be that call and nothing else (the runtime awaits the expression's result)."""
    called = calls(source, async_names)
    if not called:
        return None
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        body = ImmutableSandboxedEnvironment().parse("{{ " + source + " }}").body
    except Exception:  # the expression compiler reports syntax errors with positions
        return None
    top = body[0].nodes[0] if len(body) == 1 and isinstance(body[0], nodes.Output) and body[0].nodes else None
    inner = [] if top is None else [n for n in top.find_all(nodes.Call) if n is not top]
    if (isinstance(top, nodes.Call) and isinstance(top.node, nodes.Name) and top.node.name in called
            and not any(isinstance(n.node, nodes.Name) and n.node.name in async_names for n in inner)):
        return None
    name = sorted(called)[0]
    return (f"the expression calls the async function '{name}' inside a larger expression; the runtime "
            f"awaits the result of the whole expression, so it must be the call alone, e.g. `{name}(value)`")


def _with_stores(ctx: CheckContext) -> frozenset[str]:
    functions = ctx.data.get("functions") if isinstance(ctx.data.get("functions"), dict) else {}
    return frozenset(n for n, f in functions.items() if isinstance(f, dict) and f.get("stores"))


def check_functions(ctx: CheckContext) -> None:
    """An ``async def`` function declares no stores."""
    for name in sorted(async_functions(ctx.functions) & _with_stores(ctx)):
        ctx.report.error(("functions", name, "stores"), f"function '{name}' is declared `async def` and has stores",
                         "many events are in flight while it awaits, so its store writes would interleave; "
                         "keep state in a synchronous function called by a later step", key=True)


def check_pipeline(ctx: CheckContext, cfg: dict, path: tuple) -> None:
    """The checks of the module docstring for one pipeline ``cfg`` at ``path``."""
    with_stores = _with_stores(ctx)
    asynchronous = async_functions(ctx.functions)
    processing = cfg.get("processing") if isinstance(cfg.get("processing"), dict) else {}
    ordering = processing.get("ordering", "partition")
    attempts = processing.get("attempts", 1)
    per_event = ordering != "partition" or (isinstance(attempts, int) and attempts > 1)
    given = ", ".join(f"{k}: {v}" for k, v in processing.items())
    stateful_checked = not per_event
    sources = cfg.get("from")
    names = [sources] if isinstance(sources, str) else _list(sources)
    table = next((t for t in names if isinstance(t, str) and t in ctx.tables), None)
    if per_event and table is not None:
        ctx.report.error(path + ("processing",), f"pipeline '{path[-1]}' reads table '{table}' and handles its "
                         f"changes concurrently or retries them (processing: {{{given}}}); a table's changes "
                         "are applied to its store in offset order",
                         "read the table's stream instead, or remove `processing`", key=True)
        stateful_checked = True
    for step, step_path in _steps(cfg, path):
        if not isinstance(step, dict) or len(step) != 1:
            continue
        (op, config), = step.items()
        text = config if isinstance(config, str) else json.dumps(config)
        called_async = calls(text, asynchronous)
        if called_async and op not in AWAITING_OPS:
            ctx.report.error(step_path + (op,), f"step '{op}' calls the async function '{sorted(called_async)[0]}'; "
                             f"only {', '.join(sorted(AWAITING_OPS))} await their expression",
                             f"call it in a map_values before this step, e.g. `map_values: "
                             f"{sorted(called_async)[0]}(value)`")
        elif called_async:
            for expr, sub in _expressions(config, step_path + (op,)):
                problem = async_call_problem(expr, asynchronous)
                if problem:
                    ctx.report.error(sub, problem, "compute what you need inside the function")
        if stateful_checked:
            continue
        if op in _NEW_SUBTOPOLOGY:
            stateful_checked = True  # what follows is another sub-topology, in partition order
            continue
        writes = (op in STORE_WRITERS or (op == "join" and isinstance(config, dict) and "stream" in config))
        stored = calls(text, with_stores)
        if writes or stored:
            what = f"step '{op}' writes a store" if writes else \
                f"step '{op}' calls '{sorted(stored)[0]}', a function with stores"
            ctx.report.error(step_path + (op,), f"{what}, but pipeline '{path[-1]}' handles events concurrently or "
                             f"retries them (processing: {{{given}}}): its stores would see events out of "
                             "offset order, or a retried event twice",
                             "put the stateful steps after a group_by or repartition (their sub-topology runs in "
                             "partition order), or in a pipeline reading this one's output, or set "
                             "`ordering: partition` and `attempts: 1`", key=True)


def _steps(cfg: dict, path: tuple) -> list[tuple[Any, tuple]]:
    """The steps of a pipeline then of its branches, in order, with their paths."""
    found = [(s, path + ("steps", i)) for i, s in enumerate(_list(cfg.get("steps")))]
    for b, branch in enumerate(_list(cfg.get("branch"))):
        if isinstance(branch, dict):
            found += [(s, path + ("branch", b, "steps", i)) for i, s in enumerate(_list(branch.get("steps")))]
    return found


def _list(value: Any) -> list:
    """``value`` if it is a list, else nothing: a malformed pipeline is reported by the schema check."""
    return value if isinstance(value, list) else []


def _expressions(config: Any, path: tuple) -> list[tuple[str, tuple]]:
    if isinstance(config, str):
        return [(config, path)]
    if isinstance(config, dict):
        return [(v, path + (k,)) for k, v in config.items() if isinstance(v, str)]
    return []
