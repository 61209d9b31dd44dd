"""`edm produce`, `consume`, `topics`: write, read and list a broker's topics."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from edm_runner.cli.common import (BrokerOption, StateDirOption, TopologyOption, app, connected, guarded,
                                   invocation_of, load, open_broker)
from edm_runner.errors import EdmError


def _stream_target(topology, name: str):
    """The declared stream ``name`` (by stream name or topic), or None without a topology."""
    if topology is None:
        return None
    from edm_runner.spec.model import BusinessTopology
    services = topology.services if isinstance(topology, BusinessTopology) else [topology]
    for service in services:
        for stream in service.streams.values():
            if name in (stream.name, stream.topic):
                return stream
    declared = sorted({s.name for svc in services for s in svc.streams.values()})
    raise EdmError(f"stream {name!r} is not declared in {topology.source_file}; declared streams: "
                   f"{', '.join(declared)}")


def _plain_serdes(stream):
    """Encoders/decoders of a stream's formats without schema validation (tools must be able to
    write and read invalid events, for example to exercise dead letters). A null key is still
    refused on an entity stream: no broker can keep such a record (Kafka refuses it)."""
    from edm_runner.serde import make_serde
    from edm_runner.spec.model import SerdeSpec
    key = SerdeSpec(stream.key.format, keyed=stream.key.keyed) if stream else SerdeSpec("string")
    value = SerdeSpec(stream.value.format) if stream else SerdeSpec("json")
    return make_serde(key), make_serde(value)


# What `edm consume` prints besides the record, so its output can be produced again.
_CONSUMED_FIELDS = {"topic", "partition", "offset"}


@dataclass(frozen=True)
class _Line:
    """One input line of `edm produce`, encoded."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


def _parse_lines(source, origin: str, raw_values: bool, key_serde, value_serde) -> list[_Line]:
    """Encode each JSON line of the binary stream ``source``; any problem is an ``EdmError``
    at ``origin:line:col``. Bytes are read back by ``serde.printable.from_json``, the inverse
    of what `edm consume` prints."""
    from edm_runner.brokers.base import check_record_size
    from edm_runner.errors import EventError
    from edm_runner.serde.printable import from_json, header_from_json
    now = int(time.time() * 1000)
    records = []
    for number, raw in enumerate(source, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise EdmError(f"{origin}:{number}:{error.start + 1}: not UTF-8 text; "
                           "write raw bytes as {\"base64\": ...}") from None
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise EdmError(f"{origin}:{number}:{error.colno}: not valid JSON: {error.msg}") from None
        if raw_values:
            item = {"value": item}
        elif not isinstance(item, dict) or not set(item) <= {"key", "value", "headers", "timestamp",
                                                             *_CONSUMED_FIELDS} or "value" not in item:
            raise EdmError(f"{origin}:{number}:1: expected an object with \"value\" and optionally \"key\", "
                           "\"headers\", \"timestamp\" (the lines `edm consume` prints); use --raw-values "
                           "if each line is the value itself")
        timestamp = item.get("timestamp", now)
        if type(timestamp) is not int or not 0 <= timestamp < 2 ** 63:  # Kafka's int64
            raise EdmError(f"{origin}:{number}:1: \"timestamp\" must be milliseconds since the epoch "
                           f"(an integer), not {json.dumps(timestamp, ensure_ascii=False)}")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict):
            raise EdmError(f"{origin}:{number}:1: \"headers\" must be an object of names to values")
        try:
            line_record = _Line(from_json(item.get("key"), key_serde), from_json(item["value"], value_serde),
                                tuple((k, header_from_json(v)) for k, v in headers.items()), timestamp)
            check_record_size("the record", line_record.key, line_record.value, line_record.headers)
        except EventError as error:  # SerdeError, RecordTooLargeError
            raise EdmError(f"{origin}:{number}:1: {error}") from None
        records.append(line_record)
    return records


