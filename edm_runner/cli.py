"""The `edm` command line (typer). A thin shell: parse, call the packages, map errors to exit codes.

Exit codes: 0 success, 1 a user-facing error (invalid file, broker refused, event failed under
the `fail` policy), 2 a usage error; as Unix tools, 128 + the signal when one ended the command:
130 after SIGINT (Ctrl-C; `edm run` first stops cleanly), 141 when the reader of stdout went
away (`edm consume ... | head -2`, quietly). SIGTERM, the orchestrator's normal stop, makes
`edm run` stop cleanly and exit 0. User errors never print a traceback; an internal error
prints one line and asks for EDM_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, AsyncIterator, Callable, Optional

import typer
from typer.core import TyperGroup, TyperOption

from edm_runner.errors import BrokerError, ConfigError, EdmError, InternalError
from edm_runner.invocation import Invocation

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
    except BrokenPipeError:  # stdout's reader is gone (`| head`): stop quietly
        _discard_stdout()
        raise typer.Exit(128 + signal.SIGPIPE)
    except Exception as error:  # an edm bug: one line, the traceback on demand
        if os.environ.get("EDM_DEBUG"):
            raise
        what = str(error) if isinstance(error, InternalError) else f"{type(error).__name__}: {error}"
        raise _fail(f"internal error: {what} (set EDM_DEBUG=1 for a traceback, and please report it)", 1)
    raise typer.Exit(code or 0)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail again on the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _RepeatFilter(logging.Filter):
    """Lets one message template through at most once per ``interval_s``, then says how many
    were held back: a broker outage makes aiokafka log the same line many times a second."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        now = time.monotonic()
        last, held = self._seen.get(str(record.msg), (float("-inf"), 0))
        if now - last < self.interval_s:
            self._seen[str(record.msg)] = (last, held + 1)
            return False
        self._seen[str(record.msg)] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar messages held back)"
        return True


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if level.lower() != "debug":
        for handler in logging.getLogger().handlers:
            handler.addFilter(_RepeatFilter())


def _load(path: Path, no_code: bool = False):
    from edm_runner.spec import load_file
    return load_file(path, no_code=no_code)


