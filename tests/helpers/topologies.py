"""Topology text shared by the tests that write their service files inline."""
from __future__ import annotations

# How each stream of ``header`` is declared: JSON values keyed by strings, except the dead
# letters (raw bytes) and the entity streams that tables read.
_DECLARED = {
    "dlq": "key: bytes, value: bytes",
    "users": "type: entity, key: string, value: json",
    "profiles": "type: entity, key: string, value: json",
}


def header(*streams: str, name: str = "svc", partitions: dict[str, int] | None = None) -> str:
    """The head of a microservice file (``kind``, ``name``, ``streams:``) declaring ``streams``,
    each on the topic of its own name with one partition (``partitions``: others by stream).
    Tests append ``pipelines:`` (and ``tables:``, ``stores:``) to it."""
    lines = ["", "kind: microservice", f"name: {name}", "streams:"]
    for stream in streams:
        declared = _DECLARED.get(stream, "key: string, value: json")
        count = (partitions or {}).get(stream, 1)
        lines.append(f"  {stream}: {{topic: {stream}, partitions: {count}, {declared}}}")
    return "\n".join(lines) + "\n"
