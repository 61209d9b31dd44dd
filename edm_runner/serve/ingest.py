"""Ingestion: ``POST`` events from outside into a stream (seed 004, "Handling Autonomously
Generated Events"): one event as JSON, or a batch as NDJSON (one event per line), each value
checked against the stream's JSON Schema before anything is written.

Answers (every body JSON; README.md, "Serving over HTTP", has examples):
- 200 ``{"stream", "topic", "partition", "offset"}`` for one event, ``{"stream", "topic",
  "accepted", "rejected", "results": [...]}`` for a batch whose events were all written;
  207 with the same body when some were and some were not (each result has its ``status``:
  200 with ``partition`` and ``offset``, 400 ``malformed``, 422 ``schema_violation`` or
  ``bad_key`` with ``violations``: ``[{"pointer", "message"}]``, JSON pointers into the event);
- 400 ``malformed`` (not JSON, not UTF-8, empty), 415 ``unsupported_media_type``, 422
  ``schema_violation``/``bad_key`` when nothing could be written;
- 413 ``body_too_large``, 503 ``timeout`` (the server's limits, ``serve.server``); 413
  ``record_too_large`` for an event whose record would exceed ``MAX_RECORD_BYTES`` (no writer
  of edm could pass it on: written, it would stop the service reading it at every restart);
- 429 ``overloaded`` with ``Retry-After`` when the events accepted and not yet acknowledged
  already weigh ``PENDING_BODIES`` bodies of the largest size (back-pressure: the producer's
  buffer is full); 503 ``broker_unavailable`` with ``Retry-After`` when the write failed.

Invariants:
- A 2xx is sent only after the broker acknowledged every event it reports written (the
  embedded broker: an fsynced LMDB commit; Kafka: acks=all, idempotent producer), so an
  acknowledged event survives a SIGKILL of the instance right after the answer.
- The events of one request are written in request order, each to the partition its key's
  murmur2 gives (as every producer of edm), with the request time as timestamp.
- A request with an ``Idempotency-Key`` header whose answer is remembered (``IdempotencyKeys``)
  writes nothing and gets that answer again (``Idempotent-Replayed: true``); the same key with
  another body is a 422 ``idempotency_key_reused``; a retry while the first is in flight waits
  for the first's answer. Only answers that wrote something (200, 207) are remembered. Such a
  request is answered by the key's holder among the instances (``serve.routing.key_holder``):
  any other instance forwards it there, so a retry finds the first answer wherever it lands.
- The write of a request is not cancelled by its request's timeout: it finishes (and its
  answer is remembered under its key) in the background, so a retry with the key is safe.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from aiohttp import web

from edm_runner.brokers.base import OutRecord, Producer, RecordTooLargeError, check_record_size
from edm_runner.errors import BrokerError, EventError
from edm_runner.language.expressions import compile_expression
from edm_runner.language.http import INGEST_KEY_PARAMS
from edm_runner.language.model import IngestSpec, StreamSpec
from edm_runner.records.partitioner import DefaultPartitioner
from edm_runner.serde import SerdeError, SerdeSpec, Violation, make_serde, schema_violations
from edm_runner.serde.core import encode_json
from edm_runner.serve import params
from edm_runner.serve.context import ServeContext
from edm_runner.serve.errors import HttpError, unavailable
from edm_runner.serve.idempotency import Answer, IdempotencyKeys
from edm_runner.serve.metrics import process_metrics
from edm_runner.serve.routing import HOP_HEADER, forward, key_holder

log = logging.getLogger("edm.serve")

# Strict JSON (no NaN, nothing after the value, UTF-8) through the C scanner: edm's JSON decoding.
_decode_json = make_serde(SerdeSpec("json")).decode
JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines"})
# Back-pressure: the bytes of accepted, unacknowledged events may reach this many request bodies
# of the largest size allowed (``http.limits.max_body``); beyond, requests are refused (429).
PENDING_BODIES = 8
# How long stopping waits for writes whose requests timed out.
STOP_WRITES_S = 5.0


class _Refused(Exception):
    """One event cannot be written: its result (``status``, ``code``, ``message``, violations)."""

    def __init__(self, status: int, code: str, message: str, violations: list[Violation] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.violations = status, code, message, violations

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.violations is not None:
            body["violations"] = [{"pointer": v.pointer, "message": v.message} for v in self.violations]
        return body


class _Request:
    """What an ingest key expression sees of the request as the event's metadata: ``headers``
    (case-insensitive) and ``timestamp`` (ms, the request time)."""

    __slots__ = ("header_map", "timestamp", "origin")

    def __init__(self, headers: Any, timestamp: int) -> None:
        self.header_map = headers
        self.timestamp = timestamp
        self.origin = None


def key_function(spec: IngestSpec, stream: StreamSpec) -> Callable[[Any, _Request], Any]:
    """(value, request) -> the event's key, in the stream's key format (``_Refused`` when it
    cannot be had)."""
    rule = spec.key
    if rule is None:
        return lambda value, request: None
    if rule.header is not None:
        name, fmt = rule.header, stream.key.format

        def from_header(value: Any, request: _Request) -> Any:
            raw = request.header_map.get(name)
            if raw is None:
                raise _Refused(400, "bad_key", f"the key of the events comes from the request header {name}, "
                                               "which is missing")
            if fmt == "json":
                try:
                    return json.loads(raw)
                except ValueError:
                    raise _Refused(400, "bad_key", f"header {name}: {raw!r} is not JSON, the key format of "
                                                   f"stream '{stream.name}'; a string is quoted: "
                                                   f"{json.dumps(raw)}") from None
            return raw.encode() if fmt == "bytes" else raw

        return from_header
    if rule.field is not None:
        path = rule.field.split(".")
        pointer = "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)

        def from_field(value: Any, request: _Request) -> Any:
            for part in path:
                if not isinstance(value, dict) or part not in value:
                    if stream.key.keyed:
                        raise _Refused(422, "bad_key", f"the event has no field {rule.field}, its key "
                                                       f"(stream '{stream.name}' needs one)",
                                       [Violation(pointer, "missing: the event's key")])
                    return None
                value = value[part]
            return value

        return from_field
    expression = compile_expression(rule.expression or "", params=INGEST_KEY_PARAMS, metadata_param="event",
                                    user_errors=True)

    def from_expression(value: Any, request: _Request) -> Any:
        try:
            return expression(value, request)
        except EventError as exc:
            raise _Refused(422, "bad_key", f"the key expression failed on the event: {exc}") from None

    return from_expression


@dataclass
class _Parsed:
    """One event of a request: its ``record`` to write, or why it is refused."""

    record: OutRecord | None = None
    refused: _Refused | None = None
    line: int = 1  # a batch's event: its line number in the body (1-based; blank lines count)


class Endpoint:
    """One ``http.ingest`` entry: turns request bodies into the stream's records."""

    def __init__(self, spec: IngestSpec, stream: StreamSpec) -> None:
        self.spec = spec
        self.stream = stream
        self.key_of = key_function(spec, stream)
        self.violations = schema_violations(stream.value)
        self.encode_key = make_serde(stream.key).encode
        # The schema is checked by ``violations`` (every path, not only the first).
        self.encode_value = make_serde(replace(stream.value, schema=None)).encode
        self.partitioner = DefaultPartitioner(stream.partitions)

    def parse(self, data: bytes, request: _Request) -> _Parsed:
        try:
            value = _decode_json(data)
        except SerdeError as exc:
            return _Parsed(refused=_Refused(400, "malformed", str(exc)))
        problems = self.violations(value)
        if problems:
            return _Parsed(refused=_Refused(422, "schema_violation",
                                            f"the event does not match the schema of stream '{self.stream.name}'",
                                            problems))
        try:
            key = self.key_of(value, request)
            key_bytes = self.encode_key(key)
        except _Refused as refused:
            return _Parsed(refused=refused)
        except SerdeError as exc:
            return _Parsed(refused=_Refused(422, "bad_key", f"the key of the event: {exc}"))
        try:
            value_bytes = self.encode_value(value)
        except SerdeError as exc:
            return _Parsed(refused=_Refused(422, "schema_violation", str(exc), [Violation("", str(exc))]))
        try:  # what no stream writer of edm would write (and Kafka would refuse): not into the stream
            check_record_size(f"the event for stream '{self.stream.name}'", key_bytes, value_bytes,
                              hint="send smaller events")
        except RecordTooLargeError as exc:
            return _Parsed(refused=_Refused(413, "record_too_large", str(exc)))
        partition = self.partitioner(key, key_bytes, value)
        return _Parsed(OutRecord(self.stream.topic, partition, key_bytes, value_bytes, request.timestamp, ()))


