"""The schema lock file: every version of every declared schema, oldest first, beside the
topology as ``<topology name>.schemas.lock.json`` (one per topology file, so a business
topology and its services can share a directory).

Format (``edm_schema_lock: 1``)::

    {"edm_schema_lock": 1, "topology": "topology.yaml",
     "subjects": {"shop/orders-value": {"service": "shop", "topic": "orders", "part": "value",
                                        "stream": "orders", "compatibility": "BACKWARD",
                                        "versions": [{"version": 1, "schema": {...}}, ...]}}}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edm_runner.evolution.declared import HistoryError, Subject

FORMAT = 1


def lock_path(topology: Path) -> Path:
    return topology.parent / f"{topology.name.rsplit('.', 1)[0]}.schemas.lock.json"


@dataclass
class Entry:
    """A subject's recorded schemas, oldest first."""

    stream: str
    mode: str
    versions: list[Any] = field(default_factory=list)


def read_lock(path: Path) -> dict[Subject, Entry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("edm_schema_lock") != FORMAT:
            raise ValueError(f"not an edm schema lock (format {FORMAT})")
        out = {}
        for item in data["subjects"].values():
            subject = Subject(item["service"], item["topic"], item["part"])
            out[subject] = Entry(item["stream"], item["compatibility"], [v["schema"] for v in item["versions"]])
        return out
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HistoryError(f"cannot read the schema lock {path}: {e}; regenerate it with `edm schema lock`") from None


def render_lock(topology: Path, entries: dict[Subject, Entry]) -> str:
    subjects = {}
    for subject in sorted(entries):
        entry = entries[subject]
        subjects[str(subject)] = {
            "service": subject.service, "topic": subject.topic, "part": subject.part, "stream": entry.stream,
            "compatibility": entry.mode,
            "versions": [{"version": i + 1, "schema": s} for i, s in enumerate(entry.versions)]}
    return json.dumps({"edm_schema_lock": FORMAT, "topology": topology.name, "subjects": subjects}, indent=2) + "\n"