@app.command()
def produce(
    stream: Annotated[str, typer.Argument(help="Stream name (with -t) or topic name.")],
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="JSON lines file (default: stdin).")] = None,
    topology: TopologyOption = None,
    raw_values: Annotated[bool, typer.Option("--raw-values", help="Each line is a value, not {key, value}.")] = False,
    partitions: Annotated[int, typer.Option(help="Partitions when the topic must be created without -t.")] = 1,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Write events from JSON lines: {"key": ..., "value": ..., "headers": {...}, "timestamp": ms}."""
    def body() -> int:
        from edm_runner.brokers.base import OutRecord, TopicSpec
        from edm_runner.brokers.partitioner import default_partition
        model = load(topology) if topology else None
        target = _stream_target(model, stream)
        key_serde, value_serde = _plain_serdes(target)
        if file is None:
            items = _parse_lines(sys.stdin.buffer, "<stdin>", raw_values, key_serde, value_serde)
        else:
            try:
                with file.open("rb") as handle:
                    items = _parse_lines(handle, str(file), raw_values, key_serde, value_serde)
            except OSError as error:
                raise EdmError(f"cannot read {file}: {error.strerror}") from None
        topic = target.topic if target else stream
        count = target.partitions if target else partitions
        spec = TopicSpec(topic, count, compacted=bool(target and target.compacted))
        connection = open_broker(model, topology, broker, state_dir)

        async def go() -> int:
            async with connected(connection, invocation_of(model, topology, broker=broker, state_dir=state_dir)):
                await connection.ensure_topics([spec])
                producer = connection.producer()
                await producer.start()
                try:
                    for index, item in enumerate(items):
                        partition = default_partition(item.key, count) if item.key is not None else index % count
                        producer.send(OutRecord(topic, partition, item.key, item.value, item.timestamp,
                                                item.headers))
                    await producer.flush()
                finally:
                    await producer.close()
            return len(items)

        sent = asyncio.run(go())
        typer.echo(f"produced {sent} event(s) to {topic}", err=True)
        return 0
    guarded(body)


@app.command()
def consume(
    stream: Annotated[str, typer.Argument(help="Stream name (with -t) or topic name.")],
    topology: TopologyOption = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Read from the first event.")] = False,
    follow: Annotated[bool, typer.Option("--follow", help="With --from-beginning, keep waiting for new events.")] = False,
    max_events: Annotated[Optional[int], typer.Option("--max", help="Stop after N events.")] = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Print events as JSON lines. With --from-beginning it stops at the end unless --follow."""
    def body() -> int:
        model = load(topology) if topology else None
        target = _stream_target(model, stream)
        key_serde, value_serde = _plain_serdes(target)
        topic = target.topic if target else stream
        connection = open_broker(model, topology, broker, state_dir)

        async def go() -> None:
            async with connected(connection, invocation_of(model, topology, broker=broker, state_dir=state_dir)):
                topics = await connection.list_topics()
                if topic not in topics:
                    raise EdmError(f"topic {topic!r} does not exist on {connection.describe()}; "
                                   f"existing topics: {', '.join(sorted(topics)) or 'none'}")
                consumer = connection.consumer(None, [topic], from_beginning=from_beginning)
                await consumer.start()
                try:
                    await _print_records(consumer, key_serde, value_serde,
                                         stop_at_end=from_beginning and not follow, limit=max_events)
                finally:
                    await consumer.close()

        asyncio.run(go())
        return 0
    guarded(body)


async def _print_records(consumer, key_serde, value_serde, *, stop_at_end: bool, limit: int | None) -> None:
    from edm_runner.serde.printable import header_to_json, to_json
    ends = await consumer.end_offsets(sorted(consumer.assignment())) if stop_at_end else {}
    printed = 0
    while limit is None or printed < limit:
        if stop_at_end and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
            return
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        for tp in sorted(batches):
            for record in batches[tp]:
                line = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                        "timestamp": record.timestamp_ms, "key": to_json(record.key, key_serde),
                        "value": to_json(record.value, value_serde)}
                if record.headers:
                    line["headers"] = {k: header_to_json(v) for k, v in record.headers}
                typer.echo(json.dumps(line, ensure_ascii=False))
                printed += 1
                if limit is not None and printed >= limit:
                    return


@app.command()
def topics(
    topology: TopologyOption = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
    delete: Annotated[Optional[list[str]], typer.Option(
        "--delete", metavar="TOPIC",
        help="Delete TOPIC (its events and committed offsets; repeatable) instead of listing: a run "
             "then creates it with the declared partitions.")] = None,
) -> None:
    """List the broker's topics with their partition counts and event counts (or delete some)."""
    def body() -> int:
        from edm_runner.brokers.base import TopicPartition
        model = load(topology) if topology else None
        connection = open_broker(model, topology, broker, state_dir)
        invocation = invocation_of(model, topology, broker=broker, state_dir=state_dir)

        async def remove(names: list[str]) -> None:
            async with connected(connection, invocation):
                existing = await connection.list_topics()
                await connection.delete_topics(names)
            for name in names:
                typer.echo(f"deleted {name}" if name in existing else f"no topic {name} on {connection.describe()}")

        if delete:
            asyncio.run(remove(delete))
            return 0

        async def go() -> list[tuple[str, int, int]]:
            async with connected(connection, invocation):
                found = await connection.list_topics()
                if not found:
                    return []
                consumer = connection.consumer(None, sorted(found))
                await consumer.start()
                try:
                    ends = await consumer.end_offsets([TopicPartition(t, p) for t, n in found.items()
                                                       for p in range(n)])
                finally:
                    await consumer.close()
                return [(t, n, sum(ends[TopicPartition(t, p)] for p in range(n))) for t, n in sorted(found.items())]

        rows = asyncio.run(go())
        width = max([len("TOPIC")] + [len(r[0]) for r in rows])
        typer.echo(f"{'TOPIC':<{width}}  PARTITIONS  END-OFFSETS")
        for name, count, total in rows:
            typer.echo(f"{name:<{width}}  {count:>10}  {total:>11}")
        return 0
    guarded(body)