class Ingestion:
    """The ingest endpoints of one service: one producer, the back-pressure account and the
    remembered idempotency keys (see the module invariants)."""

    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx
        topology = ctx.view.topology
        self.endpoints = {e.path: Endpoint(e, topology.streams[e.stream]) for e in ctx.spec.ingest}
        self.max_pending = PENDING_BODIES * ctx.spec.max_body_bytes
        self.pending = 0
        self.producer: Producer | None = None
        self.producer_started = asyncio.Lock()  # the first writes start one producer, not one each
        self.keys: IdempotencyKeys | None = None
        self.in_flight: dict[tuple[str, str], asyncio.Future[Answer]] = {}
        self.writes: set[asyncio.Task[Answer]] = set()
        metrics = process_metrics().http
        self.pending_gauge = metrics.pending.labels(ctx.view.name)
        self.ingested = metrics.ingested

    async def start(self) -> None:
        self.keys = await asyncio.to_thread(IdempotencyKeys,
                                            self.ctx.view.state_dir / "ingest" / self.ctx.view.name)

    async def stop(self) -> None:
        if self.writes:  # writes of timed-out requests: their events may be acknowledged yet
            await asyncio.wait(self.writes, timeout=STOP_WRITES_S)
        if self.producer is not None:
            await self.producer.close()
        if self.keys is not None:
            await asyncio.to_thread(self.keys.close)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = self.endpoints[request.match_info.route.resource.canonical]
        params.parse(request.query, {})  # an ingest endpoint takes no query parameter
        body = await request.read()  # bounded by http.limits.max_body (413 from the server)
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            holder = key_holder(self.ctx, endpoint.spec.path, key, hopped=HOP_HEADER in request.headers)
            if holder is not None:
                status, headers, answer = await forward(self.ctx, holder, request)
                return web.Response(status=status, headers=headers, body=answer)
        digest = hashlib.sha256(body).hexdigest()
        if key is not None:
            scope = (endpoint.spec.path, key)
            remembered = self.keys.get(*scope) if self.keys is not None else None
            if remembered is None and scope in self.in_flight:
                remembered = await asyncio.shield(self.in_flight[scope])
            if remembered is not None:
                if remembered.digest != digest:
                    raise HttpError(422, "idempotency_key_reused",
                                    f"Idempotency-Key {key!r} was used for another request body on "
                                    f"{endpoint.spec.path}; use a new key for new events")
                return _respond(remembered, {"Idempotent-Replayed": "true"})
        batch = _batch(request.content_type)
        meta = _Request(request.headers, int(time.time() * 1000))
        parsed = _events(endpoint, body, batch, meta)
        records = [p.record for p in parsed if p.record is not None]
        if records and self.pending and self.pending + len(body) > self.max_pending:
            raise HttpError(429, "overloaded", f"{self.pending} bytes of events are waiting for the broker's "
                                               "acknowledgement; retry later", retry_after=1)
        write = asyncio.ensure_future(self._write(endpoint, parsed, records, batch, len(body), digest, key))
        if key is not None:
            self.in_flight[(endpoint.spec.path, key)] = write
            write.add_done_callback(lambda _: self.in_flight.pop((endpoint.spec.path, key), None))
        self.writes.add(write)
        write.add_done_callback(self._written)
        answer = await asyncio.shield(write)
        return _respond(answer)

    def _written(self, write: asyncio.Task[Answer]) -> None:
        self.writes.discard(write)
        if not write.cancelled():
            write.exception()  # retrieved: the request that waited for it may have timed out

    async def _write(self, endpoint: Endpoint, parsed: list[_Parsed], records: list[OutRecord], batch: bool,
                     size: int, digest: str, key: str | None) -> Answer:
        """Writes ``records``, then builds (and, with a ``key``, remembers) the answer."""
        offsets: list[int] = []
        if records:
            self.pending += size
            self.pending_gauge.set(self.pending)
            try:
                offsets = await self._producer_write(records)
            finally:
                self.pending -= size
                self.pending_gauge.set(self.pending)
        outcomes: dict[str, int] = {}
        for p in parsed:
            outcome = "written" if p.record is not None else p.refused.code
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for outcome, n in outcomes.items():
            self.ingested.labels(self.ctx.view.name, endpoint.spec.path, outcome).inc(n)
        answer = _answer(endpoint, parsed, offsets, batch, digest)
        if key is not None and records and self.keys is not None:
            await self.keys.put(endpoint.spec.path, key, answer)
        return answer

    async def _producer_write(self, records: list[OutRecord]) -> list[int]:
        try:
            async with self.producer_started:
                if self.producer is None:
                    producer = self.ctx.view.producer()
                    await producer.start()
                    self.producer = producer
            return await self.producer.write(records)
        except BrokerError as exc:
            log.warning("%s: ingestion could not write %d event(s): %s", self.ctx.view.name, len(records), exc)
            raise unavailable("broker_unavailable", f"the events were not written: {exc}; retry later") from exc


