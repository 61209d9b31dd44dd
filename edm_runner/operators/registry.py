"""The operator registry: every step operator registers its name, its config schema and
how it builds a runtime step. The topology JSON Schema is assembled from here
(``spec.schema``), and the validator checks each step's config against its operator's schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

_OPERATORS: dict[str, "Operator"] = {}


@dataclass(frozen=True)
class Operator:
    """A step operator.

    ``schema``: JSON Schema (draft 2020-12) of the step's config (the value under its name).
    ``build(step_spec, ctx)``: returns the runtime node for the step (see ``runtime``).
    ``expressions(config)``: the expression strings in a config, with their JSON path inside
    the config, so the validator can compile each one and point at it.
    ``description``: one line for docs and the schema.
    ``stores(config)``: (store name, required store type) of each declared store the step
    uses; the type is None when it depends on the preceding ``window`` step (see
    ``operators.window.store_type``).
    ``references(config)``: (path inside the config, kind, name) of every other name the step
    refers to; kind is ``stream`` (read or written), ``table`` or ``global_table``.
    """

    name: str
    schema: dict
    build: Callable[..., Any]
    description: str = ""
    expressions: Callable[[Any], list[tuple[tuple, str]]] = lambda config: []
    stores: Callable[[Any], list[tuple[str, str | None]]] = lambda config: []
    references: Callable[[Any], list[tuple[tuple, str, str]]] = lambda config: []


def register(op: Operator) -> Operator:
    if op.name in _OPERATORS:
        raise ValueError(f"operator {op.name!r} registered twice")
    _OPERATORS[op.name] = op
    return op


def operators() -> dict[str, Operator]:
    """All registered operators, importing the operator modules on first use."""
    from edm_runner import operators as _pkg  # noqa: F401  (modules register on import)
    _pkg.load_all()
    return dict(_OPERATORS)


def get(name: str) -> Operator | None:
    return operators().get(name)
