"""The `edm` command line (typer). A thin shell: parse, call the packages, map errors to exit codes.

Exit codes: 0 success, 1 a user-facing error (invalid file, broker refused, event failed under
the `fail` policy), 2 a usage error. User errors never print a traceback; an internal error
prints one line and asks for EDM_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, AsyncIterator, Callable, Optional

import typer

from edm_runner.errors import ConfigError, EdmError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="edm: declarative topologies for event-driven microservices.")
dev_app = typer.Typer(no_args_is_help=True, help="Development helpers.")
kafka_app = typer.Typer(no_args_is_help=True, help="A single-node Apache Kafka broker (KRaft) for tests and development.")
app.add_typer(dev_app, name="dev")
dev_app.add_typer(kafka_app, name="kafka")

log = logging.getLogger("edm")

BrokerOption = Annotated[Optional[str], typer.Option(
    "--broker", envvar="EDM_BROKER",
    help="Override the file's broker: local, local:PATH or kafka://HOST:PORT[,HOST:PORT].")]
StateDirOption = Annotated[Optional[Path], typer.Option(
    "--state-dir", help="Local state and embedded broker directory (default: .edm/ beside the topology).")]
TopologyOption = Annotated[Optional[Path], typer.Option(
    "--topology", "-t", help="Topology file that declares the stream (its topic, formats and broker).")]
NoCodeOption = Annotated[bool, typer.Option("--no-code", help="Refuse Python function references.")]


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"edm: {message}", err=True)
    return typer.Exit(code)


def _run_guarded(action: Callable[[], int | None]) -> None:
    """Runs a command body, mapping user errors to messages and exit codes."""
    try:
        code = action()
    except ConfigError as error:
        for diagnostic in error.diagnostics:
            typer.echo(diagnostic.format(), err=True)
        raise typer.Exit(1)
    except EdmError as error:
        raise _fail(str(error), error.exit_code)
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as error:  # an edm bug: one line, the traceback on demand
        if os.environ.get("EDM_DEBUG"):
            raise
        raise _fail(f"internal error: {type(error).__name__}: {error} (set EDM_DEBUG=1 for a traceback, "
                    "and please report it)", 1)
    raise typer.Exit(code or 0)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _load(path: Path, no_code: bool = False):
    from edm_runner.spec import load_file
    return load_file(path, no_code=no_code)


def _state_dir(topology_file: Path | None, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    base = topology_file.resolve().parent if topology_file is not None else Path.cwd()
    return base / ".edm"


def _open_broker(topology, topology_file: Path | None, broker_url: str | None, state_dir: Path | None):
    from edm_runner.brokers import open_broker
    from edm_runner.spec.model import BrokerSpec
    spec = topology.broker if topology is not None else BrokerSpec()
    return open_broker(spec, _state_dir(topology_file, state_dir), broker_url)


@asynccontextmanager
async def _connected(broker) -> AsyncIterator[None]:
    await broker.start()
    try:
        yield
    finally:
        await broker.close()


# ---------------------------------------------------------------- validate, schema, graph

@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Topology files to check.")],
    output: Annotated[OutputFormat, typer.Option("--format", help="text, or json for CI annotations.")] = OutputFormat.text,
    no_code: NoCodeOption = False,
) -> None:
    """Check topology files: every error of every file, as file:line:col: message."""
    def body() -> int:
        from edm_runner.spec import load_file
        diagnostics = []
        for path in files:
            try:
                load_file(path, no_code=no_code)
            except ConfigError as error:
                diagnostics.extend(error.diagnostics)
        if output is OutputFormat.json:
            typer.echo(json.dumps({"valid": not diagnostics, "files": [str(f) for f in files],
                                   "errors": [d.as_json() for d in diagnostics]}, indent=2))
        else:
            for diagnostic in diagnostics:
                typer.echo(diagnostic.format(), err=True)
            if not diagnostics:
                typer.echo(f"{len(files)} file(s) valid")
            else:
                typer.echo(f"{len(diagnostics)} error(s)", err=True)
        return 1 if diagnostics else 0
    _run_guarded(body)


@app.command()
def schema(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON Schema.")]
    = Path("schemas/topology.schema.json"),
) -> None:
    """Write the topology JSON Schema assembled from the operators' own schemas."""
    def body() -> int:
        from edm_runner.spec import write_schema
        write_schema(output)
        typer.echo(f"wrote {output}")
        return 0
    _run_guarded(body)


