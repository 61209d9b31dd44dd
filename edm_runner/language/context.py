"""What the checks of one microservice file share: its sections, the report every check writes
to, the functions resolved so far, the expression limits and the operator registry.

``spec.validate`` creates one ``CheckContext`` per file and hands it to its own checks and to
``spec.stateful``; both import it from here, so neither imports the other's internals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edm_runner.operators.registry import Operator, operators
from edm_runner.language.expressions import ExpressionError, compile_expression
from edm_runner.language.flows import Ref
from edm_runner.language.limits import Limits
from edm_runner.language.report import Report, did_you_mean, where

# The names an expression sees unless its operator gives it others (``stateful.expression_params``).
EXPRESSION_PARAMS = ("key", "value", "event")


def undefined_hint(name: str, declared: Any, section: str) -> str:
    """The hint for a reference to ``name`` that ``section`` does not declare."""
    close = did_you_mean(name, declared) if declared else ""
    if close.startswith("did"):
        return f"{close} (or declare '{name}' under `{section}:`)"
    listed = f" (declared: {', '.join(sorted(declared))})" if declared else ""
    return f"declare '{name}' under `{section}:`{listed}"


class CheckContext:
    """The file under validation. ``streams``, ``tables``, ``global_tables`` and ``stores`` hold
    every named item of their section, a non-mapping item as ``{}`` (the schema reports it);
    ``functions`` fills as ``functions:`` is checked; ``table_reads`` as tables are checked."""

    def __init__(self, data: dict, report: Report, base_dir: Path, no_code: bool):
        self.data = data
        self.report = report
        self.base_dir = base_dir
        self.no_code = no_code
        self.streams = _section(data, "streams")
        self.tables = _section(data, "tables")
        self.global_tables = _section(data, "global_tables")
        self.stores = _section(data, "stores")
        self.resources = _section(data, "resources")
        self.table_reads: list[Ref] = []
        self.functions: dict[str, Callable] = {}
        processing = data.get("processing")
        self.limits = Limits.from_config(processing.get("expression_limits")
                                         if isinstance(processing, dict) else None)
        self.operators: dict[str, Operator] = operators()

    def topic(self, stream: str) -> str:
        topic = self.streams.get(stream, {}).get("topic", stream)
        return topic if isinstance(topic, str) else stream

    def stream_ref(self, name: Any, path: tuple) -> Ref | None:
        """A reference to a declared stream, or None (reported) when it is not declared."""
        if not isinstance(name, str):
            return None
        if name not in self.streams:
            self.report.error(path, f"undefined stream '{name}'", undefined_hint(name, self.streams, "streams"))
            return None
        return Ref(name, self.topic(name), path)

    def expression(self, source: Any, path: tuple, params: tuple[str, ...] = EXPRESSION_PARAMS) -> None:
        if not isinstance(source, str):
            return
        try:
            compile_expression(source, params=params, functions=self.functions, limits=self.limits)
        except ExpressionError as e:
            pos = self.report.smap.expression(path, getattr(e, "col", None), source)
            message = str(e).removeprefix("invalid expression: ")
            self.report.add(pos, f"invalid expression in {where(path)}: {message}",
                            getattr(e, "hint", "") or "")


def _section(data: dict, key: str) -> dict[str, dict]:
    """A top-level mapping of named items, non-mapping items as empty (the schema reports them)."""
    raw = data.get(key)
    return {name: (cfg if isinstance(cfg, dict) else {})
            for name, cfg in (raw.items() if isinstance(raw, dict) else [])}
