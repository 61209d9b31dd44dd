"""Errors a user can meet. The CLI maps them to messages and exit codes, never tracebacks.

Invariant: every exception that reaches the CLI for a user mistake is an ``EdmError``;
anything else is a bug in edm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True, order=True)
class Diagnostic:
    """One problem in a topology file, located at ``file:line:col`` (1-based). ``severity``
    "warning": a lint finding, reported without making the file invalid."""

    file: str
    line: int
    col: int
    message: str
    hint: str = ""
    code: str = field(default="invalid", compare=False)
    severity: str = field(default="error", compare=False)

    def format(self) -> str:
        label = "warning: " if self.severity == "warning" else ""
        text = f"{self.file}:{self.line}:{self.col}: {label}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def as_json(self) -> dict:
        return {"file": self.file, "line": self.line, "col": self.col, "message": self.message,
                "hint": self.hint, "code": self.code, "severity": self.severity}


class EdmError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 1


class ConfigError(EdmError):
    """A topology file is invalid; carries every diagnostic of the file at once."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


class BrokerError(EdmError):
    """The broker cannot be reached or refuses what the topology needs."""


class ProcessingError(EdmError):
    """An event failed under the `fail` error policy; the runner stops without committing it."""


class EventError(EdmError):
    """One event cannot be processed because of the user's logic or data: it does not decode
    or match its schema, an expression or a declared function raised (``UserCodeError``), a
    key is too long for a store, a step got a value it cannot take (a null group key, ...).

    Invariant: only an ``EventError`` follows an ``on_error`` policy (skip, dead-letter); any
    other exception while processing is a bug in edm and stops the service (``InternalError``).
    """

    # Headers a dead letter of the event carries besides the error headers (``edm.call.status``).
    dead_letter_headers: tuple[tuple[str, bytes], ...] = ()


class UserCodeError(EventError):
    """An expression or a declared Python function raised ``original``; the message and the
    error reported for the event are those of ``original``."""

    def __init__(self, original: BaseException):
        super().__init__(f"{type(original).__name__}: {original}")
        self.original = original


class InternalError(Exception):
    """A bug in edm met while processing (deliberately not an ``EdmError``): the service stops
    with nothing committed from the failing batch on, and the CLI asks for a report."""


class ServicesFailed(ExceptionGroup):
    """Several errors of one run of services (``run_services``), in the order they were met:
    ``services[i]`` is the service that ``exceptions[i]`` stopped (a service may appear twice,
    e.g. a failed batch and then a failed close). A single error is raised alone, never in a
    group. Deliberately not an ``EdmError``: an ``InternalError`` among them stays a bug to
    report; the CLI renders each error as it renders it alone, with its service's name."""

    services: list[str]

    def __new__(cls, failures: Sequence[tuple[str, Exception]]) -> ServicesFailed:
        names = list(dict.fromkeys(name for name, _ in failures))
        self = super().__new__(cls, f"{len(failures)} errors in service(s) {', '.join(names)}",
                               [error for _, error in failures])
        self.services = [name for name, _ in failures]
        return self

    def __init__(self, failures: Sequence[tuple[str, Exception]]) -> None:
        super().__init__(self.message, self.exceptions)

    @property
    def failures(self) -> list[tuple[str, Exception]]:
        """(service, error) pairs, in order."""
        return list(zip(self.services, self.exceptions))  # type: ignore[arg-type]
