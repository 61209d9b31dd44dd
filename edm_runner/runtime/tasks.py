"""Tasks: the stores of a sub-topology bound to one partition, restored before processing,
committed with their changelogs and checkpoints.

Invariants (see docs/design/stateful.md):
- Task ``(sub, N)`` exists only for stateful sub-topologies (with stores or tables) and owns
  partition N of their source topics and of their stores' changelogs.
- A task processes nothing before every store of it is restored; then its input partitions
  are seeked to max(group committed offset, the inputs its restored state reflects), so an
  update already in the state is never applied twice. A task with a store without changelog
  (not a table) rebuilds it from its inputs: they are seeked to the checkpointed inputs.
- The changelog records of a commit are the tasks' dirty keys (latest value each), on the
  task's partition; the last one a task writes carries ``edm.input`` (its input offsets).
  ``commit`` writes the stores and the checkpoint only after those records are durable.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from edm_runner.brokers.base import Broker, Consumer, OutRecord, Producer, Record, TopicPartition
from edm_runner.errors import EventError
from edm_runner.invocation import Invocation
from edm_runner.operators.api import StoreUse
from edm_runner.operators.table import null_table_key
from edm_runner.runtime.processing import CompiledService, ErrorHandler
from edm_runner.runtime.stats import ServiceStats, StoreRestore
from edm_runner.serde import Serde
from edm_runner.language.model import Pos
from edm_runner.state.api import encode_json
from edm_runner.state.clean_mark import claim_task_state, release_task_state
from edm_runner.state.progress import RestoreProgress
from edm_runner.state.restore import INPUT_HEADER, check_changelog, input_position, restore_task, store_headers
from edm_runner.state.stores import key_too_long
from edm_runner.state.task import Checkpoint, TaskState, fingerprint, global_dir, task_dir, tp_key

log = logging.getLogger("edm.runtime")

# Tasks restored at once by ``TaskManager.assign``: two overlap one reader's fetch with the
# other's decoding and LMDB write; more only add CPU contention (measured with bench
# kafka-restore on 2 cores: 1 -> 0.70, 2 -> 0.74-0.80, 4 -> 0.65-0.73) and memory.
RESTORE_CONCURRENCY = 2

# One store's restore: (store, topic partition, from offset, end offset).
_Step = tuple[StoreUse, TopicPartition, int, int]


@dataclass(eq=False)
class Task:
    """``inputs``: next offsets of the input partitions processed since the last commit."""

    sub: int
    partition: int
    state: TaskState
    uses: list[StoreUse]
    inputs: dict[TopicPartition, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.sub}_{self.partition}"


def table_converter(name: str, serdes: tuple[Serde, Serde], max_key: int,
                    on_error: Callable[[Record, EventError], None]
                    ) -> Callable[[Record], tuple[bytes, bytes | None] | None]:
    """Source record -> the table store's (key bytes, value bytes or None), or None for a
    record that never enters the table (``on_error`` is told): a key or value that does not
    decode, a null key, or a key too long for the store; the same records ``operators.table.TableMaterializer``
    refuses when it processes them."""
    decode_key, decode_value = serdes[0].decode, serdes[1].decode

    def convert(r: Record) -> tuple[bytes, bytes | None] | None:
        try:
            key = decode_key(r.key)
            value = decode_value(r.value)
            if key is None:
                raise null_table_key(name)
            kb = encode_json(key)
            if len(kb) > max_key:
                raise key_too_long(name, kb, max_key)
            return kb, None if value is None else encode_json(value)
        except EventError as exc:
            on_error(r, exc)
            return None

    return convert


def _handle_record(handler: ErrorHandler, step: str, pos: Pos, r: Record, exc: EventError) -> None:
    handler.handle(r, step, pos, exc)


def _handled_when_processed(r: Record, exc: EventError) -> None:
    """A table restores from its source topic only up to the group's committed offset: a
    record that failed there went through the stream's ``on_error`` (and was counted) when
    the task processed it."""


def changelog_partitions(compiled: CompiledService) -> dict[str, int]:
    """Changelog topic -> partition count (the task count of its store's sub-topology)."""
    tasks = {sub.id: sub.tasks for sub in compiled.dag.subtopologies}
    return {u.changelog: tasks[u.subtopology] for u in compiled.catalog.uses.values()
            if u.changelog is not None and u.subtopology is not None}


async def end_offsets(broker: Broker, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets of partitions, through a group-less reader of just those partitions (the
    group consumer would first wait for a metadata refresh of topics it does not read)."""
    if not tps:
        return {}
    reader = broker.consumer(None, sorted({tp.topic for tp in tps}), partitions=tps)
    await reader.start()
    try:
        return await reader.end_offsets(tps)
    finally:
        await reader.close()


class _StoreProgress:
    """The progress of one store's restore: advances the shared ``RestoreProgress`` (the bar or
    log lines) and the store's own figures (``ServiceStats.restores``, for the metrics)."""

    def __init__(self, shared: RestoreProgress | None, own: StoreRestore) -> None:
        self.shared = shared
        self.own = own

    def advance(self, n: int) -> None:
        self.own.done += n
        if self.shared is not None:
            self.shared.advance(n)


async def _restore_store(state: TaskState, use: StoreUse, consumer: Consumer, tp: TopicPartition, end: int,
                         from_offset: int, progress: RestoreProgress | None, label: str,
                         stats: ServiceStats, convert: Any = None, before_apply: Any = None) -> None:
    own = StoreRestore(max(0, end - from_offset) if from_offset <= end else end)
    stats.restores[(use.name, label.removeprefix("task "))] = own
    try:
        result = await restore_task(state, use.name, consumer, tp, end, from_offset=from_offset,
                                    progress=_StoreProgress(progress, own),  # type: ignore[arg-type]
                                    convert=convert, source=convert is not None, before_apply=before_apply)
    finally:
        own.finished = time.monotonic()
    stats.restored += result.records_read
    stats.restored_by_store[use.name] = stats.restored_by_store.get(use.name, 0) + result.records_read
    log.info("restored %s %s: %d records from offset %d to %d", use.name, label, result.records_read,
             from_offset if from_offset <= end else 0, end)


class TaskManager:
    """The tasks of one service on this instance, created for the partitions assigned to it."""

    def __init__(self, compiled: CompiledService, state_dir: Path, stats: ServiceStats,
                 invocation: Invocation | None = None) -> None:
        self.compiled = compiled
        self.topology = compiled.topology
        self.service = self.topology.name
        self.state_dir = state_dir
        self.invocation = (invocation or Invocation(str(self.topology.source_file))).for_service(self.service)
        self.stats = stats
        self.uses: dict[int, list[StoreUse]] = {}
        for use in compiled.catalog.uses.values():
            if use.subtopology is not None:
                self.uses.setdefault(use.subtopology, []).append(use)
        self.subs = {sub.id: sub for sub in compiled.dag.subtopologies if sub.id in self.uses}
        self.sub_of_topic = {t: sub.id for sub in self.subs.values() for t in sub.source_topics}
        self.tasks: dict[tuple[int, int], Task] = {}
        # Opened and being restored by ``assign`` (not in ``tasks`` yet): stale reads may see them.
        self.restoring: dict[tuple[int, int], Task] = {}
        self.exactly_once = self.topology.processing.guarantee == "exactly_once"
        self.touched: dict[tuple[int, int], Task] = {}
        # Per task not open here: the sum of its checkpointed changelog offsets on disk, as the
        # assignor reports it (see ``assignment.consumer.group_consumer``).
        self.on_disk: dict[tuple[int, int], int] = {}
        self.headers = {u.name: store_headers({"type": u.type, "params": u.params,
                                               "fingerprint": fingerprint(u.type, u.params)})
                        for uses in self.uses.values() for u in uses}

    def active_ids(self, tps: Iterable[TopicPartition]) -> set[tuple[int, int]]:
        """The tasks whose input partitions are among ``tps``."""
        return {(self.sub_of_topic[tp.topic], tp.partition) for tp in tps if tp.topic in self.sub_of_topic}

    def missing(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The stateful input partitions among ``tps`` whose task does not exist yet."""
        return {tp for tp in tps if tp.topic in self.sub_of_topic
                and (self.sub_of_topic[tp.topic], tp.partition) not in self.tasks}

    # -- creation and restore ---------------------------------------------------------------

    async def assign(self, broker: Broker, consumer: Consumer, tps: Iterable[TopicPartition]) -> None:
        """Opens and restores the tasks of ``tps`` that do not exist yet, then seeks their input
        partitions (see the module invariants). Up to ``RESTORE_CONCURRENCY`` tasks restore at
        once, each through its own group-less reader; a task enters ``tasks`` only restored."""
        wanted = sorted({(self.sub_of_topic[tp.topic], tp.partition) for tp in tps
                         if tp.topic in self.sub_of_topic} - set(self.tasks))
        if not wanted:
            return
        started = time.perf_counter()
        opened = await asyncio.gather(*(asyncio.to_thread(self._open, *key) for key in wanted),
                                      return_exceptions=True)
        new = [task for task in opened if isinstance(task, Task)]
        failed = [e for e in opened if isinstance(e, BaseException)]
        self.restoring.update({(task.sub, task.partition): task for task in new})
        try:
            if failed:
                raise failed[0]
            changelogs = [TopicPartition(use.changelog, task.partition) for task in new
                          for use in task.uses if use.changelog is not None]
            ends = await end_offsets(broker, changelogs)
            plans = [await self._plan(consumer, task, ends) for task in new]
            total = sum(max(0, end - start) if start <= end else end
                        for plan in plans for _, _, start, end in plan)
            progress = None
            if total:
                ids = ", ".join(task.id for task, plan in zip(new, plans) if plan)
                progress = RestoreProgress(f"restoring {self.service} task(s) {ids}", total)
            gate = asyncio.Semaphore(RESTORE_CONCURRENCY)

            async def restore(task: Task, plan: list[_Step]) -> None:
                async with gate:
                    await self._restore(broker, task, plan, progress)

            try:
                results = await asyncio.gather(*(restore(t, p) for t, p in zip(new, plans) if p),
                                               return_exceptions=True)
            finally:
                if progress is not None:
                    progress.finish()
            failed = [e for e in results if isinstance(e, BaseException)]
            if failed:
                raise failed[0]
            for task in new:
                await self._seek_inputs(consumer, task)
        except BaseException:
            for task in new:
                del self.restoring[(task.sub, task.partition)]
                task.state.close()
            raise
        for task in new:
            del self.restoring[(task.sub, task.partition)]
            self.tasks[(task.sub, task.partition)] = task
        self.stats.restore_seconds += time.perf_counter() - started

    def _open(self, sub: int, partition: int) -> Task:
        state = TaskState.open(task_dir(self.state_dir, self.service, sub, partition),
                               invocation=self.invocation)
        try:
            for use in self.uses[sub]:
                state.register(use.name, use.type, use.params, changelog=use.changelog is not None)
            if self.exactly_once:
                claim_task_state(state, {u.name: None if u.changelog is None else TopicPartition(u.changelog, partition)
                                         for u in self.uses[sub]})
        except BaseException:
            state.close()
            raise
        return Task(sub, partition, state, self.uses[sub])

    async def _plan(self, consumer: Consumer, task: Task, ends: dict[TopicPartition, int]) -> list[_Step]:
        """What ``task`` must read: stores from their changelog (checkpoint -> end offset
        captured now, in ``ends``), tables from their source topic (checkpoint -> the group's
        committed offset). Empty when the local state is current."""
        plan: list[_Step] = []
        checkpoint = task.state.checkpoint()
        for use in task.uses:
            if use.changelog is not None:
                tp = TopicPartition(use.changelog, task.partition)
                plan.append((use, tp, checkpoint.changelogs.get(tp, 0), ends[tp]))
            elif use.source is not None:
                tp = TopicPartition(use.source, task.partition)
                end = await consumer.committed(tp) or 0
                plan.append((use, tp, checkpoint.inputs.get(tp, 0), end))
        return [step for step in plan if step[2] != step[3]]

    async def _restore(self, broker: Broker, task: Task, plan: list[_Step],
                       progress: RestoreProgress | None) -> None:
        reader = broker.consumer(None, sorted({tp.topic for _, tp, _, _ in plan}),
                                 partitions=sorted({tp for _, tp, _, _ in plan}))
        await reader.start()
        try:
            for use, tp, start, end in plan:
                convert = None
                if use.changelog is None:
                    convert = table_converter(use.name, self.compiled.table_serdes[use.name],
                                              task.state.max_key_size, _handled_when_processed)
                await _restore_store(task.state, use, reader, tp, end, start, progress, f"task {task.id}",
                                     self.stats, convert)
        finally:
            await reader.close()

    async def _seek_inputs(self, consumer: Consumer, task: Task) -> None:
        inputs = task.state.checkpoint().inputs
        rebuild = any(u.changelog is None and u.source is None for u in task.uses)
        if rebuild and not inputs:
            log.warning("%s task %s: a store without changelog has no local state; rebuilding it "
                        "from the inputs (their outputs are produced again)", self.service, task.id)
        assigned = consumer.assignment()
        for topic in self.subs[task.sub].source_topics:
            tp = TopicPartition(topic, task.partition)
            if tp in assigned:
                target = inputs.get(tp, 0) if rebuild else max(await consumer.committed(tp) or 0,
                                                                inputs.get(tp, 0))
                consumer.seek(tp, target)

    # -- processing -------------------------------------------------------------------------

    def bind(self, tp: TopicPartition, next_offset: int) -> None:
        """Binds the stores of ``tp``'s sub-topology to the task of ``tp`` (which must exist,
        see ``missing``) and records that the task processed ``tp`` up to ``next_offset``."""
        sub = self.sub_of_topic.get(tp.topic)
        if sub is None:
            return
        key = (sub, tp.partition)
        task = self.tasks[key]
        for use in task.uses:
            use.ref.current = task.state.store(use.name)
        task.inputs[tp] = next_offset
        self.touched[key] = task

    def changelog_records(self) -> list[OutRecord]:
        """Prepares every touched task's store transaction (``TaskState.prepare``: its stores
        take no more writes until ``commit`` or ``abort``) and returns its changelog records,
        one per dirty key, each naming its store's definition (``state.restore.store_headers``);
        each task's last record carries ``edm.input``."""
        now = int(time.time() * 1000)
        out: list[OutRecord] = []
        topics = {u.name: u.changelog for uses in self.uses.values() for u in uses}
        headers = self.headers
        for task in self.touched.values():
            rows = task.state.prepare()
            if not rows:
                continue
            p = task.partition
            last_of: dict[str, OutRecord] = {}
            for store, k, v in rows:
                out.append(record := OutRecord(topics[store], p, k, v, now, headers[store][0]))
                last_of[store] = record
            for store, record in last_of.items():
                record.headers = headers[store][1]
            header = json.dumps({tp_key(tp): o for tp, o in task.inputs.items()}, separators=(",", ":"))
            last = out[-1]
            last.headers = last.headers + ((INPUT_HEADER, header.encode()),)
        return out

    def touched_changelogs(self) -> list[TopicPartition]:
        return [TopicPartition(u.changelog, t.partition) for t in self.touched.values()
                for u in t.uses if u.changelog is not None]

    async def commit(self, ends: Mapping[TopicPartition, int]) -> None:
        """Writes every touched task's stores and checkpoint (changelog ends from ``ends``, the
        end offsets after the flush) in one LMDB transaction per task, in a worker thread (an
        LMDB commit fsyncs: it must not stall the event loop). The caller holds the batch lock,
        so no batch mutates the write buffers until this returns; it returns only once every
        transaction has ended, so the caller commits input offsets after the stores."""
        await asyncio.to_thread(self._commit, ends)

    def _commit(self, ends: Mapping[TopicPartition, int]) -> None:
        """``commit``'s blocking part: one thread runs each task's whole write transaction
        (LMDB binds a write transaction to the thread that began it)."""
        for task in self.touched.values():
            changelogs = {TopicPartition(u.changelog, task.partition): ends[tp]
                          for u in task.uses if u.changelog is not None
                          and (tp := TopicPartition(u.changelog, task.partition)) in ends}
            task.state.commit(Checkpoint(changelogs, dict(task.inputs)))
            task.inputs.clear()
        self.touched.clear()

    def abort(self) -> None:
        """Drops the buffered updates of every touched task (a failed batch or flush)."""
        for task in self.touched.values():
            task.state.abort()
            task.inputs.clear()
        self.touched.clear()

    async def drop(self, key: tuple[int, int]) -> None:
        """Closes task ``key`` (if open here), its buffered updates dropped, so it is restored if
        it comes back: its transaction was lost (exactly-once: fenced or failed). Its stores
        hold committed updates only, so it is marked clean. In a thread: the mark is fsynced."""
        self.touched.pop(key, None)
        task = self.tasks.pop(key, None)
        if task is not None:
            await asyncio.to_thread(self._close_task, key, task)

    def _close_task(self, key: tuple[int, int], task: Task) -> None:
        """Closes ``task`` with its buffered updates dropped (under exactly-once: marked clean)."""
        task.state.abort()
        task.inputs.clear()
        self.on_disk[key] = sum(task.state.checkpoint().changelogs.values())
        if self.exactly_once:
            release_task_state(task.state)
        task.state.close()

    async def close(self) -> None:
        """Closes every task; buffered updates are dropped, so under exactly-once each task
        is marked clean (its stores hold committed updates only). In a thread: the clean mark
        is fsynced. The tasks leave ``tasks`` first, on the loop, so no query reaches a closing
        environment (``runtime.view``)."""
        tasks, self.tasks = self.tasks, {}
        self.touched.clear()
        await asyncio.to_thread(self._close, tasks)

    def _close(self, tasks: dict[tuple[int, int], Task]) -> None:
        for key, task in tasks.items():
            self._close_task(key, task)


