"""The broker protocol that the embedded (local) broker and Kafka both implement.

Invariants every implementation keeps:
- Per partition, records have strictly increasing offsets; a consumer sees them in order.
- ``Producer.flush()`` returns only when every record sent before it is durable
  (LMDB commit for local, acks=all for Kafka). The runtime commits input offsets only
  after a successful flush (at-least-once).
- Partitions are chosen by the caller (``edm_runner.records.partitioner``), never by the
  broker, so a topology's outputs are identical on every broker.
- Committed offsets are "next offset to read", as in Kafka.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Protocol, Sequence

from edm_runner.errors import BrokerError
# Records are shared with the operators (which know no broker): defined in edm_runner.records.
from edm_runner.records import (DEFAULT_TIMESTAMP_BOUND, MAX_RECORD_BYTES, Headers, OutRecord,  # noqa: F401
                                Record, RecordTimestampError, RecordTooLargeError, TimestampBound,
                                check_record_size, check_record_timestamp)


class PartitionMismatchError(BrokerError):
    """Topics that exist on the broker with another partition count than declared: nothing was
    changed. ``mismatches``: topic -> (partitions on the broker, partitions declared). The
    runtime, which knows the streams and how the user ran edm, adds how to get out."""

    def __init__(self, where: str, mismatches: Mapping[str, tuple[int, int]]) -> None:
        self.where = where
        self.mismatches = dict(mismatches)
        super().__init__(f"partition counts differ on {where}: " + "; ".join(
            f"'{topic}' has {have} partition(s) on the broker but the topology declares {declared}"
            for topic, (have, declared) in sorted(self.mismatches.items())))


class BrokerFullError(BrokerError):
    """The embedded broker has no room left for a write: nothing of it was stored. The broker
    cannot know how the user ran edm; the CLI, which does, adds the commands that free room."""

    def __init__(self, where: str, map_size: int) -> None:
        self.where = where
        super().__init__(f"the local broker at {where} is full (map size {map_size >> 20} MiB)")


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class TopicSpec:
    """What a topology needs of a topic. ``compacted`` for entity streams and changelogs."""

    name: str
    partitions: int
    compacted: bool = False
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)


class RebalanceListener(Protocol):
    """Told when a group member's partitions change (``Broker.consumer(..., listener=)``).

    Both are awaited inside the broker client's rebalance, concurrently with the caller's own
    code. ``assigned``: after every assignment (the first one before ``Consumer.start`` returns);
    it must return quickly (on Kafka heartbeats resume only after it). ``revoked``: before a
    rebalance takes the partitions away, once fetching has stopped, while they can still be
    committed. The embedded broker's one member is assigned every partition at start and never
    revoked. Exceptions in them are logged and do not stop the rebalance."""

    async def revoked(self, tps: set[TopicPartition]) -> None: ...

    async def assigned(self, tps: set[TopicPartition]) -> None: ...


class MemberAssignment(NamedTuple):
    """One member's share, as a ``GroupAssignor`` decides it: partitions per topic, and data
    for the member's ``GroupAssignor.on_assignment``."""

    partitions: Mapping[str, Sequence[int]]
    user_data: bytes


class GroupAssignor(Protocol):
    """Shares a group's partitions among its members, inside the clients (as Kafka's consumer
    protocol does), for brokers that ``supports_assignor``. Every member runs one; all must
    have the same ``name`` (the protocol name).

    At every join each member sends ``metadata(topics)``; the leader's ``assign`` gets the
    partition count of every subscribed topic and every member's metadata (member id -> bytes)
    and returns every member's share; each member's ``on_assignment`` then receives its own,
    before the ``RebalanceListener.assigned`` of the new assignment. All three are called
    synchronously on the event loop: they must not block."""

    name: str

    def metadata(self, topics: Sequence[str]) -> bytes: ...

    def assign(self, partitions: Mapping[str, int], members: Mapping[str, bytes]) -> dict[str, MemberAssignment]: ...

    def on_assignment(self, partitions: Mapping[str, Sequence[int]], user_data: bytes) -> None: ...


class Consumer(Protocol):
    """A member of a consumer group. ``group`` is the microservice name."""

    async def start(self) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        """Up to ``max_records`` records across the assigned partitions; {} after ``timeout_ms``."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit next-offset-to-read per partition for the group."""
        ...

    async def committed(self, tp: TopicPartition) -> int | None: ...

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]: ...

    async def position(self, tp: TopicPartition) -> int: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        """Stop fetching ``tps`` (assigned partitions) until ``resume``: ``getmany`` returns
        nothing of them, while the member keeps polling (group membership, heartbeats and the
        other partitions go on). A rebalance resumes every partition it assigns."""
        ...

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        """Fetch ``tps`` again, from their positions (``seek`` while paused moves them)."""
        ...

    async def close(self) -> None: ...


