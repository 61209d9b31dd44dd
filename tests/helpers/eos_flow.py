"""A stateful service whose every output names the input behind it, for the exactly-once tests.

``<name>-events`` (key ``u<k>``, value ``{"n": i}``) is aggregated per key into the store
``totals`` as ``{"count": c, "last": n}`` and each update goes to ``<name>-totals``. So the
output holds one record per processed input (``last`` = that input's ``n``): read committed, it
must hold every input exactly once under exactly-once; and the final store equals
``reference(inputs)``. Runners are real `edm run` subprocesses (``kafka_flow.Runner``).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from helpers.topologies import write_service
from edm_runner.brokers.base import Broker, OutRecord, TopicPartition, TopicSpec
from edm_runner.brokers.kafka import KafkaBroker
from edm_runner.brokers.kafka_eos import read_committed
from edm_runner.records.partitioner import default_partition

PARTITIONS = 4
KEYS = 50
# The minimum session the broker allows: a SIGKILLed member is evicted within seconds.


def write_topology(directory: Path, name: str, kafka_bootstrap: str | None, guarantee: str, *,
                   max_batch: int = 500, commit_interval_ms: int = 100) -> Path:
    processing = f"{{guarantee: {guarantee}, max_batch: {max_batch}, commit_interval_ms: {commit_interval_ms}}}"
    return write_service(directory, name, kafka_bootstrap, f"""\
streams:
  events: {{topic: {name}-events, partitions: {PARTITIONS}, key: string, value: json}}
  totals: {{topic: {name}-totals, partitions: {PARTITIONS}, key: string, value: json}}
stores:
  totals: {{type: key_value}}
pipelines:
  total:
    from: events
    steps:
      - group_by_key: {{}}
      - aggregate: {{store: totals, initializer: "{{'count': 0, 'last': -1}}",
                    aggregator: "{{'count': aggregate.count + 1, 'last': value.n}}"}}
    to: totals
""", processing=processing)


def key_of(n: int) -> str:
    return f"u{(n * 7 + n // 3) % KEYS:02d}"


def reference(total: int) -> dict[str, dict[str, int]]:
    """The store after inputs 0..total-1: per key its count and its last input."""
    counts = Counter(key_of(n) for n in range(total))
    last = {key_of(n): n for n in range(total)}
    return {k: {"count": counts[k], "last": last[k]} for k in counts}


async def produce(broker: Broker, name: str, first: int, count: int) -> None:
    """Writes inputs first..first+count-1 to ``<name>-events`` (created with ``<name>-totals``
    if missing)."""
    topic = f"{name}-events"
    await broker.ensure_topics([TopicSpec(topic, PARTITIONS), TopicSpec(f"{name}-totals", PARTITIONS)])
    producer = broker.producer()
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for n in range(first, first + count):
            key = key_of(n).encode()
            producer.send(OutRecord(topic, default_partition(key, PARTITIONS), key,
                                    json.dumps({"n": n}).encode(), now))
        await producer.flush()
    finally:
        await producer.close()


async def read_outputs(broker: KafkaBroker, name: str, committed: bool = True) -> Counter[int]:
    """Every ``last`` in ``<name>-totals`` up to its end offsets (read committed: the last
    stable offsets), counted."""
    view = read_committed(broker) if committed else broker
    consumer = view.consumer(None, [f"{name}-totals"])
    await consumer.start()
    seen: Counter[int] = Counter()
    try:
        tps = [TopicPartition(f"{name}-totals", p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                for record in records:
                    seen[json.loads(record.value)["last"]] += 1
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.close()
    return seen
