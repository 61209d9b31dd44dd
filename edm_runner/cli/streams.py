"""`edm produce`, `consume`, `topics`: write, read and list a broker's topics."""
from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Optional

import typer

from edm_runner.cli.common import (BrokerOption, StateDirOption, TopologyOption, app, connected, guarded,
                                   invocation_of, load, open_broker, services_of)
from edm_runner.errors import EdmError

if TYPE_CHECKING:
    from edm_runner.brokers.base import Broker, Record
    from edm_runner.serde import Serde
    from edm_runner.language.model import StreamSpec


StreamArgument = Annotated[str, typer.Argument(help="Stream name (with -t) or topic name.", show_default=False)]


@dataclass(frozen=True)
class _Target:
    """A topic `produce` writes or `consume` reads: its declared stream (None without -t) and
    the stream's formats without schema validation (tools write and read invalid events too)."""

    stream: StreamSpec | None
    topic: str
    key_serde: Serde
    value_serde: Serde


@dataclass
class _Tool:
    """What `edm produce`, `consume` and `topics` address: the topology given with -t (if any)
    and the broker their options name (opened when first asked for, started by ``connected``)."""

    topology_file: Path | None
    broker_url: str | None
    state_dir: Path | None

    @cached_property
    def model(self):
        return load(self.topology_file) if self.topology_file else None

    def stream(self, name: str) -> StreamSpec | None:
        """The declared stream ``name`` (by stream name or topic), or None without a topology."""
        if self.model is None:
            return None
        services = services_of(self.model)
        for service in services:
            for stream in service.streams.values():
                if name in (stream.name, stream.topic):
                    return stream
        declared = sorted({s.name for svc in services for s in svc.streams.values()})
        raise EdmError(f"stream {name!r} is not declared in {self.model.source_file}; declared streams: "
                       f"{', '.join(declared)}")

    def target(self, name: str) -> _Target:
        """What `produce` and `consume` address by ``name``: a declared stream, else a topic."""
        from edm_runner.serde.lines import plain_serdes
        stream = self.stream(name)
        key_serde, value_serde = plain_serdes(stream.key, stream.value) if stream else plain_serdes()
        return _Target(stream, stream.topic if stream else name, key_serde, value_serde)

    @cached_property
    def broker(self) -> Broker:
        return open_broker(self.model, self.topology_file, self.broker_url, self.state_dir)

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[Broker]:
        invocation = invocation_of(self.model, self.topology_file, broker=self.broker_url, state_dir=self.state_dir)
        async with connected(self.broker, invocation):
            yield self.broker


@app.command()
def produce(
    stream: StreamArgument,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="JSON lines file (default: stdin).")] = None,
    topology: TopologyOption = None,
    raw_values: Annotated[bool, typer.Option("--raw-values", help="Each line is a value, not {key, value}.")] = False,
    partitions: Annotated[int, typer.Option(help="Partitions when the topic must be created without -t.")] = 1,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Write events from JSON lines: {"key": ..., "value": ..., "headers": {...}, "timestamp": ms}."""
    def body() -> int:
        from edm_runner.brokers.base import TopicSpec
        from edm_runner.brokers.tools import produce_lines
        from edm_runner.serde.lines import parse_lines
        tool = _Tool(topology, broker, state_dir)
        target = tool.target(stream)
        if file is None:
            items = parse_lines(sys.stdin.buffer, "<stdin>", raw_values, target.key_serde, target.value_serde)
        else:
            try:
                with file.open("rb") as handle:
                    items = parse_lines(handle, str(file), raw_values, target.key_serde, target.value_serde)
            except OSError as error:
                raise EdmError(f"cannot read {file}: {error.strerror}") from None
        declared = target.stream
        spec = TopicSpec(target.topic, declared.partitions if declared else partitions,
                         compacted=bool(declared and declared.compacted))

        async def go() -> int:
            async with tool.connected() as connection:
                await produce_lines(connection, spec, items)
            return len(items)

        sent = asyncio.run(go())
        typer.echo(f"produced {sent} event(s) to {target.topic}", err=True)
        return 0
    guarded(body)


@app.command()
def consume(
    stream: StreamArgument,
    topology: TopologyOption = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Read from the first event.")] = False,
    follow: Annotated[bool, typer.Option("--follow",
                                         help="With --from-beginning, keep waiting for new events.")] = False,
    max_events: Annotated[Optional[int], typer.Option("--max", help="Stop after N events.")] = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Print events as JSON lines. With --from-beginning it stops at the end unless --follow."""
    def body() -> int:
        from edm_runner.brokers.tools import read_topic
        tool = _Tool(topology, broker, state_dir)
        target = tool.target(stream)

        async def go() -> None:
            async with tool.connected() as connection:
                await read_topic(connection, target.topic,
                                 lambda record: _print_record(record, target.key_serde, target.value_serde),
                                 from_beginning=from_beginning, stop_at_end=from_beginning and not follow,
                                 limit=max_events)

        asyncio.run(go())
        return 0
    guarded(body)


def _print_record(record: Record, key_serde: Serde, value_serde: Serde) -> None:
    """One JSON line per record: what `edm produce` reads back, plus topic, partition and offset."""
    from edm_runner.serde.printable import header_to_json, to_json
    line = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
            "timestamp": record.timestamp_ms, "key": to_json(record.key, key_serde),
            "value": to_json(record.value, value_serde)}
    if record.headers:
        line["headers"] = {k: header_to_json(v) for k, v in record.headers}
    typer.echo(json.dumps(line, ensure_ascii=False))


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
        from edm_runner.brokers.tools import topic_sizes
        tool = _Tool(topology, broker, state_dir)
        connection = tool.broker

        async def remove(names: list[str]) -> None:
            async with tool.connected():
                existing = await connection.list_topics()
                await connection.delete_topics(names)
            for name in names:
                typer.echo(f"deleted {name}" if name in existing else f"no topic {name} on {connection.describe()}")

        if delete:
            asyncio.run(remove(delete))
            return 0

        async def go() -> list[tuple[str, int, int]]:
            async with tool.connected():
                return await topic_sizes(connection)

        rows = asyncio.run(go())
        width = max([len("TOPIC")] + [len(r[0]) for r in rows])
        typer.echo(f"{'TOPIC':<{width}}  PARTITIONS  END-OFFSETS")
        for name, count, total in rows:
            typer.echo(f"{name:<{width}}  {count:>10}  {total:>11}")
        return 0
    guarded(body)
