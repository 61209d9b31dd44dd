"""`edm produce`, `edm consume`, `edm state scan` and `edm run` as Unix tools, through real
subprocesses on both brokers: consume | produce copies the bytes, bad input lines are
`file:line:col` errors, a closed pipe ends a command quietly, and SIGINT exits 130 after a
clean stop (SIGTERM, the orchestrator's stop, exits 0)."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cli_helpers import ROOT, edm, ok
from edm_runner.brokers.base import Broker, OutRecord, TopicPartition, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.local import LocalBroker
from helpers.kafka_flow import Feeder, OutputReader, Runner, topics, write_topology
from helpers.brokers import run_on, started

BROKERS = [pytest.param(False, id="local"), pytest.param(True, id="kafka", marks=pytest.mark.kafka)]


class Target:
    """A unique name and a broker (its `--broker` URL and an API client) for one test."""

    def __init__(self, on_kafka: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.name = f"cli-{uuid.uuid4().hex[:8]}"
        self.bootstrap = request.getfixturevalue("kafka_bootstrap") if on_kafka else None
        self.dir = tmp_path
        self.url = f"kafka://{self.bootstrap}" if self.bootstrap else f"local:{tmp_path / 'broker'}"

    def client(self) -> Broker:
        if self.bootstrap is not None:
            return KafkaBroker({"bootstrap_servers": self.bootstrap})
        return LocalBroker(self.dir / "broker")

    def run(self, action):
        return run_on(self.client(), action)


async def _write(broker: Broker, topic: str, records: list[tuple]) -> None:
    await broker.ensure_topics([TopicSpec(topic, 1)])
    async with started(broker.producer()) as producer:
        for key, value, headers, timestamp in records:
            producer.send(OutRecord(topic, 0, key, value, timestamp, headers))
        await producer.flush()


async def _read(broker: Broker, topic: str) -> list[tuple]:
    async with started(broker.consumer(None, [topic])) as consumer:
        tp = TopicPartition(topic, 0)
        end = (await consumer.end_offsets([tp]))[tp]
        found = []
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=1000)).values():
                found += [(r.key, r.value, tuple(r.headers or ()), r.timestamp_ms) for r in records]
        return found


# Bytes each format cannot decode, or decodes to what it cannot encode again, or to the very
# shape that means raw bytes; and plain ones.
RECORDS = {
    ("string", "json"): [
        (b"a", b'{"x":1,"y":[true,null,"\xc3\xa9"]}', (("trace", b"t-1"),), 1_000),
        (b"b", b"not json", (("bin", b"\xff\x00"), ("text", b"ok")), 1_001),
        (b"\xff\xfe", b"\xfe\xff", (), 1_002),
        (None, b'{"base64":"eA=="}', (), 1_003),
        (b"c", b'"\\ud800"', (), 1_004),
        (b"d", None, (), 1_005),
    ],
    ("bytes", "bytes"): [
        (b"text", b"plain text", (), 2_000),
        (b"\x00\xff", b"\x80\x81", (("h", b"\xc3"),), 2_001),
        (b"k", b'{"base64":"eA=="}', (), 2_002),
    ],
}


@pytest.mark.parametrize("formats", list(RECORDS), ids=lambda f: "-".join(f))
@pytest.mark.parametrize("on_kafka", BROKERS)
def test_consume_piped_into_produce_writes_the_same_bytes(
        formats: tuple[str, str], on_kafka: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = Target(on_kafka, tmp_path, request)
    key, value = formats
    topology = tmp_path / "topology.yaml"
    topology.write_text(f"""\
kind: microservice
name: {target.name}
streams:
  source: {{topic: {target.name}-source, partitions: 1, key: {key}, value: {value}}}
  copy: {{topic: {target.name}-copy, partitions: 1, key: {key}, value: {value}}}
pipelines:
  p: {{from: source, to: copy}}
