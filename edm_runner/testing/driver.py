"""The in-process test driver: microservices run on an in-memory log through the compiled
operators of `edm run` (``runtime.processing.CompiledService``) and real LMDB stores.

No broker, no consumer group, no subprocess: a record produced to a topic is appended to its
partition and handed to every service reading that topic; what a service writes (outputs,
repartition and group_by topics, dead letters, streams other services read) is appended and
handed on in turn, until nothing is left. Then the next produced record.

Invariants:
- Partitions are chosen as every producer chooses them (``records.partitioner``: murmur2 of the
  key bytes, round robin for null keys), and a service's outputs keep the partition its sinks
  chose; per partition, records are processed in offset order, one at a time.
- A record is processed by the task of its partition (its sub-topology's stores bound to that
  task's ``TaskState``), as ``runtime.tasks.TaskManager.bind`` does; global tables are applied
  to their store as their records are appended.
- ``commit`` writes every touched task's store transaction; a failed record (``ProcessingError``
  under the ``fail`` policy, ``InternalError``) drops the outputs and store updates of that
  record and stops the driver (``failed``), as a service stops.
- The wall clock (what record timestamp bounds are checked against) is ``clock_ms``, moved
  only by ``advance``; event time is the records' timestamps.
"""
from __future__ import annotations

import asyncio

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from edm_runner.brokers.base import TopicPartition
from edm_runner.errors import EdmError, InternalError, ProcessingError
from edm_runner.operators.api import StoreUse
from edm_runner.records import Headers, Record, wall_clock
from edm_runner.records.partitioner import DefaultPartitioner
from edm_runner.runtime.processing import CompiledService
from edm_runner.runtime.stats import ServiceStats
from edm_runner.runtime.tasks import table_converter
from edm_runner.state.task import Checkpoint, TaskState, global_dir, task_dir
from edm_runner.testing.http import MockSession
from edm_runner.language.model import Topology

log = logging.getLogger("edm.testing")


@dataclass
class Written:
    """A record as appended to the log, with its offset."""

    record: Record
    by: str | None  # the service that wrote it (None: produced by the test)


