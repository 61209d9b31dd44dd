"""call: an HTTP request per event, its response put into the event's value.

This module registers the operator (schema, expressions, references) and imports no HTTP
client, so ``edm validate`` stays light; the step itself (``operators.calls.step``) is imported
when a service is built.
"""
from __future__ import annotations

from typing import Any

from edm_runner.language.durations import POSITIVE_DURATION_SCHEMA
from edm_runner.language.model import StepSpec
from edm_runner.operators.api import BuildContext, Processor
from edm_runner.operators.common import EXPRESSION
from edm_runner.operators.registry import Operator, register

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
STATUS = {"description": "A status code (404) or a class of them (\"2xx\", \"5xx\").",
          "oneOf": [{"type": "integer", "minimum": 100, "maximum": 599},
                    {"type": "string", "pattern": "^[1-5]xx$"}]}
STATUSES = {"type": "array", "items": STATUS, "uniqueItems": True}
RESOURCES = {"description": "Resources (declared under `resources:`) every request of this step counts "
                            "against: a name or a list of names.",
             "oneOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"type": "string", "minLength": 1}}]}

SCHEMA: dict = {
    "type": "object",
    "properties": {
        "method": {"enum": METHODS, "description": "The HTTP method (default GET, or POST with a body)."},
        "url": {**EXPRESSION, "description": "The URL, an expression: \"'https://api.example.com/users/' ~ key\"."},
        "body": {**EXPRESSION, "description": "The request body, an expression whose result is sent as JSON."},
        "headers": {"type": "object", "additionalProperties": EXPRESSION,
                    "description": "Request headers: name -> expression (\"'Bearer ' ~ env.TOKEN\")."},
        "timeout": {**POSITIVE_DURATION_SCHEMA, "description": "Time for one attempt (default 10s)."},
        "resources": RESOURCES,
        "into": {"type": "string", "minLength": 1,
                 "description": "The field of the value that receives {status, body, headers} (default "
                                "`response`); the value must be a mapping."},
        "response_headers": {"type": "array", "items": {"type": "string", "minLength": 1},
                             "description": "Response headers to keep (in `headers`, lower-case names)."},
        "success": {**STATUSES, "description": "Statuses that count as success (default [\"2xx\"])."},
        "retry": {
            "type": "object",
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 100,
                             "description": "Tries in all, the first included (default 5); then the event "
                                            "follows the pipeline's on_error."},
                "statuses": {**STATUSES, "description": "Statuses retried (default 408, 425, 429, 500, 502, "
                                                        "503, 504); timeouts and connection errors are always "
                                                        "retried; any other status fails the event at once."},
                "backoff": {**POSITIVE_DURATION_SCHEMA,
                            "description": "The first wait, doubled at each try (default 100ms); a "
                                           "Retry-After from the server replaces it."},
                "max_backoff": {**POSITIVE_DURATION_SCHEMA, "description": "The longest wait (default 30s)."},
            },
            "additionalProperties": False,
            "description": "Retries with exponential backoff and jitter, starting from Retry-After.",
        },
        "breaker": {
            "oneOf": [
                {"const": False},
                {"type": "object",
                 "properties": {"failures": {"type": "integer", "minimum": 1,
                                             "description": "Consecutive failures that open it (default 5)."},
                                "open_for": {**POSITIVE_DURATION_SCHEMA,
                                             "description": "How long it stays open before a probe (default 30s)."}},
                 "additionalProperties": False},
            ],
            "description": "A circuit breaker per endpoint (scheme://host:port): while open no request goes "
                           "out and the step's events wait (their partitions pause once the in-flight window "
                           "is full); a successful probe closes it. `false`: none. Default {failures: 5, "
                           "open_for: 30s}.",
        },
        "cache": {
            "type": "object",
            "properties": {"ttl": {**POSITIVE_DURATION_SCHEMA, "description": "How long an answer is reused."},
                           "size": {"type": "integer", "minimum": 1,
                                    "description": "Most answers kept (default 10000; least recently used go)."},
                           "key": {**EXPRESSION, "description": "The cache key (default: method and URL)."}},
            "required": ["ttl"],
            "additionalProperties": False,
            "description": "Reuse successful answers, per instance and in memory.",
        },
        "idempotency_key": {
            "oneOf": [
                {"const": False},
                {"type": "object",
                 "properties": {"header": {"type": "string", "minLength": 1,
                                           "description": "The header (default Idempotency-Key)."},
                                "value": {**EXPRESSION, "description": "The key (default: service, topic, "
                                                                       "partition and offset of the source event)."}},
                 "additionalProperties": False},
            ],
            "description": "A header that lets the API drop repeated requests (a retry, a replay): by default "
                           "`Idempotency-Key: <service>/<topic>/<partition>/<offset>`. `false`: none.",
        },
    },
    "required": ["url"],
    "additionalProperties": False,
    "description": "{url, method?, body?, headers?, timeout?, resources?, into?, ...}: call an HTTP API.",
}


def resource_names(config: Any) -> list[str]:
    names = config.get("resources", []) if isinstance(config, dict) else []
    return [names] if isinstance(names, str) else [n for n in names if isinstance(n, str)]


def _expressions(config: Any) -> list[tuple[tuple, str]]:
    if not isinstance(config, dict):
        return []
    out: list[tuple[tuple, str]] = [((name,), config[name]) for name in ("url", "body")
                                    if isinstance(config.get(name), str)]
    headers = config.get("headers")
    out += [(("headers", h), v) for h, v in (headers.items() if isinstance(headers, dict) else [])
            if isinstance(v, str)]
    for section, name in (("cache", "key"), ("idempotency_key", "value")):
        sub = config.get(section)
        if isinstance(sub, dict) and isinstance(sub.get(name), str):
            out.append(((section, name), sub[name]))
    return out


def _references(config: Any) -> list[tuple[tuple, str, str]]:
    names = config.get("resources") if isinstance(config, dict) else None
    if isinstance(names, str):
        return [(("resources",), "resource", names)]
    return [(("resources", i), "resource", n) for i, n in enumerate(names or []) if isinstance(n, str)]


def _build(step: StepSpec, ctx: BuildContext) -> Processor:
    from edm_runner.operators.calls.step import build_call_step

    return build_call_step(step, ctx)


register(Operator(
    name="call",
    schema=SCHEMA,
    build=_build,
    description="Call an HTTP API per event (rate limits, retries, breaker, cache) and put the response "
                "into the value.",
    expressions=_expressions,
    references=_references,
))
