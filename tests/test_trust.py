"""Issue 8, "silent wrong results": each test runs a real service (LocalBroker, LMDB state,
run_services) into a case that used to go wrong without a word."""
from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edm_runner.brokers.base import OutRecord, Record, TopicPartition, TopicSpec
from edm_runner.brokers.local import LocalBroker
from edm_runner.runtime import RunStats, run_services
from edm_runner.spec import load_file


def j(obj: Any) -> bytes | None:
    return None if obj is None else json.dumps(obj, separators=(",", ":")).encode()


class Service:
    """One service file over a local broker and a state dir kept across ``run`` calls."""

    def __init__(self, tmp_path: Path, text: str, files: dict[str, str] | None = None) -> None:
        for name, content in (files or {}).items():
            (tmp_path / name).write_text(textwrap.dedent(content))
        self.path = tmp_path / "topology.yaml"
        self.path.write_text(textwrap.dedent(text))
        self.broker_dir = tmp_path / "broker"
        self.state_dir = tmp_path / "state"
        self.stats: RunStats | None = None

    def run(self, inputs: dict[str, list[tuple[Any, Any]]], read: str = "out") -> list[tuple[Any, Any]]:
        """Appends ``inputs`` (raw bytes or JSON-able values), runs until idle, returns every
        (key, value) of topic ``read`` so far."""
        async def main() -> list[tuple[Any, Any]]:
            broker = LocalBroker(self.broker_dir)
            await broker.start()
            try:
                for topic, events in inputs.items():
                    partitions = {s.topic: s.partitions for s in load_file(self.path).streams.values()}
                    await broker.ensure_topics([TopicSpec(topic, partitions.get(topic, 1))])
                    producer = broker.producer()
                    for k, v in events:
                        producer.send(OutRecord(topic, 0, k if isinstance(k, bytes) or k is None else k.encode(),
                                                v if isinstance(v, bytes) else j(v), 0, ()))
                    await producer.flush()
                self.stats = await run_services([load_file(self.path)], broker, until_idle=True,
                                                state_dir=self.state_dir)
                return [(None if r.key is None else r.key.decode(), json.loads(r.value) if r.value else None)
                        for r in await read_all(broker, read)]
            finally:
                await broker.close()
        return asyncio.run(main())

    @property
    def service(self) -> Any:
        assert self.stats is not None
        return next(iter(self.stats.services.values()))


async def read_all(broker: LocalBroker, topic: str) -> list[Record]:
    await broker.ensure_topics([TopicSpec(topic, 1)])
    consumer = broker.consumer(None, [topic])
    await consumer.start()
    out: dict[TopicPartition, list[Record]] = {}
    while batch := await consumer.getmany(timeout_ms=0, max_records=10_000):
        for tp, records in batch.items():
            out.setdefault(tp, []).extend(records)
    await consumer.close()
    return [r for tp in sorted(out) for r in out[tp]]


# -- a null value and the JSON Schema --------------------------------------------------------

SCHEMA = '{"type": "object", "required": ["total"]}'


def test_a_null_value_is_checked_against_the_schema_except_on_entity_streams(tmp_path: Path) -> None:
    svc = Service(tmp_path, """
    kind: microservice
    name: s
    streams:
      orders: {value: {format: json, schema: order.json}, on_error: skip}
      users: {type: entity, value: {format: json, schema: order.json}}
      out: {}
    tables: {users-table: {from: users}}
    pipelines:
      p: {from: orders, steps: [{map_values: "value.total"}], to: out}
      u: {from: users-table, steps: [{map_values: "value.total if value else -1"}], to: out}
    """, {"order.json": SCHEMA})
    out = svc.run({"orders": [("a", {"total": 1}), ("b", None), ("c", b"null"), ("d", {"total": 2})],
                   "users": [("u", {"total": 5}), ("u", None)]})
    assert sorted(out) == [("a", 1), ("d", 2), ("u", -1), ("u", 5)]
    assert svc.stats.skipped == 2


# -- one JSON codec ---------------------------------------------------------------------------

def test_an_aggregate_that_makes_nan_is_an_error_of_the_event_not_a_changelog_record(tmp_path: Path) -> None:
    svc = Service(tmp_path, """
    kind: microservice
    name: s
    streams: {in: {}, out: {}}
    stores: {sums: {type: key_value}}
    pipelines:
      p:
        from: in
        on_error: skip
        steps:
          - group_by_key: {}
          - aggregate: {store: sums, initializer: "0", aggregator: "'nan' | float if value.bad else aggregate + value.x"}
        to: out
    """)
    out = svc.run({"in": [("a", {"x": 1}), ("a", {"bad": True}), ("a", {"x": 2})]})
    assert out == [("a", 1), ("a", 3)]
    assert svc.stats.skipped == 1
    changelog = asyncio.run(_changelog(svc, "s-sums-changelog"))
    assert b"NaN" not in b"".join(v or b"" for _, v in changelog)


async def _changelog(svc: Service, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    broker = LocalBroker(svc.broker_dir)
    await broker.start()
    try:
        return [(r.key, r.value) for r in await read_all(broker, topic)]
    finally:
        await broker.close()