@app.command()
def graph(
    file: Path,
    output: Annotated[GraphFormat, typer.Option("--format", help="mermaid or dot.")] = GraphFormat.mermaid,
) -> None:
    """Draw a topology (a business topology draws its microservices and the streams between them)."""
    def body() -> int:
        from edm_runner.graph.draw import to_dot, to_mermaid
        topology = _load(file)
        typer.echo(to_mermaid(topology) if output is GraphFormat.mermaid else to_dot(topology), nl=False)
        return 0
    _run_guarded(body)


# ---------------------------------------------------------------- run

class _StatusLine:
    """A live `events in/out per second` line on a TTY; nothing otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last: tuple[float, int, int] | None = None

    def __call__(self, stats) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        rate_in = rate_out = 0.0
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            rate_in = (stats.events_in - self._last[1]) / elapsed
            rate_out = (stats.events_out - self._last[2]) / elapsed
        self._last = (now, stats.events_in, stats.events_out)
        sys.stderr.write(f"\r\x1b[2K[edm] in {stats.events_in} ({rate_in:,.0f}/s)  out {stats.events_out} "
                         f"({rate_out:,.0f}/s)  skipped {stats.skipped}  dead-lettered {stats.dead_lettered}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last is not None:
            sys.stderr.write("\n")


@app.command()
def run(
    file: Path,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Stop when every input is drained.")] = False,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
    no_code: NoCodeOption = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run a microservice topology, or every microservice of a business topology."""
    _setup_logging(log_level)

    def body() -> int:
        from edm_runner.runtime import run_services
        from edm_runner.spec.model import BusinessTopology
        topology = _load(file, no_code)
        services = topology.services if isinstance(topology, BusinessTopology) else [topology]
        connection = _open_broker(topology, file, broker, state_dir)
        status = _StatusLine()

        async def go():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with _connected(connection):
                log.info("running %s on %s", ", ".join(s.name for s in services), connection.describe())
                return await run_services(services, connection, until_idle=until_idle, stop=stop,
                                          on_progress=status)

        try:
            stats = asyncio.run(go())
        finally:
            status.close()
        typer.echo(f"{topology.name}: {stats.events_in} in, {stats.events_out} out, {stats.skipped} skipped, "
                   f"{stats.dead_lettered} dead-lettered", err=True)
        return 0
    _run_guarded(body)


