"""Structural validation: run a JSON Schema and turn its errors into friendly diagnostics.

jsonschema's own messages are not shown to users: each error kind gets a sentence naming the
place (``streams.orders.partitions``), what is wrong and what would be right. For ``oneOf``
alternatives the branch matching the value's type is followed, so ``on_error: {dead_lettr: x}``
says "unknown key 'dead_lettr'" rather than "is not valid under any of the given schemas".
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from edm_runner.language.durations import (DURATION_PATTERN, DURATION_WORDS, MAX_DURATION_MS,
                                       MAX_DURATION_WORDS, POSITIVE_DURATION_PATTERN, within_bounds)
from edm_runner.language.report import Report, describe_value, did_you_mean, where
from edm_runner.language.schema import PATTERN_WORDS

_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string",
               "integer": "an integer", "number": "a number", "boolean": "true or false",
               "null": "empty"}


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("duration")(within_bounds)
_TOO_LONG = f"the longest duration is {MAX_DURATION_WORDS}"
_ZERO = "a length that divides time must be longer than 0"


def check(schema: dict, instance: Any, report: Report, prefix: tuple = ()) -> bool:
    """Validate ``instance`` (found at ``prefix`` in the file) against ``schema``; report every
    error. Returns True when there was none."""
    validator = Draft202012Validator(schema, format_checker=_FORMATS)
    errors = list(validator.iter_errors(instance))
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        _convert(error, report, prefix, schema)
    return not errors


def _convert(error: ValidationError, report: Report, prefix: tuple, root: dict) -> None:
    path = prefix + tuple(error.absolute_path)
    kind = error.validator
    value = error.instance
    place = where(path)
    if "propertyNames" in error.schema_path:
        name = value
        words = PATTERN_WORDS.get(error.validator_value, f"the pattern {error.validator_value}")
        report.error(path + (name,), f"invalid name '{name}' in {place}: use {words}", key=True)
    elif kind == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        for key in value:
            if key not in allowed:
                hint = did_you_mean(key, allowed) if allowed else "this mapping takes no keys"
                report.error(path + (key,), f"unknown key '{key}' in {place}", hint, key=True)
    elif kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        for key in missing:
            report.error(path, f"missing required key '{key}' in {place}",
                         _required_hint(key, error.schema))
    elif kind == "type":
        wanted = error.validator_value
        wanted = [wanted] if isinstance(wanted, str) else wanted
        report.error(path, f"{place} must be {' or '.join(_TYPE_WORDS.get(t, t) for t in wanted)}, "
                           f"not {describe_value(value)}")
    elif kind == "enum":
        options = error.validator_value
        hint = did_you_mean(value, [str(o) for o in options]) if isinstance(value, str) else ""
        hint = hint if hint.startswith("did") else ""
        report.error(path, f"{place} must be one of {_options(options)}, not {describe_value(value)}",
                     hint)
    elif kind == "const":
        report.error(path, f"{place} must be {_literal(error.validator_value)}, "
                           f"not {describe_value(value)}")
    elif kind == "format" and error.validator_value == "duration":
        report.error(path, f"{place}: {describe_value(value).removesuffix(' (a string)')} is too "
                           "long for a duration", _TOO_LONG)
    elif kind == "maximum" and error.validator_value == MAX_DURATION_MS:
        report.error(path, f"{place}: {value} is too long for a duration", _TOO_LONG)
    elif (kind == "pattern" and error.validator_value == POSITIVE_DURATION_PATTERN
          and re.fullmatch(DURATION_PATTERN, value)) or (
            kind == "minimum" and error.validator_value == 1 and error.schema.get("maximum") == MAX_DURATION_MS):
        report.error(path, f"{place} must be longer than 0, not {describe_value(value)}", _ZERO)
    elif kind == "pattern" and error.validator_value in (DURATION_PATTERN, POSITIVE_DURATION_PATTERN):
        report.error(path, f"{place}: {describe_value(value).removesuffix(' (a string)')} is not a "
                           f"duration: use {DURATION_WORDS}")
    elif kind == "pattern":
        words = PATTERN_WORDS.get(error.validator_value, f"the pattern {error.validator_value}")
        report.error(path, f"invalid {place} {describe_value(value)}: use {words}")
    elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        report.error(path, f"{place} must be {op} {error.validator_value}, not {value}")
    elif kind in ("minItems", "minLength", "minProperties"):
        report.error(path, f"{place} must not be empty" if error.validator_value == 1
                     else f"{place} needs at least {error.validator_value} entries")
    elif kind in ("maxItems", "maxLength", "maxProperties"):
        report.error(path, f"{place} has too many entries (at most {error.validator_value})")
    elif kind in ("oneOf", "anyOf"):
        _alternatives(error, report, prefix, root)
    elif kind == "false":
        report.error(path, f"{place} is not allowed here", key=True)
    else:
        report.error(path, f"{place}: {error.message}")


def _alternatives(error: ValidationError, report: Report, prefix: tuple, root: dict) -> None:
    """Follow the one alternative whose type fits the value, else say what would fit."""
    path = prefix + tuple(error.absolute_path)
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    # alternatives the value's shape fits, closest (fewest errors) first
    fitting = sorted((errs for errs in branches.values() if not any(_shape_mismatch(e) for e in errs)),
                     key=len)
    if error.validator == "oneOf" and len(branches) < len(error.validator_value):
        report.error(path, f"{where(path)} matches several alternatives: {error.message}")
    elif fitting and (len(fitting) == 1 or len(fitting[0]) < len(fitting[1])):
        for sub in fitting[0]:
            _convert(sub, report, prefix, root)
    else:
        options = _join([w for s in error.validator_value for w in _describe(s, root)])
        report.error(path, f"{where(path)} must be {options}, not {describe_value(error.instance)}")


def _shape_mismatch(error: ValidationError) -> bool:
    """True when the error says the value has the wrong shape for this whole alternative."""
    if error.relative_path:
        return False
    if error.validator in ("type", "enum", "const"):
        return True
    return error.validator in ("oneOf", "anyOf") and all(
        any(_shape_mismatch(e) for e in errs)
        for errs in _group(error.context or []).values())


def _group(errors: Iterable[ValidationError]) -> dict[Any, list[ValidationError]]:
    out: dict[Any, list[ValidationError]] = {}
    for e in errors:
        out.setdefault(e.relative_schema_path[0], []).append(e)
    return out


def _describe(schema: Any, root: dict) -> list[str]:
    """What a schema accepts, as phrases: ``["'fail'", "'skip'", "a mapping with dead_letter"]``."""
    if isinstance(schema, dict) and "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name, {})
    if not isinstance(schema, dict):
        return ["a value"]
    if "enum" in schema:
        return [_literal(o) for o in schema["enum"]]
    if "const" in schema:
        return [_literal(schema["const"])]
    if "oneOf" in schema or "anyOf" in schema:
        return [w for s in schema.get("oneOf", schema.get("anyOf")) for w in _describe(s, root)]
    kind = schema.get("type")
    if kind == "object" and schema.get("required"):
        return [f"a mapping with {', '.join(schema['required'])}"]
    if kind == "object" and schema.get("properties"):
        return [f"a mapping of {'/'.join(schema['properties'])}"]
    if kind == "array" and isinstance(schema.get("items"), dict):
        return [f"a list of {_plural(_join(_describe(schema['items'], root)))}"]
    return [_TYPE_WORDS.get(kind, "a value") if isinstance(kind, str) else "a value"]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _plural(text: str) -> str:
    return re.sub(r"^an? (\w+)", r"\1s", text)


def _options(options: list) -> str:
    return _join([_literal(o) for o in options])


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"'{value}'" if isinstance(value, str) else str(value)


def _required_hint(key: str, schema: dict) -> str:
    prop = schema.get("properties", {}).get(key, {})
    description = prop.get("description", "") if isinstance(prop, dict) else ""
    if not description:
        return f"add `{key}:`"
    return f"add `{key}:` ({description[0].lower() + description[1:].rstrip('.')})"
