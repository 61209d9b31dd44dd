"""How a key or a value is declared to be encoded: the format and its options, as the language
builds them from a topology file and every layer hands them to ``make_serde``. A leaf: serde
owns the description of its formats, the language (``language.model``) uses it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Format = Literal["json", "string", "bytes"]


@dataclass(frozen=True)
class SerdeSpec:
    """How a key or a value is encoded. ``schema`` is an absolute path to a JSON Schema file.
    ``tombstones``: a null value is a delete, never checked against ``schema`` (the values of
    entity streams, see ``StreamSpec``); otherwise a null value must match the schema too.
    ``keyed``: a null is refused when encoding (the keys of entity streams: a compacted topic
    keeps the latest value per key, so Kafka refuses a record without one)."""

    format: Format = "json"
    schema: Path | None = None
    tombstones: bool = False
    keyed: bool = False
