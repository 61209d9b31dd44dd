"""What stateful operators share (where a step sits in its pipeline), and a table's
materialization (``TableMaterializer``, the processor of a table's node in the DAG).

A change of a table (a pipeline ``from:`` a table, the other side of a table-table join, or
a group_by topic fed by a table) is an event whose ``value`` is the new value (None: deleted)
and whose ``old`` is the previous one (None: new key); the runtime sets both.

Stateful steps are ``operators.api.EventwiseProcessor``s.
"""
from __future__ import annotations

from edm_runner.errors import EventError
from edm_runner.operators.api import BuildContext, Event, EventwiseProcessor, TaskStoreRef
from edm_runner.language.model import Pos, StepSpec


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


def null_table_key(table: str) -> EventError:
    """The error of a record of a table's source with a null key: a table keeps the latest
    value per key, so such a record cannot enter it (when processed and when restored alike)."""
    return EventError(f"table {table!r}: a record with a null key cannot enter a table (it keeps the "
                      "latest value per key); write a key with every record of its entity stream")


class TableMaterializer(EventwiseProcessor):
    """A table's node: the latest value per key in the table's store (a null value deletes);
    emits one change event per actual change, with ``old`` the previous value. A null key is an
    error of the record (``null_table_key``, as on restore: ``runtime.tasks.table_converter``). Event by event
    (``EventwiseProcessor``): when a record of a batch fails (a key too long for the store),
    the runtime rolls the batch's writes back before it replays the records one by one, so
    none sees its own write as its old value."""

    def __init__(self, name: str, ref: TaskStoreRef, pos: Pos) -> None:
        self.name = name
        self.label = f"table {name}"
        self.ref = ref
        self.pos = pos

    def begin(self) -> None:
        self.store = self.ref.get()

    def apply(self, e: Event) -> list[Event]:
        if e.key is None:
            raise null_table_key(self.name)
        store = self.store
        old = store.get(e.key)
        if old is None and e.value is None:
            return []
        store.put(e.key, e.value)
        e.old = old
        return [e]
