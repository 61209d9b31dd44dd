"""Line numbers of the nodes of a JSON document, so a finding about ``/properties/total`` can
point at its line. Best effort: text that is not JSON gives no lines (callers fall back)."""
from __future__ import annotations

import bisect
import json.decoder
import re

_WS = re.compile(r"[ \t\n\r]*")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null")


def pointer_lines(text: str) -> dict[tuple, int]:
    """Pointer (a tuple of keys and indices) -> the 1-based line of that node (of its key, for
    an object member)."""
    starts = [i for i, c in enumerate(text) if c == "\n"]
    lines: dict[tuple, int] = {}

    def line(i: int) -> int:
        return bisect.bisect_left(starts, i) + 1

    def skip(i: int) -> int:
        return _WS.match(text, i).end()  # type: ignore[union-attr]

    def value(i: int, at: tuple) -> int:
        i = skip(i)
        lines.setdefault(at, line(i))
        if text[i] == "{":
            i = skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                start = i
                key, i = json.decoder.scanstring(text, i + 1)
                lines[at + (key,)] = line(start)
                i = skip(i)
                i = value(i + 1, at + (key,))
                i = skip(i)
                if text[i] == "}":
                    return i + 1
                i = skip(i + 1)
        if text[i] == "[":
            i = skip(i + 1)
            if text[i] == "]":
                return i + 1
            index = 0
            while True:
                i = skip(value(i, at + (index,)))
                index += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        if text[i] == '"':
            return json.decoder.scanstring(text, i + 1)[1]
        match = _SCALAR.match(text, i)
        if match is None:
            raise ValueError(f"not JSON at {i}")
        return match.end()

    try:
        value(0, ())
    except (ValueError, IndexError):
        return {}
    return lines


def line_of(lines: dict[tuple, int], at: tuple) -> int:
    """The line of ``at``, else of its nearest ancestor with one (1 when none has)."""
    at = tuple(at)
    while at and at not in lines:
        at = at[:-1]
    return lines.get(at, 1)
