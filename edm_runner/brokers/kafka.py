"""The Apache Kafka broker, through aiokafka.

Options (``broker: {kind: kafka, ...}`` in a topology):
    bootstrap_servers   "host:port[,host:port]" or a list (required)
    client_id           prefix of the client ids (default "edm")
    connect_timeout_s   how long ``start`` retries an unreachable cluster (default: the
                        EDM_KAFKA_CONNECT_TIMEOUT_S environment variable, else 30)
    security            {protocol, sasl_mechanism, username, password,
                         ssl_cafile, ssl_certfile, ssl_keyfile, ssl_key_password}
    producer, consumer  extra keyword arguments for AIOKafkaProducer / AIOKafkaConsumer

Invariants:
- The producer always sends to the partition given in the ``OutRecord``; aiokafka's
  partitioner is never consulted.
- ``Producer.flush()`` returns only when every record sent before it is acknowledged by all
  in-sync replicas (acks=all, idempotent, so broker-side retries never duplicate); if any
  failed it raises ``BrokerError`` and the caller must not commit its inputs.
- Every aiokafka error that leaves this module is a ``BrokerError`` with a message naming
  the bootstrap servers or the topic concerned.
- ``start`` fails at once, without retrying, when the cluster refuses the connection for good
  (a TLS certificate not trusted, SASL credentials or mechanism refused): the message says
  which, what to change, and repeats the ``security`` options given (never the password).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from typing import Any, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import (KafkaError, SaslAuthenticationFailed, TopicAlreadyExistsError,
                             UnsupportedSaslMechanismError, for_code)
from aiokafka.protocol.metadata import MetadataRequest

from edm_runner.brokers.base import (DEFAULT_TIMESTAMP_BOUND, GroupAssignor, OutRecord, PartitionMismatchError,
                                     RebalanceListener, Record, TimestampBound, TopicPartition, TopicSpec)
from edm_runner.errors import BrokerError

_OPTIONS = {"bootstrap_servers", "client_id", "connect_timeout_s", "security", "producer", "consumer"}
_SECURITY = {"protocol", "sasl_mechanism", "username", "password",
             "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"}
_UNKNOWN_TOPIC = 3
JOIN_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 30.0


class KafkaBroker:
    """A connection to a Kafka cluster (see the module docstring for ``options``)."""

    supports_assignor = True
    atomic_append = False
    transactions = True  # transactional producers, read-committed readers: brokers.kafka_eos

    def __init__(self, options: Mapping[str, Any]):
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise BrokerError(f"unknown kafka broker option(s): {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(_OPTIONS))}")
        servers = options.get("bootstrap_servers")
        if not servers:
            raise BrokerError("the kafka broker needs bootstrap_servers, e.g. "
                              "{kind: kafka, bootstrap_servers: 'localhost:9092'}")
        self.bootstrap: list[str] = (
            [s.strip() for s in servers.split(",") if s.strip()] if isinstance(servers, str)
            else [str(s) for s in servers])
        self.client_id = str(options.get("client_id", "edm"))
        self.connect_timeout_s = float(options.get("connect_timeout_s", _default_connect_timeout_s()))
        self._security = dict(options.get("security") or {})
        self._security_kwargs = _security_kwargs(self._security)
        self._common = {"bootstrap_servers": self.bootstrap, **self._security_kwargs}
        self._producer_options = dict(options.get("producer") or {})
        self._consumer_options = dict(options.get("consumer") or {})
        self._admin: AIOKafkaAdminClient | None = None

    def describe(self) -> str:
        return f"kafka at {','.join(self.bootstrap)}"

    async def start(self) -> None:
        """Connect, retrying with backoff for ``connect_timeout_s``, then give up clearly."""
        deadline = time.monotonic() + self.connect_timeout_s
        backoff = 0.25
        last_error: Exception | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            admin = AIOKafkaAdminClient(client_id=f"{self.client_id}-admin",
                                        request_timeout_ms=max(1000, int(remaining * 1000)),
                                        **self._common)
            try:
                await self._probe(remaining)
                await asyncio.wait_for(admin.start(), timeout=remaining)
                self._admin = admin
                return
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                last_error = exc
                await admin.close()
            await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(backoff * 2, 2.0)
        detail = f" (last error: {_describe_error(last_error)})" if last_error else ""
        raise BrokerError(
            f"cannot reach Kafka at {','.join(self.bootstrap)} after {self.connect_timeout_s:g} s"
            f"{detail}; check bootstrap_servers and security, and that the broker is running "
            "(for a local one: edm dev kafka start)")

    async def _probe(self, timeout_s: float) -> None:
        """Opens (and closes) one connection to a bootstrap server, TLS and SASL included.

        aiokafka's own bootstrap only logs why each server failed; this raises it: a
        ``BrokerError`` saying what to change when the cluster refuses the connection for
        good (``_refusal``), else the last server's error (the caller retries)."""
        last: BaseException | None = None
        for server in self.bootstrap:
            host, _, port = server.rpartition(":")
            try:
                conn = await asyncio.wait_for(create_conn(
                    host, int(port), client_id=f"{self.client_id}-probe",
                    request_timeout_ms=max(1000, int(timeout_s * 1000)), **self._security_kwargs),
                    timeout=timeout_s)
            except (KafkaError, OSError, asyncio.TimeoutError) as exc:
                refusal = _refusal(server, exc, self._security)
                if refusal is not None:
                    raise BrokerError(refusal) from None
                last = exc
                continue
            conn.close()
            return
        assert last is not None
        raise last

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def list_topics(self) -> dict[str, int]:
        topics = await self._call("listing topics", self._started_admin().describe_topics())
        return {t["topic"]: len(t["partitions"]) for t in topics
                if t["error_code"] == 0 and not t["is_internal"] and not t["topic"].startswith("__")}

    async def ensure_topics(self, specs: Sequence[TopicSpec], create: bool = True) -> None:
        if not specs:
            return
        names = [s.name for s in specs]
        existing = await self._partition_counts(names)
        missing = [s for s in specs if s.name not in existing]
        if missing and not create:
            raise BrokerError(
                f"topic(s) missing on {self.describe()}: {', '.join(s.name for s in missing)}; "
                "create them on the cluster, or let edm create them")
        if missing:
            await self._create(missing)
        # Also when they existed: another instance may have created them a moment ago.
        existing = await self._wait_known_everywhere(names)
        if missing:
            await self._wait_served([TopicPartition(s.name, p) for s in missing for p in range(existing[s.name])])
        mismatches = {s.name: (existing[s.name], s.partitions)
                      for s in specs if existing.get(s.name, s.partitions) != s.partitions}
        if mismatches:
            raise PartitionMismatchError(self.describe(), mismatches)

    async def timestamp_bounds(self, topics: Sequence[str]) -> dict[str, TimestampBound]:
        """Each topic's effective message.timestamp.after.max.ms / before.max.ms (none on
        LogAppendTime topics; brokers before 3.6 have only message.timestamp.difference.max.ms,
        both ways); a topic the broker does not describe keeps the default."""
        if not topics:
            return {}
        names = ["message.timestamp.type", "message.timestamp.after.max.ms", "message.timestamp.before.max.ms",
                 "message.timestamp.difference.max.ms"]
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, {n: None for n in names}) for t in topics]
        responses = await self._retrying("describing topic configs",
                                         lambda: self._started_admin().describe_configs(resources))
        bounds: dict[str, TimestampBound] = {}
        for response in responses:
            for resource in response.to_object()["resources"]:
                if resource["error_code"] != 0:
                    continue
                config = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
                after, before = config.get(names[1]), config.get(names[2])
                if after is None and before is None:
                    after = before = config.get(names[3])
                if config.get(names[0]) == "LogAppendTime":
                    bound = TimestampBound(None, None)
                else:
                    bound = TimestampBound(_bound_ms(after, DEFAULT_TIMESTAMP_BOUND.after_ms),
                                           _bound_ms(before, DEFAULT_TIMESTAMP_BOUND.before_ms))
                if bound != DEFAULT_TIMESTAMP_BOUND:
                    bounds[resource["resource_name"]] = bound
        return bounds

    def consumer(self, group: str | None, topics: Sequence[str], *,
                 from_beginning: bool = True, partitions: Sequence[TopicPartition] | None = None,
                 listener: RebalanceListener | None = None, assignor: GroupAssignor | None = None,
                 group_instance_id: str | None = None) -> KafkaConsumer:
        """See ``Broker.consumer``. Without ``assignor`` the group uses aiokafka's Range."""
        kwargs: dict[str, Any] = {
            **self._common,
            "client_id": f"{self.client_id}-{group or 'reader'}",
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            # Range gives partition N of equally partitioned topics to one member
            # (copartitioning); the runtime may pass its own assignor in consumer options.
            "partition_assignment_strategy": (RangePartitionAssignor,),
            **self._consumer_options,
        }
        if assignor is not None:
            kwargs["partition_assignment_strategy"] = (KafkaAssignor(assignor),)
        if group_instance_id is not None:
            kwargs["group_instance_id"] = group_instance_id
        return KafkaConsumer(self, list(topics), kwargs, partitions, listener)

    def producer(self) -> KafkaProducer:
        kwargs: dict[str, Any] = {
            **self._common,
            "client_id": f"{self.client_id}-producer",
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_batch_size": 256 * 1024,
            # Batches wait this long for a missing leader before failing: rides out a broker
            # restart of up to a minute.
            "request_timeout_ms": 60_000,
            **self._producer_options,
        }
        return KafkaProducer(self, kwargs)

    # --- administration (edm reset) ----------------------------------------------------------

    async def beginning_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._with_reader("reading beginning offsets",
                                       lambda c: c.beginning_offsets([KafkaTP(*tp) for tp in tps]))

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._with_reader("reading end offsets",
                                       lambda c: c.end_offsets([KafkaTP(*tp) for tp in tps]))

    async def offsets_for_times(self, tps: Sequence[TopicPartition],
                                timestamp_ms: int) -> dict[TopicPartition, int]:
        async def find(reader: AIOKafkaConsumer) -> dict[Any, int]:
            found = await reader.offsets_for_times({KafkaTP(*tp): timestamp_ms for tp in tps})
            ends = await reader.end_offsets([KafkaTP(*tp) for tp in tps])
            return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in ends}
        return await self._with_reader("looking up offsets by time", find)

    async def group_offsets(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        committed = await self._retrying(f"reading committed offsets of group '{group}'",
                                         lambda: self._started_admin().list_consumer_group_offsets(group))
        return {TopicPartition(tp.topic, tp.partition): meta.offset
                for tp, meta in committed.items() if tp.topic in topics and meta.offset >= 0}

    async def group_alive(self, group: str) -> bool:
        responses = await self._retrying(f"describing group '{group}'",
                                         lambda: self._started_admin().describe_consumer_groups([group]))
        for response in responses:
            for error_code, group_id, state, *_rest in response.groups:
                if group_id == group and error_code == 0 and state not in ("Empty", "Dead", ""):
                    return True
        return False

    async def set_group_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commits as a group-less member (generation -1): Kafka accepts it only while the
        group has no live member, so a running instance is never overwritten."""
        if not offsets:
            return
        committer = AIOKafkaConsumer(**self._common, group_id=group, enable_auto_commit=False,
                                     client_id=f"{self.client_id}-reset")
        await self._start_client("starting an offset committer", committer)
        try:
            committer.assign([KafkaTP(*tp) for tp in offsets])
            await self._retrying(f"committing offsets of group '{group}' (is an instance of the "
                                 "service still running? stop it first)",
                                 lambda: committer.commit({KafkaTP(*tp): o for tp, o in offsets.items()}))
        finally:
            await committer.stop()

    async def delete_topics(self, names: Sequence[str]) -> None:
        existing = await self._partition_counts(list(names))
        doomed = [n for n in names if n in existing]
        if not doomed:
            return
        response = await self._call("deleting topics", self._started_admin().delete_topics(doomed))
        failures = [f"'{name}': {for_code(code).__name__}" for name, code, *_ in response.topic_error_codes
                    if code not in (0, _UNKNOWN_TOPIC)]
        if failures:
            raise BrokerError(f"deleting topics on {self.describe()} failed: {'; '.join(failures)}")
        await self._wait_deleted(doomed)

    async def _wait_deleted(self, names: list[str], timeout_s: float = 30.0) -> None:
        """Deletion is asynchronous on the brokers; a re-creation right after must not race it:
        waits until no broker lists the topics."""
        deadline = time.monotonic() + timeout_s
        while any(topics is None or any(t["error_code"] == 0 for t in topics)
                  for topics in (await self._metadata_of_every_broker(names)).values()):
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {', '.join(names)} still exist on {self.describe()} "
                                  f"{timeout_s:g} s after their deletion; check the broker's health")
            await asyncio.sleep(0.1)  # no event to await: metadata is polled

    async def _retrying(self, what: str, call: Any, timeout_s: float = 30.0) -> Any:
        """``await call()``, retried while Kafka answers with a retriable error (a group
        coordinator not elected yet on a fresh cluster, a coordinator loading)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await call()
            except KafkaError as exc:
                if not exc.retriable or time.monotonic() > deadline:
                    raise BrokerError(f"{what} on {self.describe()} failed: {_describe_error(exc)}") from exc
            await asyncio.sleep(0.2)  # no event to await: the coordinator is polled

    async def _with_reader(self, what: str, action: Any) -> dict[TopicPartition, int]:
        reader = AIOKafkaConsumer(**self._common, enable_auto_commit=False,
                                  client_id=f"{self.client_id}-admin-reader")
        await self._start_client(what, reader)
        try:
            found = await self._call(what, action(reader))
        finally:
            await reader.stop()
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in found.items()}

    # --- internals ---------------------------------------------------------------------------

    def _started_admin(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            raise BrokerError(f"{self.describe()} is not started; call start() first")
        return self._admin

    async def _start_client(self, what: str, client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
        """``client.start()``; on any failure the client is stopped (closing the connections it
        opened) before the error propagates, so no error path leaves it open."""
        try:
            await self._call(what, client.start())
        except BaseException:
            with contextlib.suppress(Exception):  # the start's error is the one to report
                await client.stop()
            raise

    async def _call(self, what: str, awaitable: Any) -> Any:
        try:
            return await awaitable
        except KafkaError as exc:
            raise BrokerError(f"{what} on {self.describe()} failed: {_describe_error(exc)}") from exc

    async def _describe_topics(self, names: list[str], node_id: int | None = None) -> list[dict[str, Any]]:
        """The metadata of topics ``names`` as broker ``node_id`` (default: any) knows them.
        Never creates them, even where the cluster auto-creates topics that clients ask for."""
        request = MetadataRequest(names, allow_auto_topic_creation=False)
        # The admin client's own describe_topics asks a random broker and allows auto-creation.
        send = lambda: self._started_admin()._send_request(request, node_id)  # noqa: E731
        if node_id is None:  # any broker: one that is down is replaced by another on retry
            response = await self._retrying("describing topics", send)
        else:
            response = await self._call("describing topics", send())
        return response.to_object()["topics"]

    async def _partition_counts(self, names: list[str]) -> dict[str, int]:
        """Partition count of each named topic that exists (its leaders need not be elected)."""
        topics = await self._describe_topics(names)
        counts: dict[str, int] = {}
        for topic in topics:
            if topic["error_code"] == 0:
                counts[topic["topic"]] = len(topic["partitions"])
            elif topic["error_code"] != _UNKNOWN_TOPIC:
                raise BrokerError(f"describing topic '{topic['topic']}' on {self.describe()} "
                                  f"failed: {for_code(topic['error_code']).__name__}")
        return counts

    async def _create(self, specs: list[TopicSpec]) -> None:
        # aiokafka speaks CreateTopics <= v3, which cannot ask for the broker's default
        # replication factor: use the usual production default, capped by the cluster size.
        cluster = await self._call("describing the cluster", self._started_admin().describe_cluster())
        default_replicas = max(1, min(3, len(cluster["brokers"])))
        new = [NewTopic(s.name, s.partitions, s.replication_factor or default_replicas,
                        topic_configs=_configs(s))
               for s in specs]
        response = await self._call("creating topics", self._started_admin().create_topics(new))
        failures = []
        for name, code, *rest in response.topic_errors:
            if code == 0 or for_code(code) is TopicAlreadyExistsError:  # a concurrent creator
                continue
            message = rest[0] if rest and rest[0] else for_code(code).__name__
            failures.append(f"'{name}': {message}")
        if failures:
            raise BrokerError(f"creating topics on {self.describe()} failed: {'; '.join(failures)}")

    async def _wait_known_everywhere(self, names: list[str], timeout_s: float = 30.0) -> dict[str, int]:
        """Waits until every live broker lists every topic of ``names`` with a leader for each
        partition, and returns their partition counts.

        Brokers learn of a new topic at different moments, and clients ask any of them (aiokafka
        picks a random one): until all know it, a reader or producer can be told it does not
        exist, and a partition leader can refuse requests for it.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            counts: dict[str, int] = {}
            lagging: dict[int, list[str]] = {}
            for node_id, topics in (await self._metadata_of_every_broker(names)).items():
                for topic in topics if topics is not None else []:
                    if topic["error_code"] == 0 and topic["partitions"] and all(
                            p["leader"] >= 0 for p in topic["partitions"]):
                        counts[topic["topic"]] = len(topic["partitions"])
                    else:
                        lagging.setdefault(node_id, []).append(topic["topic"])
                if topics is None:
                    lagging[node_id] = names
            if not lagging:
                return counts
            if time.monotonic() > deadline:
                late = sorted({name for topics in lagging.values() for name in topics})
                raise BrokerError(
                    f"topic(s) {', '.join(late)} not known with a leader for every partition by "
                    f"broker(s) {', '.join(map(str, sorted(lagging)))} of {self.describe()} within "
                    f"{timeout_s:g} s; check the brokers' health")
            await asyncio.sleep(0.05)  # no event to await: metadata is polled

    async def _wait_served(self, tps: list[TopicPartition]) -> None:
        """Waits until the leader of each of ``tps`` (new partitions) serves it.

        The metadata can name a partition's leader a moment before that broker acts as its
        leader: a first reader or producer was refused (NotLeaderForPartitionError, which
        aiokafka logs at ERROR before retrying). Asking for the end offsets retries quietly
        until every leader answers."""
        await self._with_reader("reading the end offsets of new topics",
                                lambda reader: reader.end_offsets([KafkaTP(*tp) for tp in tps]))

    async def _metadata_of_every_broker(self, names: list[str]) -> dict[int, list[dict[str, Any]] | None]:
        """Per live broker (node id), its own metadata of topics ``names``; None for a broker
        that did not answer."""
        admin = self._started_admin()
        await admin._client.force_metadata_update()  # the brokers alive now
        views: dict[int, list[dict[str, Any]] | None] = {}
        for broker in admin._client.cluster.brokers():
            try:
                views[broker.nodeId] = await self._describe_topics(names, broker.nodeId)
            except BrokerError:
                views[broker.nodeId] = None
        return views


class KafkaAssignor(AbstractPartitionAssignor):
    """aiokafka's assignor hook over a ``GroupAssignor``, which speaks in partition counts and
    bytes: this adapter owns the consumer protocol's wire structures. aiokafka calls the hook's
    methods on the instance, so its abstract class methods are overridden as methods."""

    def __init__(self, assignor: GroupAssignor) -> None:
        self.assignor = assignor

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.assignor.name

    def metadata(self, topics: Any) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        return ConsumerProtocolMemberMetadata(0, sorted(topics), self.assignor.metadata(sorted(topics)))

    def assign(self, cluster: ClusterMetadata,  # type: ignore[override]
               members: Mapping[str, ConsumerProtocolMemberMetadata]) -> dict[str, ConsumerProtocolMemberAssignment]:
        topics = sorted({t for m in members.values() for t in m.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        shares = self.assignor.assign(counts, {member: m.user_data or b"" for member, m in members.items()})
        return {member: ConsumerProtocolMemberAssignment(
                    0, sorted((t, sorted(ps)) for t, ps in share.partitions.items()), share.user_data)
                for member, share in shares.items()}

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        self.assignor.on_assignment({t: list(ps) for t, ps in assignment.assignment}, assignment.user_data or b"")


class _Listener(ConsumerRebalanceListener):
    """Sets ``event`` once the group has handed this member its (possibly empty) share, and
    forwards every rebalance to ``consumer.listener`` (a ``RebalanceListener``)."""

    def __init__(self, consumer: KafkaConsumer, event: asyncio.Event):
        self.consumer = consumer
        self.event = event

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.consumer.listener is not None:
            await self.consumer.listener.revoked({TopicPartition(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.event.set()
        if self.consumer.listener is not None:
            await self.consumer.listener.assigned({TopicPartition(tp.topic, tp.partition) for tp in assigned})


class KafkaConsumer:
    """A group member (or a group-less reader) over aiokafka. Commits are explicit only.

    ``listener`` (group members only; see ``RebalanceListener``) is awaited inside aiokafka's
    rebalance, in its coordinator task: ``revoked`` before the member rejoins, ``assigned``
    after the join, before fetching and heartbeats resume. Exceptions in them are logged by
    aiokafka and do not stop the rebalance.
    """

    def __init__(self, broker: KafkaBroker, topics: list[str], kwargs: dict[str, Any],
                 partitions: Sequence[TopicPartition] | None = None, listener: RebalanceListener | None = None):
        self.listener = listener
        self._broker = broker
        self._topics = topics
        self._partitions = partitions
        self._group = kwargs.get("group_id")
        self._kwargs = kwargs
        self._consumer: AIOKafkaConsumer = None  # type: ignore[assignment]  # set by start

    async def start(self) -> None:
        """Join the group and wait for the first assignment (so ``assignment()`` is
        meaningful on return), or without a group assign every partition of the topics.
        On failure nothing stays open (``close`` is not needed)."""
        try:
            self._consumer = AIOKafkaConsumer(**self._kwargs)
        except TypeError as exc:
            raise BrokerError(f"invalid kafka consumer option: {exc}") from exc
        await self._broker._start_client(f"starting a consumer of {', '.join(self._topics)}",
                                         self._consumer)
        try:
            await self._join_or_assign()
        except BaseException:
            await self.close()
            raise

    async def _join_or_assign(self) -> None:
        if self._group is not None:
            assigned = asyncio.Event()
            self._consumer.subscribe(self._topics, listener=_Listener(self, assigned))
            try:
                await asyncio.wait_for(assigned.wait(), JOIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise BrokerError(
                    f"consumer group '{self._group}' got no partition assignment from "
                    f"{self._broker.describe()} within {JOIN_TIMEOUT_S:g} s; check the broker's "
                    "health and that the group's other members run the same topology") from None
            return
        counts = await self._broker._partition_counts(self._topics)
        missing = [t for t in self._topics if t not in counts]
        if missing:
            raise BrokerError(f"cannot read missing topic(s) on {self._broker.describe()}: "
                              f"{', '.join(missing)}")
        if self._partitions is not None:
            self._consumer.assign([KafkaTP(*tp) for tp in self._partitions])
        else:
            self._consumer.assign([KafkaTP(t, p) for t in self._topics for p in range(counts[t])])

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        batches = await self._broker._call(
            "fetching records", self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))
        # A hot loop (restores read millions of records): no per-record lookups it can avoid.
        out: dict[TopicPartition, list[Record]] = {}
        for tp, messages in batches.items():
            topic, partition = tp.topic, tp.partition
            out[TopicPartition(topic, partition)] = [
                Record(topic, partition, m.offset, m.key, m.value, m.timestamp, m.headers or ())
                for m in messages]
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        if self._group is None:
            raise BrokerError("a consumer without a group cannot commit offsets")
        await self._broker._call(
            f"committing offsets of group '{self._group}'",
            self._consumer.commit({KafkaTP(tp.topic, tp.partition): offset
                                   for tp, offset in offsets.items()}))

    async def committed(self, tp: TopicPartition) -> int | None:
        if self._group is None:
            return None
        return await self._broker._call(f"reading committed offsets of group '{self._group}'",
                                        self._consumer.committed(KafkaTP(*tp)))

    async def end_offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        ends = await self._broker._call("reading end offsets",
                                        self._consumer.end_offsets([KafkaTP(*tp) for tp in tps]))
        return {TopicPartition(tp.topic, tp.partition): offset for tp, offset in ends.items()}

    async def position(self, tp: TopicPartition) -> int:
        return await self._broker._call("reading a position", self._consumer.position(KafkaTP(*tp)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._consumer.seek(KafkaTP(*tp), offset)

    def pause(self, tps: Sequence[TopicPartition]) -> None:
        self._consumer.pause(*(KafkaTP(*tp) for tp in tps))

    def resume(self, tps: Sequence[TopicPartition]) -> None:
        assigned = self._consumer.assignment()  # a rebalance may have taken some away meanwhile
        self._consumer.resume(*(kafka_tp for kafka_tp in (KafkaTP(*tp) for tp in tps) if kafka_tp in assigned))

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


class KafkaProducer:
    """An idempotent acks=all producer with a synchronous ``send``.

    ``send`` only queues; one pump task per burst packs the queue into one record batch per
    partition run (aiokafka ``create_batch``/``send_batch``: no per-record coroutine or
    future) and hands the batches to aiokafka, keeping each partition's order.
    ``flush`` waits for the pump and for every batch's acknowledgement. Once a flush has
    failed, records queued with it may be lost, so the producer refuses further use: the
    caller must not commit and must restart from its committed offsets.
    """

    def __init__(self, broker: KafkaBroker, kwargs: dict[str, Any]):
        self._broker = broker
        self._kwargs = kwargs
        self._producer: AIOKafkaProducer = None  # type: ignore[assignment]  # set by start
        self._queue: list[OutRecord] = []
        self._pump: asyncio.Task[None] | None = None
        self._deliveries: list[tuple[tuple[str, int], asyncio.Future[Any]]] = []
        self._failed: BrokerError | None = None
        # ``write``: the writes waiting for the next round, the task shipping rounds, and the
        # tasks waiting for the acknowledgements of rounds shipped.
        self._writes: list[tuple[Sequence[OutRecord], asyncio.Future[list[int]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._acknowledging: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connects. On failure nothing stays open (``close`` is not needed)."""
        try:
            self._producer = AIOKafkaProducer(**self._kwargs)
        except TypeError as exc:
            raise BrokerError(f"invalid kafka producer option: {exc}") from exc
        await self._broker._start_client("starting the producer", self._producer)

    def send(self, record: OutRecord) -> None:
        if self._failed is not None:
            raise self._failed
        self._queue.append(record)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        if self._failed is not None:
            raise self._failed
        try:
            while self._pump is not None and not self._pump.done():
                await self._pump  # a new pump may start while we wait; loop until none runs
            pump, self._pump = self._pump, None
            if pump is not None:
                pump.result()
            deliveries, self._deliveries = self._deliveries, []
            results = await asyncio.gather(*(d for _, d in deliveries), return_exceptions=True)
            for ((topic, partition), _), result in zip(deliveries, results):
                if isinstance(result, KafkaError):
                    raise _WriteFailed(topic, partition, result) from result
                if isinstance(result, BaseException):
                    raise result
        except _WriteFailed as failed:
            exc = failed.error
            self._failed = BrokerError(
                f"writing records to '{failed.topic}' (partition {failed.partition}) on "
                f"{self._broker.describe()} failed: {_describe_error(exc)}; what was written since "
                "the last successful flush is not known to be stored")
            raise self._failed from exc
        except KafkaError as exc:
            self._failed = BrokerError(f"writing records to {self._broker.describe()} failed: "
                                       f"{_describe_error(exc)}; what was written since the last "
                                       "successful flush is not known to be stored")
            raise self._failed from exc
        except BrokerError as exc:
            self._failed = exc
            raise

    async def write(self, records: Sequence[OutRecord]) -> list[int]:
        """Sends ``records`` and waits for their acknowledgement; a record's offset is its
        batch's base offset plus its index in the batch. Writes that arrive while a round of
        them is being handed to aiokafka wait for the next round, whose records share record
        batches (one per partition run): under concurrent writers the batches grow, instead of
        each writer's few records queueing behind the others' batch by batch. Does not touch the
        ``send`` queue; a failed write leaves the producer usable (``flush`` refuses after one;
        this is for callers that answer per write)."""
        if not records:
            return []
        for topic, partition in {(r.topic, r.partition) for r in records}:
            partitions = await self._producer.partitions_for(topic)
            if partition not in partitions:
                raise BrokerError(f"cannot write to partition {partition} of '{topic}' on "
                                  f"{self._broker.describe()}: it has {len(partitions)} partition(s)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[int]] = loop.create_future()
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # a caller gone is no warning
        self._writes.append((records, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_rounds())
        return await asyncio.shield(done)

    async def _write_rounds(self) -> None:
        while self._writes:
            writes, self._writes = self._writes, []
            records = [r for batch, _ in writes for r in batch]
            try:
                shipped = await self._ship_records(records)
            except (KafkaError, BrokerError) as exc:
                _answer_writes(writes, self._write_error(exc))
                continue
            except asyncio.CancelledError:
                _answer_writes(writes, _CLOSED)
                raise
            acknowledging = asyncio.get_running_loop().create_task(self._acknowledge(writes, shipped, len(records)))
            self._acknowledging.add(acknowledging)
            acknowledging.add_done_callback(self._acknowledging.discard)

    async def _ship_records(self, records: list[OutRecord]) -> list[tuple[list[int], asyncio.Future[Any]]]:
        """Hands ``records`` to aiokafka as closed record batches; (record indexes, delivery) per batch."""
        runs: dict[tuple[str, int], list[int]] = {}
        for i, r in enumerate(records):
            runs.setdefault((r.topic, r.partition), []).append(i)
        shipped: list[tuple[list[int], asyncio.Future[Any]]] = []
        try:
            for (topic, partition), indexes in runs.items():
                batch, members = self._producer.create_batch(), []
                for i in indexes:
                    r = records[i]
                    while batch.append(timestamp=r.timestamp_ms, key=r.key, value=r.value,
                                       headers=list(r.headers)) is None:
                        if batch.record_count() == 0:
                            raise BrokerError(f"a record for '{topic}' is larger than the producer's "
                                              "max_batch_size; raise producer.max_batch_size")
                        batch.close()
                        shipped.append((members, await self._producer.send_batch(batch, topic, partition=partition)))
                        batch, members = self._producer.create_batch(), []
                    members.append(i)
                if members:
                    batch.close()
                    shipped.append((members, await self._producer.send_batch(batch, topic, partition=partition)))
        except BaseException:
            for _, delivery in shipped:  # their outcome no longer matters: never left unretrieved
                delivery.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        return shipped

    async def _acknowledge(self, writes: list[tuple[Sequence[OutRecord], asyncio.Future[list[int]]]],
                           shipped: list[tuple[list[int], asyncio.Future[Any]]], count: int) -> None:
        try:
            results = await asyncio.gather(*(delivery for _, delivery in shipped), return_exceptions=True)
        except asyncio.CancelledError:
            _answer_writes(writes, _CLOSED)
            raise
        offsets = [0] * count
        for (members, _), result in zip(shipped, results):
            if isinstance(result, BaseException):
                _answer_writes(writes, self._write_error(result))
                return
            for n, i in enumerate(members):
                offsets[i] = result.offset + n
        start = 0
        for batch, done in writes:
            if not done.done():
                done.set_result(offsets[start:start + len(batch)])
            start += len(batch)

    def _write_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, KafkaError):
            error = BrokerError(f"writing records to {self._broker.describe()} failed: {_describe_error(exc)}; "
                                "they are not known to be stored")
            error.__cause__ = exc
            return error
        return exc

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self._writer is not None:
            self._writer.cancel()
        for acknowledging in list(self._acknowledging):
            acknowledging.cancel()
        _answer_writes(self._writes, _CLOSED)
        if self._producer is not None:
            await self._producer.stop()

    async def _drain(self) -> None:
        while self._queue:
            records, self._queue = self._queue, []
            by_partition: dict[tuple[str, int], list[OutRecord]] = {}
            for r in records:
                by_partition.setdefault((r.topic, r.partition), []).append(r)
            for (topic, partition), run in by_partition.items():
                partitions = await self._producer.partitions_for(topic)
                if partition not in partitions:
                    raise BrokerError(
                        f"cannot write to partition {partition} of '{topic}' on "
                        f"{self._broker.describe()}: it has {len(partitions)} partition(s)")
                batch = self._producer.create_batch()
                for r in run:
                    while batch.append(timestamp=r.timestamp_ms, key=r.key, value=r.value,
                                       headers=list(r.headers)) is None:
                        # Full: ship it and start the next one (a record too large for an
                        # empty batch fails in aiokafka's size check instead of looping).
                        if batch.record_count() == 0:
                            raise BrokerError(
                                f"a record for '{topic}' is larger than the producer's "
                                "max_batch_size; raise producer.max_batch_size")
                        await self._ship(batch, topic, partition)
                        batch = self._producer.create_batch()
                if batch.record_count():
                    await self._ship(batch, topic, partition)

    async def _ship(self, batch: Any, topic: str, partition: int) -> None:
        batch.close()
        delivery = await self._producer.send_batch(batch, topic, partition=partition)
        self._deliveries.append(((topic, partition), delivery))


_CLOSED = BrokerError("the producer was closed before the records were acknowledged; they are not known "
                      "to be stored")


def _answer_writes(writes: list[tuple[Sequence[OutRecord], asyncio.Future[list[int]]]],
                   error: BaseException) -> None:
    for _, done in writes:
        if not done.done():
            done.set_exception(error)


class _WriteFailed(Exception):
    """A batch for ``topic``/``partition`` was refused with ``error`` (names the topic)."""

    def __init__(self, topic: str, partition: int, error: KafkaError) -> None:
        self.topic, self.partition, self.error = topic, partition, error


def _default_connect_timeout_s() -> float:
    """EDM_KAFKA_CONNECT_TIMEOUT_S (seconds) when set, else 30."""
    raw = os.environ.get("EDM_KAFKA_CONNECT_TIMEOUT_S", "").strip()
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise BrokerError(f"EDM_KAFKA_CONNECT_TIMEOUT_S={raw!r} is not a positive number of "
                          "seconds; set it to e.g. 30, or unset it")
    return value


def _security_kwargs(security: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(security) - _SECURITY)
    if unknown:
        raise BrokerError(f"unknown kafka security option(s): {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(_SECURITY))}")
    protocol = str(security.get("protocol", "PLAINTEXT")).upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise BrokerError(f"unknown kafka security protocol '{protocol}'; use PLAINTEXT, SSL, "
                          "SASL_PLAINTEXT or SASL_SSL")
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(security)
    if protocol.startswith("SASL"):
        mechanism = str(security.get("sasl_mechanism", "PLAIN")).upper()
        if mechanism not in _SASL_MECHANISMS:
            raise BrokerError(f"unknown kafka SASL mechanism '{mechanism}'; use "
                              f"{', '.join(_SASL_MECHANISMS)} ({_given(security)})")
        missing = [name for name in ("username", "password") if not security.get(name)]
        if missing:
            raise BrokerError(f"kafka security protocol {protocol} needs {' and '.join(missing)}; set "
                              "broker.security.username and password (e.g. password: "
                              f"\"{{{{ env.KAFKA_PASSWORD }}}}\") ({_given(security)})")
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = str(security["username"])
        kwargs["sasl_plain_password"] = str(security["password"])
    return kwargs


_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _ssl_context(security: dict[str, Any]) -> ssl.SSLContext:
    """The client TLS context: the CA file (else the system's CAs), and the client certificate
    and key when given. A file that cannot be used is named with its option."""
    for option in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = security.get(option)
        if path is not None and not os.path.isfile(str(path)):
            raise BrokerError(f"broker.security.{option} {str(path)!r} is not a readable file; give the "
                              f"path of the PEM file ({_given(security)})")
    if security.get("ssl_keyfile") and not security.get("ssl_certfile"):
        raise BrokerError("broker.security.ssl_keyfile needs ssl_certfile, the client certificate it "
                          f"belongs to ({_given(security)})")
    try:
        # What aiokafka's create_ssl_context does, without its INFO line on every start.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=security.get("ssl_cafile"))
        if security.get("ssl_certfile"):
            context.load_cert_chain(security["ssl_certfile"], security.get("ssl_keyfile"),
                                    security.get("ssl_key_password"))
        return context
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise BrokerError(f"cannot load the kafka TLS files: {exc}; check that ssl_cafile, ssl_certfile "
                          f"and ssl_keyfile are PEM files and ssl_key_password opens the key "
                          f"({_given(security)})") from exc


def _given(security: dict[str, Any]) -> str:
    """The security options as the user gave them, for messages: every one but the secrets."""
    shown = [f"{name}: {'(hidden)' if 'password' in name else value}" for name, value in security.items()]
    return f"you gave security: {{{', '.join(shown)}}}" if shown else "you gave no security options"


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (aiokafka wraps one raised after the handshake)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; the bound only guards against a cycle
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _refusal(server: str, exc: BaseException, security: dict[str, Any]) -> str | None:
    """What to do when ``server`` refused a connection for good (retrying cannot help), as one
    line; None for other errors (unreachable, a broker starting or stopping)."""
    given = _given(security)
    tls = _tls_error(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        reason = tls.verify_message or str(tls)
        if tls.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return (f"the TLS certificate of Kafka at {server} does not name that host ({reason}); "
                    "use in bootstrap_servers a host name the broker's certificate names "
                    f"({given})")
        ca = (f"it is not signed by the CA in ssl_cafile {security['ssl_cafile']!r}"
              if security.get("ssl_cafile") else "no ssl_cafile is set, so the system's CAs were used")
        return (f"the TLS certificate of Kafka at {server} is not trusted ({reason}): {ca}; set "
                f"broker.security.ssl_cafile to the CA certificate (PEM) that signed the broker's "
                f"certificate ({given})")
    if tls is not None and "ALERT" in (tls.reason or "") and any(
            word in tls.reason for word in ("CERTIFICATE", "UNKNOWN_CA", "ACCESS_DENIED")):
        # An alert from the broker about a certificate is about this client's own.
        what = (f"the client certificate in ssl_certfile {security['ssl_certfile']!r}" if security.get("ssl_certfile")
                else "a connection without a client certificate (no ssl_certfile is set)")
        return (f"Kafka at {server} refused {what} ({tls.reason.lower().replace('_', ' ')}); set "
                "broker.security.ssl_certfile and ssl_keyfile to a certificate signed by a CA the broker "
                f"trusts for clients, or connect to a listener that takes logins instead ({given})")
    if isinstance(exc, SaslAuthenticationFailed):
        mechanism = security.get("sasl_mechanism", "PLAIN")
        return (f"Kafka at {server} refused the login of user {security.get('username')!r} with "
                f"{mechanism} ({exc.args[0] if exc.args else exc}); check broker.security.username and "
                f"password, and that the user has {mechanism} credentials on the cluster ({given})")
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (f"Kafka at {server} does not accept SASL mechanism {security.get('sasl_mechanism', 'PLAIN')}; "
                f"set broker.security.sasl_mechanism to one its listener enables ({given})")
    return None


def _bound_ms(value: str | None, default: int | None) -> int | None:
    """A timestamp bound config value in ms; Long.MAX_VALUE (or more than 100 years): no bound."""
    if value is None or not value.lstrip("-").isdigit():
        return default
    ms = int(value)
    return None if ms >= 100 * 365 * 86_400_000 else ms


def _configs(spec: TopicSpec) -> dict[str, str]:
    """Compacted topics keep the latest value per key; event streams keep everything forever."""
    defaults = {"cleanup.policy": "compact"} if spec.compacted else {"retention.ms": "-1"}
    return {**defaults, **{k: str(v) for k, v in spec.config.items()}}


def _describe_error(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
