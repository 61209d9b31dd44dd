"""The query parameters of a request, parsed against what its endpoint accepts: one parser for
every endpoint, so each parameter is checked the same way wherever it is taken.

An endpoint declares its parameters as ``{name: Param}``; ``parse`` returns their values (a
parameter not given is absent) or raises 400 ``bad_request`` with a message that repeats the
parameter and the value given and says what is accepted, and the fields ``parameter``,
``value`` and ``accepted``. Refused: a parameter the endpoint does not take (the message lists
those it takes), one given twice, one whose value does not parse. Ranges across parameters
(``from`` after ``to``) are the endpoint's to check, with ``refuse``.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from edm_runner.serve.errors import HttpError

# The values a boolean parameter takes (case-insensitive); the name alone (``?stale``) is true.
FLAG_VALUES = {"true": True, "1": True, "yes": True, "": True, "false": False, "0": False, "no": False}
FLAG_WORDS = "true or false (also 1 or 0, yes or no; the name alone means true)"
# Event times are milliseconds from 1970 up to the end of year 9999 (docs/language.md, "Event time").
MAX_TIME_MS = 253_402_300_799_999
_INTEGER = re.compile(r"-?[0-9]+")


class Unaccepted(ValueError):
    """A value a ``Param`` does not take; the text says what it takes."""


@dataclass(frozen=True)
class Param:
    """One query parameter: ``parse`` turns its text into its value or raises ``Unaccepted``
    saying what is accepted."""

    parse: Callable[[str], Any]


def refuse(name: str, value: str, accepted: str, message: str | None = None) -> HttpError:
    """The 400 of a parameter ``name`` given as ``value``."""
    return HttpError(400, "bad_request", message or f"{name}={value!r} is not accepted: use {accepted}",
                     parameter=name, value=value, accepted=accepted)


def parse(query: Any, accepted: Mapping[str, Param]) -> dict[str, Any]:
    """The values of the parameters in ``query`` (a multidict), each parsed by its ``Param``."""
    values: dict[str, Any] = {}
    for name in query.keys():
        if name in values:
            continue
        given = query.getall(name)
        param = accepted.get(name)
        if param is None:
            words = ", ".join(accepted) or "none"
            raise refuse(name, given[0], f"one of the parameters of this endpoint: {words}",
                         f"unknown query parameter {name}={given[0]!r}; this endpoint takes {words}")
        if len(given) > 1:
            raise refuse(name, given[1], "one value", f"{name} is given {len(given)} times "
                                                      f"({', '.join(map(repr, given))}); give it once")
        try:
            values[name] = param.parse(given[0])
        except Unaccepted as e:
            raise refuse(name, given[0], str(e)) from None
    return values


def flag() -> Param:
    def parse_flag(text: str) -> bool:
        value = FLAG_VALUES.get(text.lower())
        if value is None:
            raise Unaccepted(FLAG_WORDS)
        return value
    return Param(parse_flag)


def integer(low: int, high: int) -> Param:
    def parse_integer(text: str) -> int:
        if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise Unaccepted(f"an integer from {low} to {high}")
        return int(text)
    return Param(parse_integer)


def time_ms() -> Param:
    """Epoch milliseconds, or an ISO 8601 time with a zone."""
    words = f"epoch milliseconds (0 to {MAX_TIME_MS}) or an ISO 8601 time with a zone (2026-11-30T10:00:00Z)"

    def parse_time(text: str) -> int:
        if _INTEGER.fullmatch(text):
            ms = int(text)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                raise Unaccepted(words) from None
            if moment.tzinfo is None:
                raise Unaccepted(f"{words}; this one has no zone: add Z or +01:00")
            ms = int(moment.timestamp() * 1000)
        if not 0 <= ms <= MAX_TIME_MS:
            raise Unaccepted(words)
        return ms
    return Param(parse_time)


def text() -> Param:
    return Param(lambda value: value)


def cursor(check: Callable[[bytes], None]) -> Param:
    """A page cursor: base64url without padding of the bytes ``check`` accepts (raises ValueError)."""
    words = "the `next` cursor of the previous page, as it was given"

    def parse_cursor(value: str) -> bytes:
        try:
            raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
            check(raw)
        except (binascii.Error, ValueError):
            raise Unaccepted(words) from None
        if not raw:
            raise Unaccepted(words)
        return raw
    return Param(parse_cursor)

