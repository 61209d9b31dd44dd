"""peek and log: look at events without changing them."""
from __future__ import annotations

import logging
from typing import Any

from edm_runner.operators.api import BuildContext, Event, ExprFn, PerEventProcessor
from edm_runner.operators.common import EXPRESSION, whole_expression
from edm_runner.operators.registry import Operator, register
from edm_runner.language.model import StepSpec

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class Peek(PerEventProcessor):
    """Evaluates the expression per event for its side effects (typically a function call).
    A batch that raises is replayed per event, so a side effect may happen twice."""

    label = "peek"

    def __init__(self, fn: ExprFn, step: StepSpec) -> None:
        self.fn = fn
        self.pos = step.pos

    def compute(self, e: Event) -> None:
        self.fn(e.key, e.value, e)

    def emit(self, e: Event, result: None) -> Event:
        return e


class Log(PerEventProcessor):
    """Logs one line per event on logger ``edm.<service>.<pipeline>``; messages of a batch are
    all computed before any is logged."""

    label = "log"

    def __init__(self, fn: ExprFn | None, level: int, logger: logging.Logger, step: StepSpec) -> None:
        self.fn = fn
        self.level = level
        self.logger = logger
        self.pos = step.pos

    def compute(self, e: Event) -> Any:
        """The message, or None when the level is off (then nothing is evaluated)."""
        if not self.logger.isEnabledFor(self.level):
            return None
        return self.fn(e.key, e.value, e) if self.fn else f"key={e.key!r} value={e.value!r}"

    def emit(self, e: Event, message: Any) -> Event:
        if message is not None:
            self.logger.log(self.level, "%s", message)
        return e


def _build_peek(step: StepSpec, ctx: BuildContext) -> Peek:
    return Peek(ctx.compile(step.config, step.pos), step)


def _build_log(step: StepSpec, ctx: BuildContext) -> Log:
    cfg = step.config if isinstance(step.config, dict) else {}
    fn = ctx.compile(cfg["message"], step.pos) if "message" in cfg else None
    logger = logging.getLogger(f"edm.{ctx.topology.name}.{ctx.pipeline}")
    return Log(fn, LEVELS[cfg.get("level", "info")], logger, step)


register(Operator(
    name="peek",
    schema={**EXPRESSION, "description": "An expression evaluated per event for its side effects."},
    build=_build_peek,
    description="Evaluate an expression per event (e.g. call a function) and pass the event on unchanged.",
    expressions=whole_expression,
))

register(Operator(
    name="log",
    schema={
        "oneOf": [
            {"const": True},
            {"type": "object",
             "properties": {
                 "message": {**EXPRESSION, "description": "What to log (default: key and value)."},
                 "level": {"enum": list(LEVELS), "default": "info"},
             },
             "additionalProperties": False},
        ],
        "description": "`true` (log key and value at info) or {message, level}.",
    },
    build=_build_log,
    description="Log each event and pass it on unchanged.",
    expressions=lambda config: ([(("message",), config["message"])]
                                if isinstance(config, dict) and isinstance(config.get("message"), str)
                                else []),
))
