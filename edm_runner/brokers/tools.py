"""What the command-line tools do on a broker outside any service: write records to a topic
(`edm produce`), read a topic (`edm consume`), count a broker's events (`edm topics`). The
broker is started by the caller; these functions print nothing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from edm_runner.brokers.base import Broker, OutRecord, Record, TopicPartition, TopicSpec
from edm_runner.records.partitioner import default_partition
from edm_runner.errors import EdmError

if TYPE_CHECKING:
    from edm_runner.serde.lines import Line

__all__ = ["produce_lines", "read_topic", "topic_sizes"]


async def produce_lines(broker: Broker, spec: TopicSpec, lines: Sequence[Line]) -> None:
    """Creates the topic if it is missing and writes ``lines`` in order, durably: a keyed line
    to its key's partition (murmur2, as the Java client), a line without a key round-robin."""
    await broker.ensure_topics([spec])
    producer = broker.producer()
    await producer.start()
    try:
        for index, line in enumerate(lines):
            partition = (default_partition(line.key, spec.partitions) if line.key is not None
                         else index % spec.partitions)
            producer.send(OutRecord(spec.name, partition, line.key, line.value, line.timestamp, line.headers))
        await producer.flush()
    finally:
        await producer.close()


async def read_topic(broker: Broker, topic: str, emit: Callable[[Record], None], *, from_beginning: bool,
                     stop_at_end: bool, limit: int | None) -> None:
    """Calls ``emit`` with each record of ``topic``, partition by partition within a fetch, from
    its beginning or its end; returns after ``limit`` records, or at the end offsets of the
    start with ``stop_at_end``, else only when cancelled. A missing topic is an ``EdmError``
    that lists the existing ones."""
    topics = await broker.list_topics()
    if topic not in topics:
        raise EdmError(f"topic {topic!r} does not exist on {broker.describe()}; "
                       f"existing topics: {', '.join(sorted(topics)) or 'none'}")
    consumer = broker.consumer(None, [topic], from_beginning=from_beginning)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(sorted(consumer.assignment())) if stop_at_end else {}
        emitted = 0
        while limit is None or emitted < limit:
            if stop_at_end and all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                return
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for tp in sorted(batches):
                for record in batches[tp]:
                    emit(record)
                    emitted += 1
                    if limit is not None and emitted >= limit:
                        return
    finally:
        await consumer.close()


async def topic_sizes(broker: Broker) -> list[tuple[str, int, int]]:
    """(topic, partitions, sum of its partitions' end offsets) of every topic, by name."""
    found = await broker.list_topics()
    if not found:
        return []
    consumer = broker.consumer(None, sorted(found))
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(t, p) for t, n in found.items() for p in range(n)])
    finally:
        await consumer.close()
    return [(t, n, sum(ends[TopicPartition(t, p)] for p in range(n))) for t, n in sorted(found.items())]