def _state_dir(topology_file: Path | None, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    base = topology_file.resolve().parent if topology_file is not None else Path.cwd()
    return base / ".edm"


def _invocation(topology, file: Path | None, *, broker: str | None = None, state_dir: Path | None = None,
                service: str | None = None) -> Invocation:
    """How the user ran this command: what hints that name a command repeat (``file`` None:
    a command given no topology, `-t`)."""
    from edm_runner.spec.model import BusinessTopology
    return Invocation(None if file is None else str(file), broker, None if state_dir is None else str(state_dir), service,
                      business=isinstance(topology, BusinessTopology))


def _open_broker(topology, topology_file: Path | None, broker_url: str | None, state_dir: Path | None):
    from edm_runner.brokers import open_broker
    from edm_runner.spec.model import BrokerSpec
    spec = topology.broker if topology is not None else BrokerSpec()
    return open_broker(spec, _state_dir(topology_file, state_dir), broker_url)


@asynccontextmanager
async def _connected(broker, invocation: Invocation) -> AsyncIterator[None]:
    """``broker`` started for the block and closed after it. A full embedded broker is
    completed with the commands that free room, as ``invocation`` ran edm."""
    from edm_runner.brokers.base import BrokerFullError
    await broker.start()
    try:
        yield
    except BrokerFullError as error:
        raise BrokerError(f"{error}; delete topics you no longer need (`{invocation.command('topics')}` "
                          f"lists them, `{invocation.command('topics', '--delete', 'TOPIC')}` deletes one) "
                          "or run on Kafka") from error
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


@app.command()
def describe(
    file: Path,
    output: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Print a microservice's sub-topologies, tasks, internal topics and copartition groups
    (a business topology: each of its microservices)."""
    def body() -> int:
        from edm_runner.graph.dag import describe as describe_topology
        from edm_runner.spec.model import BusinessTopology
        topology = _load(file)
        services = topology.services if isinstance(topology, BusinessTopology) else [topology]
        docs = [describe_topology(s) for s in services]
        if output is OutputFormat.json:
            typer.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
        else:
            typer.echo("\n".join(_describe_text(doc) for doc in docs), nl=False)
        return 0
    _run_guarded(body)


def _describe_text(doc: dict) -> str:
    lines = [f"service {doc['service']}: {len(doc['subtopologies'])} sub-topologies, {len(doc['tasks'])} tasks"]
    for sub in doc["subtopologies"]:
        tasks = ", ".join(f"{sub['id']}_{p}" for p in range(sub["tasks"]))
        lines += [f"  sub-topology {sub['id']}: tasks {tasks}",
                  f"    sources: {', '.join(sub['source_topics']) or '-'}",
                  f"    sinks:   {', '.join(sub['sink_topics']) or '-'}"]
        if sub["stores"]:
            lines.append(f"    stores:  {', '.join(sub['stores'])}")
        lines += [f"    {node['kind']:<7} {node['label']}" for node in sub["nodes"]]
    if doc["internal_topics"]:
        lines.append("  internal topics:")
        lines += [f"    {topic} ({t['kind']}, {t['partitions']} partitions{', compacted' if t.get('compacted') else ''}, "
                  f"key {t['key']}, value {t['value']}"
                  f"{'' if t.get('partitioner', 'default') == 'default' else ', partitioner ' + t['partitioner']})"
                  for topic, t in doc["internal_topics"].items()]
    if doc["copartition_groups"]:
        lines.append("  copartition groups:")
        lines += [f"    {g['join']}: " + ", ".join(
                      f"{s} ({t}, {n} partitions, key {k}{'' if p == 'default' else ', partitioner ' + p})"
                      for s, t, n, k, p in zip(g["streams"], g["topics"], g["partitions"], g["key_formats"],
                                               g["partitioners"]))
                  for g in doc["copartition_groups"]]
    if doc["global_tables"]:
        lines.append("  global tables: " + ", ".join(f"{n} ({t})" for n, t in doc["global_tables"].items()))
    return "\n".join(lines) + "\n"


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
    no_create_topics: Annotated[bool, typer.Option(
        "--no-create-topics",
        help="Do not create topics (they are managed elsewhere): missing ones are an error listing them.")] = False,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    instance_id: Annotated[Optional[str], typer.Option(
        "--instance-id", envvar="EDM_INSTANCE_ID",
        help="Static group membership id of this instance (e.g. the pod name); replaces "
             "processing.instance_id.")] = None,
) -> None:
    """Run a microservice topology, or every microservice of a business topology."""
    _setup_logging(log_level)

    def body() -> int:
        from edm_runner.runtime import run_services
        from edm_runner.spec.model import BusinessTopology
        topology = _load(file, no_code)
        services = topology.services if isinstance(topology, BusinessTopology) else [topology]
        if instance_id:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,248}", instance_id):
                raise EdmError(f"invalid --instance-id {instance_id!r}: use letters, digits, '.', '_' "
                               "and '-', starting with a letter or digit")
            for service in services:
                service.processing.instance_id = instance_id
        connection = _open_broker(topology, file, broker, state_dir)
        invocation = _invocation(topology, file, broker=broker, state_dir=state_dir)
        status = _StatusLine()

        stopped_by: list[signal.Signals] = []

        def on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
            stopped_by.append(sig)
            stop.set()

        async def go():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, sig, stop)
            async with _connected(connection, invocation):
                log.info("running %s on %s", ", ".join(s.name for s in services), connection.describe())
                return await run_services(services, connection, until_idle=until_idle, stop=stop,
                                          on_progress=status, create_topics=not no_create_topics,
                                          state_dir=_state_dir(file, state_dir),
                                          invocation=invocation)

        try:
            stats = asyncio.run(go())
        finally:
            status.close()
        typer.echo(_run_summary(topology.name, stats), err=True)
        # SIGTERM is the orchestrator's normal stop; SIGINT (Ctrl-C) an interruption.
        return 128 + signal.SIGINT if stopped_by[:1] == [signal.SIGINT] else 0
    _run_guarded(body)


def _run_summary(name: str, stats) -> str:
    """The line `edm run` ends with: the user's streams in and out, then what went through
    internal (repartition) topics, apart; late events come with what to do about them."""
    line = (f"{name}: {stats.events_in} in, {stats.events_out} out, {stats.skipped} skipped, "
            f"{stats.dead_lettered} dead-lettered, {stats.late} late, {stats.restored} restored")
    if stats.internal_in or stats.internal_out:
        line += f" (internal topics: {stats.internal_in} in, {stats.internal_out} out)"
    if stats.late:
        line += (f"\n{stats.late} late event(s) dropped: their event time was behind the stream time "
                 "by more than the window's grace period, so their window had closed. Give the "
                 "window a grace period as long as the disorder of its input (`window: {..., grace: "
                 "1h}`); after a group_by or repartition the input partitions interleave, so the "
                 "disorder is at least the time skew between them (docs/language.md, \"Event time\").")
    return line


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
    from edm_runner.serde import SerdeError
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
            records.append(_Line(from_json(item.get("key"), key_serde), from_json(item["value"], value_serde),
                                 tuple((k, header_from_json(v)) for k, v in headers.items()), timestamp))
        except SerdeError as error:
            raise EdmError(f"{origin}:{number}:1: {error}") from None
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
        connection = _open_broker(model, topology, broker, state_dir)

        async def go() -> int:
            async with _connected(connection, _invocation(model, topology, broker=broker, state_dir=state_dir)):
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
    _run_guarded(body)


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
            async with _connected(connection, _invocation(model, topology, broker=broker, state_dir=state_dir)):
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
        model = _load(topology) if topology else None
        connection = _open_broker(model, topology, broker, state_dir)
        invocation = _invocation(model, topology, broker=broker, state_dir=state_dir)

        async def remove(names: list[str]) -> None:
            async with _connected(connection, invocation):
                existing = await connection.list_topics()
                await connection.delete_topics(names)
            for name in names:
                typer.echo(f"deleted {name}" if name in existing else f"no topic {name} on {connection.describe()}")

        if delete:
            asyncio.run(remove(delete))
            return 0

        async def go() -> list[tuple[str, int, int]]:
            async with _connected(connection, invocation):
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
def kafka_start(workdir: KafkaDirOption = Path(".edm/kafka"),
                nodes: Annotated[Optional[int], typer.Option(
                    "--nodes", min=1, help="Nodes of the KRaft cluster (each a broker and a controller; "
                    "topics get min(3, N) replicas). Default: the size already in --dir, else 1.")] = None,
                ) -> None:
    """Start (or find running) a KRaft broker or cluster; prints its bootstrap address last."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.start(workdir, nodes=nodes)
        typer.echo(f"kafka running, {_pids(info)}, logs in {workdir}", err=True)
        typer.echo(info.bootstrap)
        return 0
    _run_guarded(body)


@kafka_app.command("stop")
def kafka_stop(workdir: KafkaDirOption = Path(".edm/kafka"),
               node: Annotated[Optional[int], typer.Option(
                   "--node", help="Stop only this node of a cluster (`start` brings it back).")] = None,
               ) -> None:
    """Stop the dev broker (every node of the cluster) started from this directory."""
    def body() -> int:
        from edm_runner import devkafka
        what = "kafka" if node is None else f"kafka node {node}"
        typer.echo(f"{what} stopped" if devkafka.stop(workdir, node=node) else f"{what} not running",
                   err=True)
        return 0
    _run_guarded(body)


@kafka_app.command("status")
def kafka_status(workdir: KafkaDirOption = Path(".edm/kafka")) -> None:
    """Say whether the dev broker (every node of the cluster) is running (exit 0) or not (exit 1)."""
    def body() -> int:
        from edm_runner import devkafka
        info = devkafka.status(workdir)
        if info is None:
            typer.echo("kafka not running", err=True)
            return 1
        typer.echo(f"kafka running, {_pids(info)}", err=True)
        typer.echo(info.bootstrap)
        return 0
    _run_guarded(body)


def _pids(info) -> str:
    if len(info.nodes) == 1:
        return f"pid {info.pid}"
    return f"{len(info.nodes)} nodes, pids {', '.join(map(str, info.pids))}"


# ---------------------------------------------------------------- reset, state

def _services(topology, service: str | None = None) -> list:
    """The microservices of ``topology`` (one, or every one of a business topology), or the
    one named ``service``."""
    from edm_runner.spec.model import BusinessTopology
    services = topology.services if isinstance(topology, BusinessTopology) else [topology]
    if service is None:
        return services
    for candidate in services:
        if candidate.name == service:
            return [candidate]
    raise EdmError(f"{topology.source_file} has no microservice {service!r}; its microservices: "
                   f"{', '.join(s.name for s in services)}")


def _parse_datetime(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 date-time; without an offset it is UTC."""
    from datetime import datetime, timezone
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise EdmError(f"--to-datetime {text!r} is not an ISO 8601 date-time; write e.g. "
                       "2026-11-23T10:00:00Z or 2026-11-23T11:00:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass
class _ResetPlan:
    """What ``edm reset`` does to one service. ``offsets``: input partition -> (committed
    offset or None, new offset). ``rewritten``: the input topics set to their end instead,
    because the services being reset write them (the reprocessing writes their records
    again). ``topics``: existing internal topics to delete. ``state``: the service's local
    state directory when it exists."""

    service: str
    broker: str
    offsets: dict = field(default_factory=dict)
    rewritten: set[str] = field(default_factory=set)
    topics: list[str] = field(default_factory=list)
    state: Path | None = None
    state_dir: Path = Path()

    def format(self) -> str:
        lines = [f"reset plan for service {self.service} on {self.broker} (edm reset stops nothing: "
                 "every instance of the service must be stopped)"]
        lines.append(f"  group {self.service}: input offsets")
        for tp, (old, new) in sorted(self.offsets.items()):
            end = " (its end: this reset's services write it again)" if tp.topic in self.rewritten else ""
            lines.append(f"    {tp.topic}[{tp.partition}]: {'none' if old is None else old} -> {new}{end}")
        if not self.offsets:
            lines.append("    none (no input topic exists yet)")
        lines.append("  internal topics to delete:")
        lines += [f"    {t}" for t in self.topics] or ["    none"]
        lines.append("  local state to wipe:")
        lines.append(f"    {self.state}" if self.state is not None else "    none")
        return "\n".join(lines)


@dataclass(frozen=True)
class _ResetTopics:
    """What ``edm reset`` touches of one service. ``inputs``: the declared topics its group
    consumes (sources and table sources; global tables are read without the group).
    ``internal``: the topics the runtime creates beyond the declared streams (repartition
    topics, store changelogs). ``written``: the declared topics its pipelines write."""

    inputs: set[str]
    internal: set[str]
    written: set[str]


def _reset_topics(topology) -> _ResetTopics:
    from edm_runner.runtime.processing import CompiledService
    from edm_runner.runtime.service import topic_specs
    from edm_runner.runtime.stats import ServiceStats
    compiled = CompiledService(topology, ServiceStats())
    declared = {s.topic for s in topology.streams.values()}
    internal = {spec.name for spec in topic_specs(topology, compiled)} - declared
    tables = {topology.streams[t.source].topic for t in topology.tables.values()}
    written = {t for node in compiled.dag.sinks() for t in node.topics} - internal
    return _ResetTopics((set(compiled.dag.source_topics()) | tables) - internal, internal, written)


async def _reset_plan(topology, topics: _ResetTopics, broker, state_dir: Path, since_ms: int | None,
                      again: str, rewritten: set[str]) -> _ResetPlan:
    """``again``: the command line that runs this reset again. ``rewritten``: the topics the
    services being reset write. An input among them is set to its end, not to its beginning
    (or ``since_ms``): the reprocessing writes its records again, and reading the old ones
    too would process every one of them twice (a count downstream would double)."""
    from edm_runner.brokers.base import TopicPartition
    from edm_runner.state.task import service_dir
    group = topology.name
    if await broker.group_alive(group):
        raise EdmError(f"an instance of service {group!r} is running on {broker.describe()}; edm reset "
                       f"stops nothing itself: stop every instance, then run `{again}` again")
    existing = await broker.list_topics()
    committed = await broker.group_offsets(group, sorted(topics.inputs))
    tps = sorted(TopicPartition(t, p) for t in topics.inputs if t in existing for p in range(existing[t]))
    reread = [tp for tp in tps if tp.topic not in rewritten]
    to_end = [tp for tp in tps if tp.topic in rewritten]
    targets = {}
    if reread:
        targets.update(await broker.beginning_offsets(reread) if since_ms is None
                       else await broker.offsets_for_times(reread, since_ms))
    if to_end:
        targets.update(await broker.end_offsets(to_end))
    local = service_dir(state_dir, group)
    return _ResetPlan(group, broker.describe(), {tp: (committed.get(tp), targets[tp]) for tp in tps},
                      rewritten & topics.inputs, sorted(topics.internal & set(existing)),
                      local if local.exists() else None, state_dir)


async def _apply_reset(plan: _ResetPlan, broker) -> None:
    """Offsets first, then topics, then local state; each step is idempotent, so a reset
    interrupted half-way is completed by running it again."""
    from edm_runner.state.offline import wipe
    await broker.set_group_offsets(plan.service, {tp: new for tp, (_, new) in plan.offsets.items()})
    await broker.delete_topics(plan.topics)
    if plan.state is not None:
        wipe(plan.state_dir, plan.service)


@app.command()
def reset(
    file: Path,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan, change nothing.")] = False,
    to_earliest: Annotated[bool, typer.Option(
        "--to-earliest", help="Reprocess every input from its first event (the default).")] = False,
    to_datetime: Annotated[Optional[str], typer.Option(
        "--to-datetime", metavar="T",
        help="Reprocess inputs from the first event at or after T (ISO 8601; UTC without an offset).")] = None,
    service: Annotated[Optional[str], typer.Option(
        "--service", help="Only this microservice of a business topology.")] = None,
    broker: BrokerOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Make a service reprocess its inputs from scratch: reset its group's input offsets, delete
    its internal topics (changelogs, repartitions) and wipe its local state.

    It stops nothing itself: stop every instance of the service first (it refuses while one runs).
    The plan is printed before anything changes."""
    def body() -> int:
        if to_earliest and to_datetime is not None:
            raise _fail("--to-earliest and --to-datetime exclude each other; give one", 2)
        since = _parse_datetime(to_datetime) if to_datetime is not None else None
        topology = _load(file)
        services = _services(topology, service)
        connection = _open_broker(topology, file, broker, state_dir)
        local_state = _state_dir(file, state_dir)
        invocation = _invocation(topology, file, broker=broker, state_dir=state_dir, service=service)
        again = invocation.command("reset", *(["--to-datetime", to_datetime] if to_datetime else []))

        async def go() -> None:
            async with _connected(connection, invocation):
                topics = [_reset_topics(s) for s in services]
                rewritten = {t for each in topics for t in each.written}
                plans = [await _reset_plan(s, t, connection, local_state, since, again, rewritten)
                         for s, t in zip(services, topics)]
                for plan in plans:
                    typer.echo(plan.format())
                if dry_run:
                    typer.echo("dry run: nothing changed")
                    return
                for plan in plans:
                    await _apply_reset(plan, connection)
                    typer.echo(f"reset {plan.service}: done")

        asyncio.run(go())
        return 0
    _run_guarded(body)


class _StateGroup(TyperGroup):
    """`edm state FILE [OPTIONS] COMMAND ...`: the group's options may follow FILE too. Click
    takes the first word after a group's arguments for the command name, so `edm state FILE
    --state-dir D scan S` would look for a command `--state-dir`; the options found before the
    command name are moved in front of FILE."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        takes_value = {name for param in self.params if isinstance(param, TyperOption)
                       and not param.is_flag for name in param.opts}
        options: list[str] = []
        positionals: list[str] = []
        i = 0
        while i < len(args) and len(positionals) < 2:  # FILE, then the command name
            word = args[i]
            if word in takes_value and i + 1 < len(args):
                options += args[i:i + 2]
                i += 2
                continue
            (options if word.startswith("-") and word != "-" else positionals).append(word)
            i += 1
        return super().parse_args(ctx, options + positionals + args[i:])


state_app = typer.Typer(no_args_is_help=True, cls=_StateGroup,
                        help="Read a service's local state stores offline (no broker, no runner needed).")
app.add_typer(state_app, name="state")

ServiceOption = Annotated[Optional[str], typer.Option(
    "--service", help="The microservice of a business topology whose stores to read.")]


@dataclass
class _StateTarget:
    file: Path
    service: Optional[str]
    state_dir: Optional[Path]


@state_app.callback()
def state(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The topology file.")],
    service: ServiceOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """edm state FILE get STORE KEY | scan STORE [--prefix P] | stats  (JSON output)."""
    ctx.obj = _StateTarget(file, service, state_dir)


def _state_call(ctx: typer.Context, state_dir: Path | None, service_name: str | None, store: str | None,
                action: Callable[[object, Invocation], None]) -> None:
    """Opens the service's local state read-only and runs ``action(state, invocation)``; a
    ``store`` must be declared by the topology (or exist in the state: implicit join stores).
    ``state_dir`` and ``service_name`` are the command's options, which win over the group's."""
    target: _StateTarget = ctx.obj
    state_dir = state_dir or target.state_dir
    service_name = service_name or target.service

    def body() -> int:
        from edm_runner.state.offline import open_readonly
        topology = _load(target.file)
        services = _services(topology, service_name)
        if len(services) > 1:
            raise EdmError(f"{target.file} has several microservices "
                           f"({', '.join(s.name for s in services)}); choose one with --service")
        service = services[0]
        invocation = _invocation(topology, target.file, state_dir=state_dir).for_service(service.name)
        with open_readonly(_state_dir(target.file, state_dir), service.name, invocation) as state:
            declared = sorted({*service.stores, *service.tables, *service.global_tables, *state.store_names()})
            if store is not None and store not in declared:
                raise EdmError(f"service {service.name!r} has no store {store!r}; its stores: "
                               f"{', '.join(declared) or 'none'}")
            action(state, invocation)
        return 0
    _run_guarded(body)


def _echo_entries(found) -> None:
    """JSON lines ``{"task", "key", "value"}``, plus ``start`` (windows) / ``end`` (sessions)."""
    for task, entry in found:
        line = {"task": task, "key": entry.key, "value": entry.value}
        if entry.start is not None:
            line["start"] = entry.start
        if entry.end is not None:
            line["end"] = entry.end
        typer.echo(json.dumps(line, ensure_ascii=False))


@state_app.command("get")
def state_get(
    ctx: typer.Context,
    store: str,
    key: str,
    as_json: Annotated[bool, typer.Option("--json", help="KEY is JSON (e.g. 42 or [\"a\",1]), not a string.")] = False,
    state_dir: StateDirOption = None,
    service: ServiceOption = None,
) -> None:
    """Print KEY's entry in STORE (a window or session store prints every window of the key)."""
    def action(state, invocation: Invocation) -> None:
        wanted: object = key
        if as_json:
            try:
                wanted = json.loads(key)
            except json.JSONDecodeError as error:
                raise EdmError(f"--json: KEY {key!r} is not JSON ({error.msg}); quote a string "
                               "key as '\"u-1\"'") from None
        found = state.get(store, wanted)
        if not found:
            raise EdmError(f"no key {wanted!r} in store {store!r} of service {state.service!r}; "
                           f"`{invocation.command('state', 'scan', store)}` lists its keys"
                           + ("" if as_json else " (--json reads KEY as JSON, e.g. a number)"))
        _echo_entries(found)
    _state_call(ctx, state_dir, service, store, action)


@state_app.command("scan")
def state_scan(
    ctx: typer.Context,
    store: str,
    prefix: Annotated[str, typer.Option("--prefix", help="Only keys whose text starts with P.")] = "",
    state_dir: StateDirOption = None,
    service: ServiceOption = None,
) -> None:
    """Print STORE's entries as JSON lines (task, key, value; start/end for windows and sessions)."""
    _state_call(ctx, state_dir, service, store, lambda state, _: _echo_entries(state.scan(store, prefix)))


@state_app.command("stats")
def state_stats(ctx: typer.Context, state_dir: StateDirOption = None, service: ServiceOption = None) -> None:
    """Print per task: its stores' entry counts and the checkpoint (changelog and input offsets)."""
    def action(state, _: Invocation) -> None:
        from edm_runner.state.task import tp_key
        tasks = [{"task": t.task, "path": str(t.path), "size_bytes": t.size_bytes,
                  "checkpoint": {"changelogs": {tp_key(tp): o for tp, o in t.checkpoint.changelogs.items()},
                                 "inputs": {tp_key(tp): o for tp, o in t.checkpoint.inputs.items()}},
                  "stores": [{"store": s.name, "type": s.type, "params": s.params, "entries": s.entries}
                             for s in t.stores]}
                 for t in state.stats()]
        typer.echo(json.dumps({"service": state.service, "path": str(state.root), "tasks": tasks},
                              indent=2, ensure_ascii=False))
    _state_call(ctx, state_dir, service, None, action)