# ---------------------------------------------------------------- produce, consume, topics

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
    write and read invalid events, for example to exercise dead letters)."""
    from edm_runner.serde import make_serde
    from edm_runner.spec.model import SerdeSpec
    key = SerdeSpec(stream.key.format) if stream else SerdeSpec("string")
    value = SerdeSpec(stream.value.format) if stream else SerdeSpec("json")
    return make_serde(key), make_serde(value)


def _parse_lines(source, origin: str, raw_values: bool) -> list[dict]:
    records = []
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise EdmError(f"{origin}:{number}:{error.colno}: not valid JSON: {error.msg}") from None
        if raw_values:
            item = {"value": item}
        elif not isinstance(item, dict) or not set(item) <= {"key", "value", "headers", "timestamp"} or "value" not in item:
            raise EdmError(f"{origin}:{number}:1: expected an object with \"value\" and optionally \"key\", "
                           "\"headers\", \"timestamp\"; use --raw-values if each line is the value itself")
        records.append(item)
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
        model = _load(topology) if topology else None
        target = _stream_target(model, stream)
        if file is None:
            items = _parse_lines(sys.stdin, "<stdin>", raw_values)
        else:
            try:
                with file.open(encoding="utf-8") as handle:
                    items = _parse_lines(handle, str(file), raw_values)
            except OSError as error:
                raise EdmError(f"cannot read {file}: {error.strerror}") from None
        key_serde, value_serde = _plain_serdes(target)
        topic = target.topic if target else stream
        count = target.partitions if target else partitions
        spec = TopicSpec(topic, count, compacted=bool(target and target.compacted))
        connection = _open_broker(model, topology, broker, state_dir)

        async def go() -> int:
            async with _connected(connection):
                await connection.ensure_topics([spec])
                producer = connection.producer()
                await producer.start()
                try:
                    now = int(time.time() * 1000)
                    for index, item in enumerate(items):
                        key = key_serde.encode(item.get("key"))
                        partition = default_partition(key, count) if key is not None else index % count
                        headers = tuple((k, str(v).encode()) for k, v in (item.get("headers") or {}).items())
                        producer.send(OutRecord(topic, partition, key, value_serde.encode(item["value"]),
                                                int(item.get("timestamp", now)), headers))
                    await producer.flush()
                finally:
                    await producer.close()
            return len(items)

        sent = asyncio.run(go())
        typer.echo(f"produced {sent} event(s) to {topic}", err=True)
        return 0
    _run_guarded(body)


def _printable(data: bytes | None, serde) -> object:
    """A JSON-printable form: the decoded value, else UTF-8 text, else {"base64": ...}."""
    if data is None:
        return None
    try:
        decoded = serde.decode(data)
    except EdmError:
        decoded = data
    if not isinstance(decoded, bytes):
        return decoded
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(decoded).decode()}


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
        model = _load(topology) if topology else None
        target = _stream_target(model, stream)
        key_serde, value_serde = _plain_serdes(target)
        topic = target.topic if target else stream
        connection = _open_broker(model, topology, broker, state_dir)

        async def go() -> None:
            async with _connected(connection):
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
    _run_guarded(body)


async def _print_records(consumer, key_serde, value_serde, *, stop_at_end: bool, limit: int | None) -> None:
    ends = await consumer.end_offsets(sorted(consumer.assignment())) if stop_at_end else {}
    printed = 0
    while limit is None or printed < limit:
        if stop_at_end and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
            return
        batches = await consumer.getmany(timeout_ms=200, max_records=500)
        for tp in sorted(batches):
            for record in batches[tp]:
                line = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                        "timestamp": record.timestamp_ms, "key": _printable(record.key, key_serde),
                        "value": _printable(record.value, value_serde)}
                if record.headers:
                    line["headers"] = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                typer.echo(json.dumps(line, ensure_ascii=False))
                printed += 1
                if limit is not None and printed >= limit:
                    return


@app.command()
def topics(
    topology: TopologyOption = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """List the broker's topics with their partition counts and event counts."""
    def body() -> int:
        from edm_runner.brokers.base import TopicPartition
        model = _load(topology) if topology else None
        connection = _open_broker(model, topology, broker, state_dir)

        async def go() -> list[tuple[str, int, int]]:
            async with _connected(connection):
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
    _run_guarded(body)


# ---------------------------------------------------------------- dev kafka

KafkaDirOption = Annotated[Path, typer.Option("--dir", help="Working directory of the dev broker.")]


@kafka_app.command("start")
def kafka_start(workdir: KafkaDirOption = Path(".edm/kafka")) -> None:
    """Start (or find running) a single-node KRaft broker; prints its bootstrap address last."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.start(workdir)
        typer.echo(f"kafka running, pid {info.pid}, logs in {workdir}", err=True)
        typer.echo(info.bootstrap)
        return 0
    _run_guarded(body)


@kafka_app.command("stop")
def kafka_stop(workdir: KafkaDirOption = Path(".edm/kafka")) -> None:
    """Stop the dev broker started from this directory."""
    def body() -> int:
        from edm_runner import devkafka
        devkafka.stop(workdir)
        typer.echo("kafka stopped", err=True)
        return 0
    _run_guarded(body)


@kafka_app.command("status")
def kafka_status(workdir: KafkaDirOption = Path(".edm/kafka")) -> None:
    """Say whether the dev broker is running (exit 0) or not (exit 1)."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.status(workdir)
        if info is None:
            typer.echo("kafka not running", err=True)
            return 1
        typer.echo(f"kafka running, pid {info.pid}", err=True)
        typer.echo(info.bootstrap)
        return 0
    _run_guarded(body)