class Producer(Protocol):
    async def start(self) -> None: ...

    def send(self, record: OutRecord) -> None:
        """Queue a record; durable only after ``flush()`` returns."""
        ...

    async def flush(self) -> None: ...

    async def write(self, records: Sequence[OutRecord]) -> list[int]:
        """Writes ``records`` now and returns once every one is durable (as ``flush``), with
        the offset of each, in order. Apart from ``send``/``flush``: a failed write raises
        ``BrokerError`` (nothing of it is known to be stored) and leaves the producer usable.
        For writers that answer someone per write (HTTP ingestion)."""
        ...

    async def close(self) -> None: ...


def offsets_of(records: Sequence[OutRecord], ends: Mapping[TopicPartition, int]) -> list[int]:
    """The offset of each of ``records``, appended together in order, from the partitions'
    end offsets after the append (offsets are dense within one append)."""
    counts: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        counts[tp] = counts.get(tp, 0) + 1
    next_offset = {tp: ends[tp] - n for tp, n in counts.items()}
    out = []
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        out.append(next_offset[tp])
        next_offset[tp] += 1
    return out


class Broker(Protocol):
    """A connection to one broker (cluster). ``describe()`` is a one-line human description.

    What a broker can do beyond this protocol it declares in class attributes, and the runtime
    chooses by them, never by the broker's type:
    - ``supports_assignor``: True when a consumer group may have several members whose
      partitions a ``GroupAssignor`` shares out (Kafka); False when a group has one member,
      which holds every partition of its topics (the embedded broker).
    - ``atomic_append``: it is an ``AtomicAppendBroker`` (the embedded broker): a batch's
      records and the group's offsets are appended in one broker transaction.
    - ``transactions``: it has transactional producers and read-committed readers (Kafka,
      ``brokers.kafka_eos``), for exactly-once.
    The last two choose the service's commit path, once (``runtime.checkpoint.checkpointer``).
    """

    supports_assignor: bool
    atomic_append: bool
    transactions: bool

    def describe(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ensure_topics(self, specs: Sequence[TopicSpec], create: bool = True) -> None:
        """Create missing topics (unless ``create`` is False: then missing ones are an error
        listing them). A topic whose partition count differs from its spec is a BrokerError
        naming both numbers."""
        ...

    async def list_topics(self) -> dict[str, int]:
        """Topic name -> partition count."""
        ...

    def consumer(self, group: str | None, topics: Sequence[str], *,
                 from_beginning: bool = True, partitions: Sequence[TopicPartition] | None = None,
                 listener: RebalanceListener | None = None, assignor: GroupAssignor | None = None,
                 group_instance_id: str | None = None) -> Consumer:
        """A consumer subscribed to ``topics``. ``group=None``: no group, no commits, reads
        from the beginning (or the end when ``from_beginning`` is False), every partition of
        ``topics`` or only ``partitions`` when given (restores read just what they need). With a
        group, a partition without a committed offset starts at the beginning; ``listener`` is
        told of its assignments and revocations. Where ``supports_assignor``: ``assignor``
        replaces the broker's default assignment, and ``group_instance_id`` makes the member
        static (a restart within the session timeout keeps its partitions, no rebalance);
        elsewhere both are ignored (one member holds every partition)."""
        ...

    def producer(self) -> Producer: ...

    async def timestamp_bounds(self, topics: Sequence[str]) -> dict[str, TimestampBound]:
        """The record timestamp bound of each of ``topics`` that differs from
        ``DEFAULT_TIMESTAMP_BOUND`` (the embedded broker: none). Read once per run."""
        ...

    # -- administration (``edm reset``): offsets and topics outside of a running group ---------

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """First offset still stored per partition (its end offset when empty)."""
        ...

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Next offset to be assigned per partition."""
        ...

    async def offsets_for_times(self, tps: Sequence[TopicPartition],
                                timestamp_ms: int) -> dict[TopicPartition, int]:
        """Per partition, the first offset whose record timestamp is >= ``timestamp_ms``;
        the end offset when there is none (as Kafka's ListOffsets)."""
        ...

    async def group_offsets(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """``group``'s committed offsets on ``topics`` (partitions without one are absent)."""
        ...

    async def group_alive(self, group: str) -> bool:
        """True when a member of ``group`` is running (its offsets must not be changed)."""
        ...

    async def set_group_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` for ``group`` from outside; a BrokerError when a member is alive."""
        ...

    async def delete_topics(self, names: Sequence[str]) -> None:
        """Delete the topics (records and committed offsets); names that do not exist are ignored."""
        ...


class AtomicAppendBroker(Broker, Protocol):
    """A broker whose ``atomic_append`` is True."""

    async def append_and_commit(self, records: Sequence[OutRecord], group: str,
                                offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Append ``records`` and commit ``group``'s ``offsets`` in ONE transaction: both or
        neither survive a crash. Returns the new end offset of every partition written."""
        ...
