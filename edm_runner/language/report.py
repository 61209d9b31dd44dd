"""Collecting diagnostics of one file, and the small wording helpers messages share."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from edm_runner.errors import Diagnostic
from edm_runner.language.yaml_loader import NodePos, SourceMap


@dataclass
class Report:
    """Diagnostics of one file. ``at`` chooses what a path points to: the value (default),
    the key, or a column inside an expression."""

    smap: SourceMap
    diagnostics: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)  # lint findings: the file stays valid

    @property
    def file(self) -> str:
        return self.smap.file

    def error(self, path: tuple, message: str, hint: str = "", *, key: bool = False,
              code: str = "invalid") -> None:
        if self.smap.is_broken(path):
            return
        pos = self.smap.key(path) if key else self.smap.value(path)
        self.add(pos, message, hint, code)

    def warn(self, path: tuple, message: str, hint: str = "", *, code: str = "lint") -> None:
        pos = self.smap.value(path)
        d = Diagnostic(self.file, pos.line, pos.col, message, hint, code, "warning")
        if d not in self.warnings:
            self.warnings.append(d)

    def add(self, pos: NodePos, message: str, hint: str = "", code: str = "invalid") -> None:
        d = Diagnostic(self.file, pos.line, pos.col, message, hint, code)
        if d not in self.diagnostics:
            self.diagnostics.append(d)


def where(path: tuple) -> str:
    """``("pipelines", "p", "steps", 0, "filter")`` -> ``pipelines.p.steps[0].filter``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the closest choice, or listing the choices when none is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if not choices:
        return ""
    return "expected one of: " + ", ".join(choices)


def describe_value(value: Any) -> str:
    if value is None:
        return "an empty value (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"'{text}' (a string)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
