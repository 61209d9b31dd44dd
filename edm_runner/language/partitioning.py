"""Where keys land: what copartitioned means, and the key format of internal topics.

One rule for ``edm validate`` (``spec.stateful``, from the file), the processor DAG
(``graph.dag``, which gives internal topics their serdes) and ``edm run`` (``runtime.copartition``,
partition counts from the broker):

- A join's inputs and its other side (a table's stream, or the other stream) are
  copartitioned when they have equal partition counts, the same key format (the partitioner
  hashes the key's bytes: ``"u1"`` as a string and as JSON are different bytes) and the same
  partitioner. A declared stream is taken as written by the default partitioner (murmur2 of
  the key bytes, as Kafka's clients, ``edm produce`` and every ``to:`` do).
- An internal topic (a ``repartition`` by ``name``, a ``group_by``) takes the ``key_format`` its
  step sets; else the key format of what it is copartitioned with (the other side of the first
  join it feeds, in file order); else ``json`` (``INTERNAL_FORMAT``), which keeps every key as it
  is (strings, numbers, lists, objects). Its values are ``json`` unless ``value_format`` is set.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

INTERNAL_FORMAT = "json"
DEFAULT_PARTITIONER = "default"


@dataclass(frozen=True)
class Side:
    """One topic of a join as copartitioning sees it. ``kind``: a declared ``stream``, a
    ``table``'s stream, or an ``internal`` topic. ``what`` names it in messages (``stream
    'views'``). ``partitions`` None: unknown, not compared. ``key_format`` None: an internal
    topic without ``key_format``, whose format ``internal_key_format`` decides. ``partitioner``:
    ``default``, ``round_robin`` or ``function 'NAME'``. ``line``: of the step that writes the
    topic, when one does (a repartition, a group_by); hints name it."""

    kind: Literal["stream", "table", "internal"]
    what: str
    topic: str
    partitions: int | None
    key_format: str | None
    partitioner: str = DEFAULT_PARTITIONER
    line: int | None = None


def partitioner_name(config: Any) -> str:
    """The partitioner a step's ``partitioner:`` config names (``default`` when absent)."""
    if isinstance(config, dict):
        return f"function '{config.get('function')}'"
    return config if isinstance(config, str) else DEFAULT_PARTITIONER


def internal_key_format(topic: str, explicit: str | None, groups: Iterable[Sequence[Side]]) -> str:
    """The key format of internal topic ``topic``: ``explicit`` (its step's ``key_format``), else
    the other side's of the first group (in file order) it is an input of, else json.
    Each group lists a join's inputs, then its other side (a declared stream or table)."""
    if explicit is not None:
        return explicit
    for sides in groups:
        if any(s.topic == topic for s in sides[:-1]):
            return sides[-1].key_format or INTERNAL_FORMAT
    return INTERNAL_FORMAT


def mismatch(side: Side, other: Side, formats: Mapping[str, str]) -> tuple[str, str] | None:
    """(what differs, what to do) when input ``side`` of a join and its ``other`` side are not
    copartitioned, else None. ``formats``: the key formats ``internal_key_format`` decided."""
    mine, theirs, fixes = [], [], []
    if side.partitions is not None and other.partitions is not None and side.partitions != other.partitions:
        mine.append(f"{side.partitions} partitions")
        theirs.append(f"{other.partitions} partitions")
        fixes.append(_partitions_fix(side, other))
    key, other_key = side.key_format or formats[side.topic], other.key_format or formats[other.topic]
    if key != other_key:
        mine.append(f"key format {key}")
        theirs.append(f"key format {other_key}")
        fixes.append(_format_fix(side, other_key))
    if side.partitioner != other.partitioner:
        mine.append(f"partitioner {side.partitioner}")
        theirs.append(f"partitioner {other.partitioner}")
        moved = side if side.partitioner != DEFAULT_PARTITIONER else other
        fixes.append(f"remove `partitioner:` from the repartition{_at(moved)}: a join needs both sides "
                     f"placed by the default partitioner (murmur2 of the key's bytes)")
    if not mine:
        return None
    return (f"{side.what} has {_and(mine)} but {other.what} has {_and(theirs)}",
            "equal keys must land in partitions of the same number on both sides: " + "; ".join(fixes))


def _partitions_fix(side: Side, other: Side) -> str:
    if side.kind == "table":
        return "declare both tables' streams with the same partitions"
    if side.kind == "internal":
        return f"set `partitions: {other.partitions}` on the step{_at(side)}"
    return (f"repartition before the join with `- repartition: {{name: NAME, partitions: {other.partitions}}}`, "
            f"or declare both streams with the same partitions")


def _format_fix(side: Side, wanted: str) -> str:
    if side.kind == "internal" and side.key_format is not None:
        return f"set `key_format: {wanted}` on the step{_at(side)}, or remove it (it then follows the join)"
    if side.kind == "internal":
        return ("an internal topic takes the key format of the first join it feeds: repartition again "
                "before this join (`- repartition: {name: NAME, partitions: N}`)")
    if side.kind == "table":
        return "declare both tables' streams with the same `key:` format"
    return ("declare both streams with the same `key:` format, or repartition before the join: a "
            "repartition topic takes the key format of what it is joined with")


def _at(side: Side) -> str:
    return f" at line {side.line}" if side.line else ""


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
