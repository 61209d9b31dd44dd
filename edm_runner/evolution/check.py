"""What breaks when the declared schemas follow their previous versions, and the next lock.

Invariants: a subject without a previous version (a new stream, a new schema) breaks nothing;
a stream that drops its schema is compared as one accepting any value; the mode is the
stream's current ``compatibility``; non-transitive modes compare with the latest version only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edm_runner.evolution.declared import Declared, Subject
from edm_runner.evolution.lock import Entry
from edm_runner.evolution.locate import line_of, pointer_lines
from edm_runner.language.compat import breaking_changes


@dataclass(frozen=True, order=True)
class Finding:
    """One breaking change, located in the current schema file (or at the stream)."""

    file: str
    line: int
    stream: str
    path: str
    what: str
    why: str
    fix: str

    def format(self) -> str:
        return f"{self.file}:{self.line}: {self.stream}: {self.path}: {self.what}; {self.why}; to fix: {self.fix}"

    def as_json(self) -> dict:
        return {"file": self.file, "line": self.line, "stream": self.stream, "path": self.path,
                "what": self.what, "why": self.why, "fix": self.fix}


def _shown(path: Path | str) -> str:
    """A path as a user would type it from here: relative when under the current directory."""
    text = os.path.relpath(path)
    return text if not text.startswith("..") else str(path)


class _Locator:
    def __init__(self) -> None:
        self.lines: dict[Path, dict[tuple, int]] = {}

    def __call__(self, declared: Declared, at: tuple) -> tuple[str, int]:
        if declared.file is None:
            return _shown(declared.at.file), declared.at.line
        if declared.file not in self.lines:
            self.lines[declared.file] = pointer_lines(Path(declared.file).read_text(encoding="utf-8"))
        return _shown(declared.file), line_of(self.lines[declared.file], at)


def check(declared: list[Declared], history: Callable[[Subject], list[Any]],
          label: Callable[[int], str], business: bool) -> tuple[list[Finding], int]:
    """Findings of every declared schema against ``history(subject)`` (oldest first); ``label(n)``
    names previous version n in messages. Also returns how many schemas had a previous version."""
    locate = _Locator()
    findings: list[Finding] = []
    compared = 0
    for d in declared:
        versions = history(d.subject)
        if not versions:
            continue
        compared += 1
        name = f"{d.subject.service}/{d.stream}" if business else d.stream
        if d.schema is None:
            name += f" ({d.subject.part}: no schema)"
        for brk in breaking_changes(versions, True if d.schema is None else d.schema, d.mode):
            what, why, fix = brk.render(label(brk.version))
            file, line = locate(d, brk.new_at)
            findings.append(Finding(file, line, name, brk.problem.path, what, why, fix))
    return sorted(findings), compared


def next_lock(declared: list[Declared], lock: dict[Subject, Entry]) -> tuple[dict[Subject, Entry], list[str]]:
    """The lock recording ``declared`` after ``lock``: a schema that changed becomes a new
    version, one that did not keeps its history; schemas no longer declared are dropped.
    Also returns the subjects given a new version (as text)."""
    out: dict[Subject, Entry] = {}
    added: list[str] = []
    for d in declared:
        if d.schema is None:
            continue
        entry = lock.get(d.subject)
        versions = list(entry.versions) if entry else []
        if not versions or versions[-1] != d.schema:
            versions.append(d.schema)
            added.append(f"{d.subject} v{len(versions)}")
        out[d.subject] = Entry(d.stream, d.mode, versions)
    return out, added