def _respond(answer: Answer, headers: dict[str, str] | None = None) -> web.Response:
    """The answer as JSON, encoded by edm's C-encoder path (a batch's answer has a result per event)."""
    return web.Response(body=encode_json(answer.body), status=answer.status, headers=headers,
                        content_type="application/json")


def _batch(content_type: str) -> bool:
    if content_type in NDJSON_TYPES:
        return True
    if content_type in JSON_TYPES:
        return False
    raise HttpError(415, "unsupported_media_type",
                    f"Content-Type {content_type or '(none)'} is not accepted; send one event as "
                    "application/json, or a batch as application/x-ndjson (one JSON event per line)")


def _events(endpoint: Endpoint, body: bytes, batch: bool, meta: _Request) -> list[_Parsed]:
    if not batch:
        if not body.strip():
            raise HttpError(400, "malformed", "the body is empty; send one JSON event")
        return [endpoint.parse(body, meta)]
    events = [replace(endpoint.parse(line, meta), line=n)
              for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    if not events:
        raise HttpError(400, "malformed", "the body holds no event; send one JSON event per line")
    return events


def _answer(endpoint: Endpoint, parsed: list[_Parsed], offsets: list[int], batch: bool, digest: str) -> Answer:
    stream = endpoint.stream
    written = iter(offsets)
    if not batch:
        only = parsed[0]
        if only.refused is not None:
            return Answer(only.refused.status, only.refused.body(), digest)
        return Answer(200, {"stream": stream.name, "topic": stream.topic, "partition": only.record.partition,
                            "offset": next(written)}, digest)
    results: list[dict[str, Any]] = []
    for p in parsed:
        if p.refused is not None:
            results.append({"line": p.line, "status": p.refused.status, **p.refused.body()})
        else:
            results.append({"line": p.line, "status": 200, "partition": p.record.partition,
                            "offset": next(written)})
    accepted = len(offsets)
    rejected = len(parsed) - accepted
    if not rejected:
        status = 200
    elif accepted:
        status = 207
    else:
        status = 400 if any(p.refused.status == 400 for p in parsed) else 422
    return Answer(status, {"stream": stream.name, "topic": stream.topic, "accepted": accepted,
                           "rejected": rejected, "results": results}, digest)


def add_routes(ctx: ServeContext) -> None:
    """``POST`` at every ``http.ingest`` path."""
    if not ctx.spec.ingest:
        return
    ingestion = Ingestion(ctx)
    for endpoint in ctx.spec.ingest:
        ctx.app.router.add_post(endpoint.path, ingestion.handle)

    async def lifecycle(app: web.Application) -> Any:
        await ingestion.start()
        yield
        await ingestion.stop()

    ctx.app.cleanup_ctx.append(lifecycle)