class GlobalTables:
    """Every global table of a service, materialized from all partitions of its source topic
    by a group-less consumer, in ``<state_dir>/state/<service>/global/``.

    Invariants: ``bootstrap`` reads every partition to the end offset it found at start before
    it returns; ``tail`` applies whatever arrived since, before the runner processes a batch.
    A record that does not decode (or whose key is too long for the store) follows its
    stream's ``on_error``: ``fail`` stops the service, ``skip`` counts it, ``dead_letter``
    writes it (flushed before the checkpoint passes it; every instance reading the global
    table writes its own copy).
    """

    def __init__(self, compiled: CompiledService, state_dir: Path, stats: ServiceStats,
                 invocation: Invocation | None = None) -> None:
        self.compiled = compiled
        self.topology = compiled.topology
        self.state_dir = state_dir
        self.invocation = (invocation or Invocation(str(self.topology.source_file))).for_service(self.topology.name)
        self.stats = stats
        self.uses = compiled.catalog.global_tables()
        self.by_topic: dict[str, list[tuple[StoreUse, Any]]] = {}
        self.state: TaskState | None = None
        self.consumer: Consumer | None = None
        self.dead_letters: list[OutRecord] = []
        self.producer: Producer | None = None
        self.broker: Broker | None = None

    async def bootstrap(self, broker: Broker) -> None:
        service = self.topology.name
        self.broker = broker
        # In a thread: the open may wait up to 30 s for another process's lock, and it writes.
        self.state = state = await asyncio.to_thread(self._open)
        topology, compiled = self.topology, self.compiled
        for use in self.uses:
            use.ref.current = state.store(use.name)
            spec = topology.global_tables[use.name]
            handler = compiled.error_handler(f"global_tables.{use.name}", spec.source, self.dead_letters)
            convert = table_converter(use.name, compiled.table_serdes[use.name], state.max_key_size,
                                      functools.partial(_handle_record, handler,
                                                        f"global table {use.name} (decode)", spec.pos))
            self.by_topic.setdefault(use.source, []).append((use, convert))
        topics = sorted(self.by_topic)
        self.consumer = consumer = broker.consumer(None, topics)
        await consumer.start()
        tps = sorted(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        checkpoint = state.checkpoint().inputs
        plan = [(use, convert, tp) for tp in tps for use, convert in self.by_topic[tp.topic]]
        total = sum(max(0, ends[tp] - checkpoint.get(tp, 0)) for _, _, tp in plan)
        progress = RestoreProgress(f"bootstrapping {service} global tables", total) if total else None
        for use, convert, tp in plan:
            start = checkpoint.get(tp, 0)
            if start != ends[tp]:
                await _restore_store(state, use, consumer, tp, ends[tp], start, progress, "global", self.stats,
                                     convert, self._send_dead_letters)
        if progress is not None:
            progress.finish()
        positions = state.checkpoint().inputs
        for tp in tps:
            consumer.seek(tp, positions.get(tp, 0))

    def _open(self) -> TaskState:
        state = TaskState.open(global_dir(self.state_dir, self.topology.name), invocation=self.invocation)
        try:
            for use in self.uses:
                state.register(use.name, "key_value", {}, changelog=False)
        except BaseException:
            state.close()
            raise
        return state

    async def tail(self, max_records: int = 10_000) -> int:
        """Applies the records that arrived since the last call; returns how many. The LMDB
        write runs in a thread; the runner awaits it before it processes the next batch."""
        fetched = await self.consumer.getmany(timeout_ms=0, max_records=max_records)
        count = 0
        for tp, records in fetched.items():
            position = {tp: records[-1].offset + 1}
            for use, convert in self.by_topic[tp.topic]:
                entries = [kv for r in records if (kv := convert(r)) is not None]
                await self._send_dead_letters()
                await asyncio.to_thread(self.state.apply_changelog, use.name, entries,
                                        inputs_at_least=position)
            count += len(records)
        return count

    async def _send_dead_letters(self) -> None:
        """Makes the dead letters of the records converted so far durable (before the
        checkpoint moves past those records)."""
        if not self.dead_letters:
            return
        if self.producer is None:
            self.producer = self.broker.producer()
            await self.producer.start()
        for record in self.dead_letters:
            self.producer.send(record)
        self.dead_letters.clear()
        await self.producer.flush()

    async def close(self) -> None:
        try:
            if self.consumer is not None:
                await self.consumer.close()
            if self.producer is not None:
                await self.producer.close()
        finally:
            state, self.state = self.state, None  # detached on the loop: no query reaches it closing
            if state is not None:
                await asyncio.to_thread(state.close)


class StandbyTasks:
    """Hot copies of tasks active on other members (the assignor's standbys for this member),
    kept by tailing their changelogs with one group-less reader.

    Invariants: a standby task's state is open only while this member holds it as a standby,
    never while it is active here (``sync`` closes a promoted standby before ``TaskManager``
    opens the task, and the task's flock would refuse two holders). Every applied batch advances
    the standby's checkpoint (changelog offsets, and the inputs of the last ``edm.input``
    header) in the same LMDB transaction, so a promotion restores only the changelog delta.
    """

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.tasks: dict[tuple[int, int], Task] = {}
        self.stores: dict[TopicPartition, tuple[Task, str]] = {}  # changelog partition -> standby store
        self.reader: Consumer | None = None

    async def sync(self, broker: Broker, standby: Iterable[tuple[int, int]], active: Iterable[tuple[int, int]]) -> None:
        """Keeps exactly the ``standby`` tasks that are not ``active`` here and have a changelog."""
        manager = self.manager
        target = {key for key in standby if key not in set(active) and key[0] in manager.uses
                  and any(u.changelog is not None for u in manager.uses[key[0]])}
        if target == set(self.tasks):
            return
        await self.close()
        for key in sorted(target):
            self.tasks[key] = task = await asyncio.to_thread(manager._open, *key)
            for use in task.uses:
                if use.changelog is not None:
                    self.stores[TopicPartition(use.changelog, task.partition)] = (task, use.name)
        if not self.tasks:
            return
        self.reader = reader = broker.consumer(None, sorted({tp.topic for tp in self.stores}),
                                               partitions=sorted(self.stores))
        await reader.start()
        for tp, end in (await reader.end_offsets(sorted(self.stores))).items():
            task, _ = self.stores[tp]
            checkpointed = task.state.checkpoint().changelogs.get(tp, 0)
            reader.seek(tp, checkpointed if checkpointed <= end else 0)
        log.info("%s: standby task(s) %s", manager.service, ", ".join(t.id for t in self.tasks.values()))

    async def tail(self, max_records: int = 10_000) -> int:
        """Applies the changelog records that arrived since the last call; returns how many."""
        if self.reader is None:
            return 0
        fetched = await self.reader.getmany(timeout_ms=0, max_records=max_records)
        count = 0
        for tp, records in fetched.items():
            task, store = self.stores[tp]
            check_changelog(task.state, store, tp, records)
            entries = [(r.key, r.value) for r in records if r.key is not None]
            await asyncio.to_thread(task.state.apply_changelog, store, entries,  # type: ignore[arg-type]
                                    changelog={tp: records[-1].offset + 1},
                                    inputs_at_least=input_position(records))
            count += len(records)
        return count

    async def close(self) -> None:
        try:
            if self.reader is not None:
                await self.reader.close()
        finally:
            self.reader = None
            # Detached on the loop first, so no query reaches a closing environment.
            tasks, self.tasks = self.tasks, {}
            self.stores.clear()
            for key, task in tasks.items():
                self.manager.on_disk[key] = sum(task.state.checkpoint().changelogs.values())
            await asyncio.to_thread(self._close_tasks, list(tasks.values()))

    def _close_tasks(self, tasks: list[Task]) -> None:
        for task in tasks:
            if self.manager.exactly_once:
                # A standby only ever applied committed changelog records: it is clean.
                release_task_state(task.state)
            task.state.close()