@dataclass(eq=False)
class _Service:
    topology: Topology
    compiled: CompiledService
    stats: ServiceStats
    state_dir: Path
    uses: dict[int, list[StoreUse]]
    sub_of_topic: dict[str, int]
    tasks: dict[tuple[int, int], TaskState] = field(default_factory=dict)
    touched: dict[tuple[int, int], TopicPartition] = field(default_factory=dict)
    globals: TaskState | None = None
    global_converters: dict[str, list[tuple[StoreUse, Callable[[Record], Any]]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.topology.name

    def task(self, sub: int, partition: int) -> TaskState:
        state = self.tasks.get((sub, partition))
        if state is None:
            state = TaskState.open(task_dir(self.state_dir, self.name, sub, partition))
            for use in self.uses[sub]:
                state.register(use.name, use.type, use.params, changelog=use.changelog is not None)
            self.tasks[(sub, partition)] = state
        return state

    def bind(self, tp: TopicPartition) -> None:
        sub = self.sub_of_topic.get(tp.topic)
        if sub is None:
            return
        state = self.task(sub, tp.partition)
        for use in self.uses[sub]:
            use.ref.current = state.store(use.name)
        self.touched[(sub, tp.partition)] = tp


class TestDriver:
    """Runs ``services`` (one microservice, or those of a business topology, sharing streams
    by topic) with their state under ``state_dir``. ``functions``: declared functions replaced
    by name (mocks), for the services that declare them; ``apis``: external APIs (a resource or
    a pipeline name: the ``call`` steps that name it) answered by a function of the request."""

    __test__ = False  # not a pytest class

    def __init__(self, services: list[Topology], state_dir: Path, *, clock_ms: int,
                 functions: Mapping[str, Callable[..., Any]] | None = None,
                 apis: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None) -> None:
        self.state_dir = state_dir
        self.clock_ms = clock_ms
        self.partitions: dict[str, int] = {}
        self.partitioners: dict[str, DefaultPartitioner] = {}
        self.logs: dict[TopicPartition, list[Record]] = {}
        self.written: list[Written] = []
        self.failed: EdmError | InternalError | None = None
        self._queue: deque[tuple[_Service, Record]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # for pipelines that await (created on first use)
        self.services: list[_Service] = []
        for topology in services:
            for spec in topology.streams.values():
                self.partitions.setdefault(spec.topic, spec.partitions)
            stats = ServiceStats()
            mine = {n: f for n, f in (functions or {}).items() if n in topology.functions}
            compiled = CompiledService(topology, stats, mine)
            calls = compiled.shared.get("call")  # the call steps' scope (operators.calls.step.CallScope)
            if calls is not None:
                calls.mocks.update({name: MockSession(answer) for name, answer in (apis or {}).items()})
            for topic, internal in compiled.dag.internal_topics.items():
                self.partitions.setdefault(topic, internal.partitions)
            uses: dict[int, list[StoreUse]] = {}
            for use in compiled.catalog.uses.values():
                if use.subtopology is not None:
                    uses.setdefault(use.subtopology, []).append(use)
            sub_of_topic = {t: sub.id for sub in compiled.dag.subtopologies if sub.id in uses
                            for t in sub.source_topics}
            service = _Service(topology, compiled, stats, state_dir, uses, sub_of_topic)
            self._open_globals(service)
            self.services.append(service)

    def _open_globals(self, service: _Service) -> None:
        uses = service.compiled.catalog.global_tables()
        if not uses:
            return
        state = service.globals = TaskState.open(global_dir(self.state_dir, service.name))
        for use in uses:
            state.register(use.name, "key_value", {}, changelog=False)
            use.ref.current = state.store(use.name)
            spec = service.topology.global_tables[use.name]
            handler = service.compiled.error_handler(f"global_tables.{use.name}", spec.source,
                                                     service.compiled.outputs)

            def on_error(r: Record, exc: Any, handler: Any = handler, name: str = use.name,
                         pos: Any = spec.pos) -> None:
                handler.handle(r, f"global table {name} (decode)", pos, exc)

            convert = table_converter(use.name, service.compiled.table_serdes[use.name], state.max_key_size,
                                      on_error)
            service.global_converters.setdefault(use.source, []).append((use, convert))

    # -- the log ----------------------------------------------------------------------------

    def partition_of(self, topic: str, key: bytes | None) -> int:
        partitioner = self.partitioners.get(topic)
        if partitioner is None:
            partitioner = self.partitioners[topic] = DefaultPartitioner(self.partitions[topic])
        return partitioner(None, key, None)

    def append(self, topic: str, partition: int | None, key: bytes | None, value: bytes | None,
               timestamp_ms: int, headers: Headers = (), by: str | None = None) -> Record:
        """Appends a record (partition None: the key's) and hands it to its readers; ``run``
        processes them."""
        if partition is None:
            partition = self.partition_of(topic, key)
        tp = TopicPartition(topic, partition)
        log_ = self.logs.setdefault(tp, [])
        record = Record(topic, partition, len(log_), key, value, timestamp_ms, headers)
        log_.append(record)
        self.written.append(Written(record, by))
        for service in self.services:
            for use, convert in service.global_converters.get(topic, ()):
                entry = convert(record)
                if entry is not None:
                    service.globals.apply_changelog(use.name, [entry], inputs_at_least={tp: record.offset + 1})
            if topic in service.compiled.sources:
                self._queue.append((service, record))
        return record

    def produce(self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int,
                headers: Headers = (), partition: int | None = None) -> Record:
        """Appends a record to ``topic`` and processes it and everything it causes."""
        record = self.append(topic, partition, key, value, timestamp_ms, headers)
        self.run()
        return record

    def advance(self, ms: int) -> None:
        self.clock_ms += ms

    def run(self) -> None:
        """Processes what was appended, and what that writes, until nothing is left (or a
        record fails: then ``failed`` is set and nothing more is processed)."""
        with wall_clock(lambda: self.clock_ms):
            while self._queue and self.failed is None:
                service, record = self._queue.popleft()
                self._process(service, record)
            self._flush_global_dead_letters()

    def _process(self, service: _Service, record: Record) -> None:
        compiled = service.compiled
        tp = TopicPartition(record.topic, record.partition)
        service.bind(tp)
        try:
            if record.topic in compiled.driven_topics:  # a pipeline awaits per event (a call step, async def)
                if self._loop is None:
                    self._loop = asyncio.new_event_loop()
                # A step that paused (a call's breaker open) gave the event up: wait, then again.
                while (paused := self._loop.run_until_complete(compiled.process_async([record]))) is not None:
                    self._loop.run_until_complete(paused.pause.until())
            else:
                compiled.process([record])
        except (ProcessingError, InternalError) as error:
            compiled.outputs.clear()
            for state in service.tasks.values():
                state.abort()
            service.touched.clear()
            self.failed = error
            self._queue.clear()
            return
        outputs = compiled.outputs[:]
        compiled.outputs.clear()
        service.stats.events_in += 1
        for out in outputs:
            self.append(out.topic, out.partition, out.key, out.value, out.timestamp_ms, out.headers, service.name)

    def _flush_global_dead_letters(self) -> None:
        for service in self.services:
            if service.globals is not None and service.compiled.outputs:
                outputs = service.compiled.outputs[:]
                service.compiled.outputs.clear()
                for out in outputs:
                    self.append(out.topic, out.partition, out.key, out.value, out.timestamp_ms, out.headers,
                                service.name)

    # -- state ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Writes every touched task's store updates (one LMDB transaction per task)."""
        for service in self.services:
            for key, tp in service.touched.items():
                state = service.tasks[key]
                state.prepare()
                state.commit(Checkpoint({}, {tp: len(self.logs.get(tp, ()))}))
            service.touched.clear()

    def close(self) -> None:
        """Commits and closes every task (the state can then be read with ``state.offline``);
        the driver reopens a task when it processes a record of it again."""
        if self.failed is None:
            self.commit()
        for service in self.services:
            for state in service.tasks.values():
                state.close()
            service.tasks.clear()
            if service.globals is not None:
                service.globals.close()
                service.globals = None
        if self._loop is not None:
            for service in self.services:
                self._loop.run_until_complete(service.compiled.aclose())
            self._loop.close()
            self._loop = None

    def reopen(self) -> None:
        """After ``close``: the global tables open again (tasks open as records reach them)."""
        for service in self.services:
            if service.globals is None:
                service.global_converters.clear()
                self._open_globals(service)
