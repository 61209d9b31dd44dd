"""The ``http:`` section of a microservice: its schema, its semantic checks, its words.

One section declares the whole request-response side of a service (issue 10, see
docs/design/http.md): where it listens, the URL other instances reach it at, which stores and
tables answer queries, which paths ingest events into which streams, TLS, bearer tokens and
request limits. Without the section the service answers no HTTP at all.

Invariants the checks establish for a file without diagnostics:
- ``listen`` is ``host:port`` with a port in 0..65535 (0: any free port);
- every ``serve`` name is a declared store (that a step or a function uses), table or global
  table, listed once;
- every ingest ``stream`` is a declared stream, and writing it makes this service its writer
  (``ingest_flow``: the business checks enforce one writer per stream);
- ingest paths are distinct and collide neither with each other nor with the paths edm
  reserves (``RESERVED_PATHS``, ``RESERVED_PREFIXES``);
- an ingest ``key`` names exactly one of ``header``, ``field``, ``expression``, and a stream
  whose records need a key (an entity stream) gets one;
- an ``auth`` entry names exactly one token source;
- ``tls`` files written as literal paths can be read (``tls_file_problem``); a templated path
  (a secret mounted where edm runs) is checked when ``edm run`` loads it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edm_runner.language.context import CheckContext, undefined_hint
from edm_runner.language.durations import DURATION_SCHEMA
from edm_runner.language.flows import Flow

LISTEN_PATTERN = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$"
# The published schema also checks files as written, before templating (editors, CI linters):
# there a templated listen ("{{ env.POD_IP }}:8080") is accepted; `edm validate` checks the
# rendered value, and check_http refuses a rendered value that is still not host:port.
LISTEN_SCHEMA_PATTERN = LISTEN_PATTERN + r"|\{\{"
URL_PATTERN = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"
PATH_PATTERN = r"^(/[A-Za-z0-9._~-]+)+$"
FIELD_PATTERN = r"^[^.\s]+(\.[^.\s]+)*$"
SIZE_PATTERN = r"^[0-9]+(B|KiB|MiB|GiB)$"
_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
MAX_BODY_LIMIT = 1 << 30

# Paths edm answers itself: exact paths, and prefixes of whole path segments.
RESERVED_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json")
RESERVED_PREFIXES = ("/stores", "/local", "/_edm")
AUTH_SCOPES = ("queries", "ingest", "metrics")
# An ingest key expression is compiled with these parameters: it sees ``value`` and, through
# the event's metadata, ``headers`` (the request's) and ``timestamp``.
INGEST_KEY_PARAMS = ("value", "event")
WILDCARD_HOSTS = ("0.0.0.0", "[::]", "::")
TLS_FILES = {"cert_file": "certificate", "key_file": "private key"}
TLS_HINT = ("http.tls names PEM files relative to the topology file; for a file that exists only where edm "
            "runs (a mounted secret), template its path, e.g. \"{{ env.TLS_DIR | default('/etc/tls') }}/tls.crt\": "
            "`edm validate` leaves a templated path to `edm run`")

SIZE_SCHEMA: dict = {
    "description": "A size in bytes: an integer, or a number with a unit B, KiB, MiB, GiB (e.g. 1MiB).",
    "oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_BODY_LIMIT},
              {"type": "string", "pattern": SIZE_PATTERN}],
}

PATTERN_WORDS = {
    LISTEN_PATTERN: "host:port, e.g. 0.0.0.0:8080, 127.0.0.1:0 (any free port) or [::]:8080",
    LISTEN_SCHEMA_PATTERN: "host:port, e.g. 0.0.0.0:8080, 127.0.0.1:0 (any free port) or [::]:8080",
    URL_PATTERN: "an http:// or https:// URL without query, e.g. http://pod-0.svc:8080",
    PATH_PATTERN: "a path of segments of letters, digits, '.', '_', '~' and '-', e.g. /clicks",
    FIELD_PATTERN: "a field name, or a dotted path into the value (user.id)",
    SIZE_PATTERN: "an integer of bytes, or a number with a unit: 512KiB, 1MiB, 1GiB",
}


def parse_size(value: Any) -> int:
    """Bytes of a schema-valid size (``SIZE_SCHEMA``): ``1MiB`` -> 1048576."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(SIZE_PATTERN, value)
    assert m, value
    return int(value[: m.start(1)]) * _SIZE_UNITS[m[1]]


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` -> (host without brackets, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _token_source(description: str) -> dict:
    return {"type": "object", "additionalProperties": False, "description": description,
            "properties": {
                "tokens_file": {"type": "string", "minLength": 1,
                                "description": "A file of bearer tokens, one per line, relative to the "
                                               "topology file (e.g. a mounted secret)."},
                "tokens_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                               "description": "An environment variable holding bearer tokens, "
                                              "separated by commas or whitespace."}}}


def http_schema() -> dict:
    """The ``http`` section of a microservice (``$defs/http`` of the topology schema)."""
    ingest = {
        "type": "object", "additionalProperties": False, "required": ["path", "stream"],
        "description": "POST requests to `path` write events (JSON, or NDJSON batches) to `stream`.",
        "properties": {
            "path": {"type": "string", "pattern": PATH_PATTERN, "description": "The URL path, e.g. /clicks."},
            "stream": {"$ref": "#/$defs/stream_ref", "description": "The declared stream events go to."},
            "key": {"type": "object", "additionalProperties": False, "minProperties": 1,
                    "description": "The event key: from a request header, a field of the event, or an "
                                   "expression over `value` and `headers` (one of them; default: no key).",
                    "properties": {
                        "header": {"type": "string", "minLength": 1, "description": "A request header."},
                        "field": {"type": "string", "pattern": FIELD_PATTERN,
                                  "description": "A field of the event value (dotted for nested fields)."},
                        "expression": {"$ref": "#/$defs/expression"}}},
        }}
    return {
        "type": "object", "additionalProperties": False,
        "description": "The service answers HTTP: state queries routed to the instance owning the key, "
                       "event ingestion, /healthz, /readyz and /metrics. Absent: no HTTP.",
        "properties": {
            "listen": {"type": "string", "pattern": LISTEN_SCHEMA_PATTERN,
                       "description": "host:port to listen on (default 0.0.0.0:8080; port 0: any free port); "
                                      "templatable, e.g. \"{{ env.POD_IP }}:8080\"."},
            "advertised_url": {"type": "string", "pattern": URL_PATTERN,
                               "description": "The URL other instances use to reach this one (default: "
                                              "from `listen` and the port actually bound, the host name "
                                              "for a wildcard host)."},
            "serve": {"type": "array", "uniqueItems": True,
                      "items": {"type": "string", "minLength": 1},
                      "description": "Stores, tables and global tables that answer queries under "
                                     "/stores/NAME/..."},
            "ingest": {"type": "array", "items": ingest,
                       "description": "Ingestion endpoints: POST path -> stream."},
            "tls": {"type": "object", "additionalProperties": False, "required": ["cert_file", "key_file"],
                    "description": "Serve HTTPS with this certificate and key (PEM files, relative to the "
                                   "topology file).",
                    "properties": {"cert_file": {"type": "string", "minLength": 1},
                                   "key_file": {"type": "string", "minLength": 1}}},
            "auth": {"type": "object", "additionalProperties": False,
                     "description": "Bearer tokens required per kind of request (never inline: a file or "
                                    "an environment variable). A scope without an entry is open.",
                     "properties": {scope: _token_source(f"Tokens accepted for {scope}.")
                                    for scope in AUTH_SCOPES}},
            "limits": {"type": "object", "additionalProperties": False,
                       "description": "Request limits.",
                       "properties": {
                           "max_body": {**SIZE_SCHEMA, "description": "Largest request body (default 1MiB)."},
                           "request_timeout": {**DURATION_SCHEMA,
                                               "description": "How long a request may take (default 10s)."}}},
        },
    }


def check_http(ctx: CheckContext, used_stores: set[str]) -> Flow | None:
    """The semantic checks of ``http:`` (see the module invariants); returns the ingest
    endpoints as a flow that writes their streams (None without the section). ``used_stores``:
    the declared stores a step or a function uses (the others hold nothing to serve)."""
    cfg = ctx.data.get("http")
    if not isinstance(cfg, dict):
        return None
    report = ctx.report
    listen = cfg.get("listen")
    if isinstance(listen, str) and not re.fullmatch(LISTEN_PATTERN, listen):
        if re.search(LISTEN_SCHEMA_PATTERN, listen):  # else the schema check reported it
            report.error(("http", "listen"), f"invalid http.listen '{listen}' once rendered",
                         f"use {PATTERN_WORDS[LISTEN_PATTERN]}")
    elif isinstance(listen, str):
        port = split_listen(listen)[1]
        if port > 65535:
            report.error(("http", "listen"), f"port {port} of listen '{listen}' is not a TCP port",
                         "use a port from 1 to 65535, or 0 for any free port")
    servable = {**{n: "store" for n in ctx.stores}, **{n: "table" for n in ctx.tables},
                **{n: "global table" for n in ctx.global_tables}}
    serve = cfg.get("serve")
    for i, name in enumerate(serve if isinstance(serve, list) else []):
        if isinstance(name, str) and name not in servable:
            hint = undefined_hint(name, servable, "stores`, `tables` or `global_tables")
            report.error(("http", "serve", i), f"'{name}' is not a store, a table or a global table of "
                                               "this service, so it cannot be served", hint)
        elif isinstance(name, str) and name in ctx.stores and name not in used_stores:
            report.error(("http", "serve", i), f"store '{name}' is used by no step and no function, so it "
                                               "holds nothing to serve",
                         f"serve a store a step writes (e.g. `count: {{store: {name}}}`), or remove '{name}' "
                         "from serve")
    tls = cfg.get("tls")
    for name, what in TLS_FILES.items() if isinstance(tls, dict) else ():
        value, at = tls.get(name), ("http", "tls", name)
        if isinstance(value, str) and value and at not in report.smap.templated:
            if problem := tls_file_problem(ctx.base_dir / value):
                report.error(at, f"TLS {what} file '{value}' {problem}", TLS_HINT)
    for scope, source in (cfg.get("auth") or {}).items() if isinstance(cfg.get("auth"), dict) else []:
        if isinstance(source, dict) and len(source) != 1:
            given = ", ".join(source) or "none"
            report.error(("http", "auth", scope), f"auth.{scope} needs exactly one token source (given: {given})",
                         "write `tokens_file: PATH` or `tokens_env: VARIABLE`", key=True)
    return _check_ingest(ctx, cfg.get("ingest"))


def tls_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read (``edm validate`` and the server alike), or None."""
    try:
        with open(path, "rb"):
            return None
    except FileNotFoundError:
        return f"does not exist ({path.resolve()})"
    except IsADirectoryError:
        return f"is a directory ({path.resolve()})"
    except OSError as e:
        return f"cannot be read ({path.resolve()}: {e.strerror or e})"


def _check_ingest(ctx: CheckContext, endpoints: Any) -> Flow:
    report = ctx.report
    flow = Flow("http.ingest")
    seen: dict[str, int] = {}
    for i, endpoint in enumerate(endpoints if isinstance(endpoints, list) else []):
        if not isinstance(endpoint, dict):
            continue
        path = ("http", "ingest", i)
        url = endpoint.get("path")
        if isinstance(url, str) and re.fullmatch(PATH_PATTERN, url):
            if reserved := _reserved(url):
                report.error(path + ("path",), f"ingest path '{url}' collides with {reserved}, which edm "
                                               "answers itself",
                             f"choose another path, e.g. /events{url}")
            elif url in seen:
                line = report.smap.value(("http", "ingest", seen[url], "path")).line
                report.error(path + ("path",), f"ingest path '{url}' is declared twice (first at line {line})",
                             "give each endpoint its own path")
            else:
                seen[url] = i
        stream = endpoint.get("stream")
        ref = ctx.stream_ref(stream, path + ("stream",))
        if ref is not None:
            flow.writes.append(ref)
        key = endpoint.get("key")
        if isinstance(key, dict):
            if len(key) > 1:
                report.error(path + ("key",), f"an ingest key comes from one place; given: {', '.join(key)}",
                             "keep one of header, field, expression")
            ctx.expression(key.get("expression"), path + ("key", "expression"), INGEST_KEY_PARAMS)
        elif ref is not None and ctx.streams[stream].get("type") == "entity":
            report.error(path, f"stream '{stream}' is an entity stream: every event needs a key, and this "
                               "endpoint gives none",
                         "add `key: {field: NAME}`, `key: {header: NAME}` or `key: {expression: EXPR}`")
    return flow


def _reserved(url: str) -> str:
    if url in RESERVED_PATHS:
        return f"the path {url}"
    for prefix in RESERVED_PREFIXES:
        if url == prefix or url.startswith(prefix + "/"):
            return f"the paths under {prefix}/"
    return ""


def listen_clash(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """True when two listen addresses cannot both be bound in one process (port 0 never clashes)."""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a == 0 or port_a != port_b:
        return False
    return host_a == host_b or host_a in WILDCARD_HOSTS or host_b in WILDCARD_HOSTS
