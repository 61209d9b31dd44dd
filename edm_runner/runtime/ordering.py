"""Timestamp order across the input partitions of a task.

A task whose sub-topology reads several topics (a stream joined with a table, a merge of two
streams) sees partition N of each of them. Fetches return them in no useful order, so a
stream event could be joined before the table update that precedes it in time, and the result
would depend on fetch timing (and differ between brokers). As in Kafka Streams, the task
processes its buffered records in timestamp order across those partitions (ties: topic name,
then partition), and stops when a partition it would need next has no buffered record but has
records on the broker not yet fetched: it waits for the fetch that brings them (as Kafka
Streams does with max.task.idle.ms=0), and only after ``MAX_TASK_IDLE_MS`` (a stuck fetch)
goes on without them, with a warning. It never waits for records not yet written.

Invariants:
- Per partition, records leave in offset order; nothing is dropped or duplicated.
- Sub-topologies that read one topic pass straight through (no buffering, no extra I/O).
- ``pending()`` is true while any record is buffered: a service is not idle before that.
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from typing import Iterable

from edm_runner.brokers.base import Consumer, Record, TopicPartition
from edm_runner.graph.dag import Dag

MAX_TASK_IDLE_MS = 30_000

log = logging.getLogger("edm.runtime")

Run = tuple[TopicPartition, list[Record]]


class InputOrder:
    """Buffers the records of multi-topic tasks and releases them in timestamp order."""

    def __init__(self, dag: Dag) -> None:
        self._siblings: dict[str, list[str]] = {}  # topic -> the source topics of its sub-topology
        for sub in dag.subtopologies:
            if len(sub.source_topics) > 1:
                for topic in sub.source_topics:
                    self._siblings[topic] = sorted(sub.source_topics)
        self._buffers: dict[TopicPartition, deque[Record]] = {}
        self._waiting_since: dict[tuple[str, ...], float] = {}

    @property
    def needed(self) -> bool:
        """False when no task reads several topics: then this class does nothing."""
        return bool(self._siblings)

    def pending(self) -> bool:
        return any(self._buffers.values())

    def release(self, tp: TopicPartition) -> dict[TopicPartition, int | None]:
        """The input partitions of ``tp``'s task, each with the offset of its first buffered
        record (None: nothing buffered); their buffers are dropped (the caller seeks them)."""
        if tp.topic not in self._siblings:
            return {tp: None}
        heads: dict[TopicPartition, int | None] = {}
        for member in self._group(tp):
            buffer = self._buffers.pop(member, None)
            heads[member] = buffer[0].offset if buffer else None
        return heads

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget buffered records of partitions that are sought again (restore, revocation)."""
        for tp in tps:
            self._buffers.pop(tp, None)

    async def runs(self, fetched: dict[TopicPartition, list[Record]], consumer: Consumer) -> list[Run]:
        """What to process now, as runs of consecutive records of one partition."""
        out: list[Run] = []
        for tp, records in fetched.items():
            if tp.topic in self._siblings:
                self._buffers.setdefault(tp, deque()).extend(records)
            else:
                out.append((tp, records))
        groups = {self._group(tp) for tp, buffer in self._buffers.items() if buffer}
        if not groups:
            return out
        members = [tp for group in groups for tp in group]
        ends = await consumer.end_offsets(members)
        behind = {tp for tp in members if await consumer.position(tp) < ends[tp]}
        for group in sorted(groups):
            out.extend(self._drain(group, behind))
        return out

    def _group(self, tp: TopicPartition) -> tuple[TopicPartition, ...]:
        return tuple(TopicPartition(topic, tp.partition) for topic in self._siblings[tp.topic])

    def _drain(self, group: tuple[TopicPartition, ...], behind: set[TopicPartition]) -> list[Run]:
        """``behind``: partitions with records on the broker that were not fetched yet."""
        key = tuple(f"{tp.topic}:{tp.partition}" for tp in group)
        if any(tp in behind and not self._buffers.get(tp) for tp in group):
            since = self._waiting_since.setdefault(key, time.monotonic())
            if (time.monotonic() - since) * 1000 < MAX_TASK_IDLE_MS:
                return []  # wait for the next fetch to bring the lagging partition
            log.warning("partitions %s have unfetched records but none arrived for %d ms; processing "
                        "the task's other inputs without waiting for them (timestamp order may break)",
                        ", ".join(key), MAX_TASK_IDLE_MS)
            behind = set()
        self._waiting_since.pop(key, None)
        heads = [(b[0].timestamp_ms, tp.topic, tp.partition, tp) for tp in group if (b := self._buffers.get(tp))]
        heapq.heapify(heads)
        runs: list[Run] = []
        while heads:
            _, _, _, tp = heapq.heappop(heads)
            buffer = self._buffers[tp]
            record = buffer.popleft()
            if runs and runs[-1][0] == tp:
                runs[-1][1].append(record)
            else:
                runs.append((tp, [record]))
            if buffer:
                heapq.heappush(heads, (buffer[0].timestamp_ms, tp.topic, tp.partition, tp))
            elif tp in behind:
                break  # its unfetched records may hold the next timestamp
        return runs