""")
    records = RECORDS[formats]
    target.run(lambda b: _write(b, f"{target.name}-source", records))
    common = ["-t", topology, "--broker", target.url]
    printed = ok("consume", "source", "--from-beginning", *common)
    lines = printed.lines()
    assert len(lines) == len(records)
    if formats == ("string", "json"):
        assert lines[0]["value"] == {"x": 1, "y": [True, None, "é"]}
        assert lines[1]["value"] == {"base64": "bm90IGpzb24="}
        assert lines[1]["headers"] == {"bin": {"base64": "/wA="}, "text": "ok"}
    ok("produce", "copy", *common, stdin=printed.stdout)
    assert target.run(lambda b: _read(b, f"{target.name}-copy")) == records


@pytest.mark.parametrize("line, error", [
    ('{"value": "\\ud800"}', "<stdin>:2:1: cannot encode '\\ud800' as JSON"),
    ('{"key": "\\ud800", "value": 1}', "<stdin>:2:1: cannot encode '\\ud800' as a UTF-8 string"),
    ('{"value": 1, "headers": {"h": "\\udc00"}}', "<stdin>:2:1: the string holds '\\udc00' at position 0"),
    ('{"value": 1, "timestamp": "yesterday"}',
     '<stdin>:2:1: "timestamp" must be milliseconds since the epoch (an integer), not "yesterday"'),
    ('{"value": 1, "timestamp": 1.5}', "<stdin>:2:1: \"timestamp\" must be milliseconds"),
    ('{"value": 1, "timestamp": 99999999999999999999}',
     '<stdin>:2:1: "timestamp" must be milliseconds since the epoch (an integer), not 99999999999999999999'),
    ('{"value": {"base64": "not base64!"}}', "<stdin>:2:1: invalid base64"),
    ('{"value": 1, "headers": [1]}', '<stdin>:2:1: "headers" must be an object'),
])
def test_a_bad_produce_line_is_a_file_line_error(tmp_path: Path, line: str, error: str) -> None:
    result = edm("produce", "events", "--state-dir", tmp_path, stdin='{"value": 1}\n' + line + "\n")
    assert result.code == 1, result.stderr
    assert result.stderr.startswith(f"edm: {error}"), result.stderr
    assert "internal error" not in result.stderr


def test_a_produce_line_that_is_not_utf8_is_a_file_line_error(tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b'{"value": 1}\n{"value": "caf\xe9"}\n')
    result = edm("produce", "events", "-f", lines, "--state-dir", tmp_path)
    assert result.code == 1
    assert result.stderr.startswith(f"edm: {lines}:2:15: not UTF-8 text"), result.stderr


def _head(args: list, lines: int) -> tuple[int, list[str], str]:
    """``edm ARGS | head -LINES``: the exit status of edm, the lines read, its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "edm_runner", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    read = [proc.stdout.readline().decode() for _ in range(lines)]
    proc.stdout.close()  # the reader goes away, as head does
    stderr = proc.stderr.read().decode()
    return proc.wait(60), read, stderr


@pytest.mark.parametrize("on_kafka", BROKERS)
def test_consume_and_state_scan_stop_quietly_when_the_reader_goes_away(
        on_kafka: bool, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = Target(on_kafka, tmp_path, request)
    topology = tmp_path / "counts.yaml"
    topology.write_text(f"""\
kind: microservice
name: {target.name}
streams:
  user-events: {{topic: {target.name}-events, partitions: 2, key: string, value: json}}
  user-counts: {{topic: {target.name}-counts, partitions: 2, type: entity, key: string, value: json}}
stores:
  counts: {{type: key_value}}
pipelines:
  count-per-user:
    from: user-events
    steps:
      - group_by_key: {{}}
      - count: {{store: counts}}
    to: user-counts
""")
    # Far more output than a pipe buffers (64 KiB), so edm writes after the reader left.
    events = "".join(json.dumps({"key": f"user-{n}", "value": {"n": n, "pad": "x" * 40}}) + "\n"
                     for n in range(3000))
    common = ["-t", topology, "--broker", target.url]
    ok("produce", "user-events", *common, stdin=events)

    code, read, stderr = _head(["consume", "user-events", "--from-beginning", *common], 2)
    assert [json.loads(line)["value"]["pad"] for line in read] == ["x" * 40] * 2
    assert (code, stderr) == (128 + signal.SIGPIPE, "")

    ok("run", topology, "--until-idle", "--broker", target.url, "--state-dir", tmp_path / "state")
    code, read, stderr = _head(["state", topology, "scan", "counts", "--state-dir", tmp_path / "state"], 1)
    assert json.loads(read[0])["value"] == 1
    assert (code, stderr) == (128 + signal.SIGPIPE, "")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("on_kafka", BROKERS)
def test_run_stops_cleanly_on_a_signal_and_exits_as_unix_tools_do(
        on_kafka: bool, sig: signal.Signals, code: int, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    target = Target(on_kafka, tmp_path, request)
    topology = write_topology(tmp_path, target.name, target.bootstrap)
    total = 200
    runner: Runner | None = None

    async def scenario() -> int:
        nonlocal runner
        broker = target.client()
        await broker.start()
        await broker.ensure_topics(topics(target.name))
        runner = Runner(topology, "--state-dir", str(tmp_path / "state"))
        reader = OutputReader(broker, target.name)
        reading = asyncio.create_task(reader.run())
        try:
            await Feeder(broker, target.name, total, per_tick=total).run()
            await reader.wait_for(total, 120, "before the signal", runner)
            runner.proc.send_signal(sig)
            return await asyncio.to_thread(runner.proc.wait, 60)
        finally:
            if runner.alive():
                runner.kill()
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await broker.close()

    exit_code = asyncio.run(scenario())
    assert exit_code == code, runner.stderr()
    assert f"{target.name}: {total} in, {total} out" in runner.stderr()  # the clean stop's summary
    assert "Traceback" not in runner.stderr() and "internal error" not in runner.stderr()
    # Everything consumed was committed: a new run has nothing to do.
    again = ok("run", topology, "--until-idle", "--state-dir", tmp_path / "state")
    assert f"{target.name}: 0 in, 0 out" in again.stderr, again.stderr
