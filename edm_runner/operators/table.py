"""What stateful operators share: where a step sits in its pipeline.

A change of a table (a pipeline ``from:`` a table, the other side of a table-table join, or
a group_by topic fed by a table) is an event whose ``value`` is the new value (None: deleted)
and whose ``old`` is the previous one (None: new key); the runtime sets both.

Stateful steps are ``operators.api.EventwiseProcessor``s.
"""
from __future__ import annotations

from edm_runner.operators.api import BuildContext
from edm_runner.spec.model import StepSpec


def reads_table(ctx: BuildContext) -> bool:
    """Whether the building pipeline reads a table (its events are table changes)."""
    return any(s in ctx.topology.tables for s in ctx.topology.pipelines[ctx.pipeline].sources)


def steps_before(ctx: BuildContext, step: StepSpec) -> list[StepSpec]:
    """The steps an event passes through before ``step`` in its pipeline (a branch arm's
    steps come after the pipeline's own)."""
    p = ctx.topology.pipelines[ctx.pipeline]
    for i, s in enumerate(p.steps):
        if s is step:
            return p.steps[:i]
    for arm in p.branch:
        for i, s in enumerate(arm.steps):
            if s is step:
                return p.steps + arm.steps[:i]
    raise ValueError(f"step {step.op} at {step.pos} is not in pipeline {ctx.pipeline!r}")

