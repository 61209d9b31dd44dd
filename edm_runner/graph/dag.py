"""A topology's processor DAG, its sub-topologies and what ``edm describe`` shows of them.

Nodes: ``source`` (reads one topic), ``step`` (one operator), ``branch`` (first matching arm
wins), ``sink`` (writes to topics: a pipeline's ``to``, a ``repartition`` or a ``group_by``),
``table`` (materializes a table from its source and emits its changes), ``side`` (hands a
join the events of its other side: the other stream, or the other table's changes).

Invariants:
- Every source node belongs to one pipeline (or table) and decodes its own events; steps and
  sources have at most one child, so events of a batch flow down a chain; only a branch
  (each event to exactly one arm) and a table node (a copy of each change per child) fan out.
- A repartition or group_by step is a sink followed by a new source on its topic: pipelines
  are cut there, and the connected components that remain are the sub-topologies (sources
  of the same topic are in the same sub-topology, as in Kafka Streams; a join is connected to
  its table's materialization or its other stream's source). Task N of a sub-topology owns
  partition N of each of its source topics and of its stores' changelogs.
- Sub-topology ids follow the first appearance of their nodes in the file, so the state
  directories they name survive adding a pipeline at the end of the file.
- An internal topic's serdes are decided here, once, by ``spec.partitioning`` (the rule the
  validator applies too): the sinks that write it and the sources that read it get them from
  ``Dag.internal_topics``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edm_runner.language.model import BranchSpec, PipelineSpec, Pos, StepSpec, ToSpec, Topology
from edm_runner.language.partitioning import INTERNAL_FORMAT, Side, internal_key_format, partitioner_name
from edm_runner.serde.spec import SerdeSpec

NodeKind = Literal["source", "step", "branch", "sink", "table", "side"]


@dataclass
class Node:
    """One processor node. ``topics`` are read (source) or written (sink). ``stream`` is the
    declared stream a source reads (None for an internal topic). ``arms`` (branch only) are
    each arm's first node id in order, None for an arm that drops its events. ``table``: the
    table a ``table`` node materializes. ``changes``: a source of a group_by topic fed by table
    changes (its values carry the old value, see ``operators.sink.GroupBySink``).
    ``links``: nodes in the same sub-topology without an event flow (a stream-table join and
    its table). ``stores``: the stores the step uses, by name (from its config)."""

    id: str
    kind: NodeKind
    pipeline: str
    label: str
    pos: Pos
    children: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    stream: str | None = None
    serdes: tuple[SerdeSpec, SerdeSpec] | None = None
    step: StepSpec | None = None
    to: ToSpec | None = None
    branch: list[BranchSpec] = field(default_factory=list)
    arms: list[str | None] = field(default_factory=list)
    table: str | None = None
    changes: bool = False
    links: list[str] = field(default_factory=list)
    stores: list[str] = field(default_factory=list)


@dataclass
class CopartitionGroup:
    """Topics a join needs copartitioned (``spec.partitioning``): its inputs, then its other
    side. ``names`` are what the user declared (a stream, a table, or the repartition or
    group_by name for an internal topic), index-aligned with ``topics`` and ``sides``."""

    node: str
    pos: Pos
    names: list[str]
    topics: list[str]
    sides: list[Side] = field(default_factory=list)


@dataclass(frozen=True)
class InternalTopic:
    """A repartition or group_by topic. ``key``/``value``: its serdes (``spec.partitioning``
    decides the key format); ``partitioner``: ``default``, ``round_robin`` or ``function 'NAME'``."""

    topic: str
    partitions: int
    key: SerdeSpec
    value: SerdeSpec
    partitioner: str
    pos: Pos


@dataclass
class SubTopology:
    """``tasks``: how many tasks run it (the largest partition count of its source topics)."""

    id: int
    nodes: list[str]
    source_topics: list[str]
    sink_topics: list[str]
    tasks: int = 1
    stores: list[str] = field(default_factory=list)


@dataclass
class Dag:
    nodes: dict[str, Node]
    subtopologies: list[SubTopology]
    partitions: dict[str, int] = field(default_factory=dict)  # every topic read or written
    internal_topics: dict[str, InternalTopic] = field(default_factory=dict)
    copartition: list[CopartitionGroup] = field(default_factory=list)

    def key_format(self, side: Side) -> str:
        """The key format of a side of a copartition group (an internal topic's as decided)."""
        internal = self.internal_topics.get(side.topic)
        return internal.key.format if internal is not None else side.key_format or INTERNAL_FORMAT

    def sources(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "source"]

    def sinks(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "sink"]

    def source_topics(self) -> list[str]:
        return list(dict.fromkeys(t for n in self.sources() for t in n.topics))

    def subtopology_of(self, node_id: str) -> SubTopology:
        for sub in self.subtopologies:
            if node_id in sub.nodes:
                return sub
        raise KeyError(node_id)


def _config(step: StepSpec) -> dict[str, Any]:
    return step.config if isinstance(step.config, dict) else {}


def step_stores(step: StepSpec) -> list[str]:
    """The stores a step uses by name: ``store:`` of an aggregation, the two buffers of a
    stream-stream join (``<name>-this``, ``<name>-other``)."""
    cfg = _config(step)
    if step.op == "join" and "stream" in cfg:
        return [f"{cfg['name']}-this", f"{cfg['name']}-other"]
    return [cfg["store"]] if isinstance(cfg.get("store"), str) else []


class _Builder:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, Node] = {}
        self.internal: dict[str, tuple[Side, str, Pos]] = {}  # topic -> (as a join sees it, value format, step)
        self.copartition: list[CopartitionGroup] = []

    def add(self, node: Node, parents: list[str]) -> str:
        self.nodes[node.id] = node
        for parent in parents:
            self.nodes[parent].children.append(node.id)
        return node.id

    def source(self, pipeline: str, node_id: str, stream_name: str, pos: Pos) -> str:
        spec = self.topology.streams[stream_name]
        return self.add(Node(node_id, "source", pipeline, f"source {stream_name}", pos,
                             topics=[spec.topic], stream=stream_name, serdes=(spec.key, spec.value)), [])

    def table(self, name: str) -> None:
        spec = self.topology.tables[name]
        owner = f"tables.{name}"
        src = self.source(owner, f"{owner}.from.{spec.source}", spec.source, spec.pos)
        self.add(Node(owner, "table", owner, f"table {name}", spec.pos, table=name, stores=[name]), [src])

    def pipeline(self, p: PipelineSpec) -> None:
        tails: list[str] = []
        inputs: list[tuple[str, Side]] = []  # (declared name, topic) of the events at this point
        for s in p.sources:
            if s in self.topology.tables:
                tails.append(f"tables.{s}")
            else:
                tails.append(self.source(p.name, f"{p.name}.from.{s}", s, p.pos))
            inputs.append((s, self.side(s)))
        from_table = all(s in self.topology.tables for s in p.sources)
        tails = self.steps(p.name, p.name, p.steps, tails, inputs, from_table)
        if p.branch:
            self.branch(p, tails, inputs, from_table)
        elif p.to is not None:
            self.sink(p.name, f"{p.name}.to", p.to, tails)

    def side(self, name: str) -> Side:
        """A declared stream or table as a join sees it."""
        table = self.topology.tables.get(name)
        spec = self.topology.streams[table.source if table else name]
        kind, what = ("table", "table") if table else ("stream", "stream")
        return Side(kind, f"{what} '{name}' (topic '{spec.topic}')", spec.topic, spec.partitions, spec.key.format)

    def steps(self, pipeline: str, prefix: str, steps: list[StepSpec], tails: list[str],
              inputs: list[tuple[str, Side]], from_table: bool) -> list[str]:
        from edm_runner.operators.merge import merged_streams
        from edm_runner.operators.api import repartition_topic

        for i, step in enumerate(steps):
            node_id = f"{prefix}.steps[{i}]"
            cfg = _config(step)
            if step.op in ("repartition", "group_by"):
                partitioner = partitioner_name(cfg.get("partitioner"))
                if "to" in cfg:
                    stream = self.topology.streams[cfg["to"]]
                    topic, serdes = stream.topic, (stream.key, stream.value)
                    side = replace(self.side(cfg["to"]), partitioner=partitioner, line=step.pos.line)
                    inputs = [(cfg["to"], side)]
                else:
                    topic = repartition_topic(self.topology.name, cfg["name"])
                    side = Side("internal", f"repartition topic '{topic}'", topic,
                                cfg.get("partitions") or self._partitions(inputs), cfg.get("key_format"),
                                partitioner, step.pos.line)
                    self.internal[topic] = (side, cfg.get("value_format", INTERNAL_FORMAT), step.pos)
                    serdes = None  # decided in build_dag, once every join it may feed is known
                    inputs = [(cfg["name"], side)]
                    stream = None
                self.add(Node(node_id, "sink", pipeline, f"{step.op} -> {topic}", step.pos,
                              topics=[topic], step=step, changes=from_table and step.op == "group_by"), tails)
                source = Node(f"{node_id}.source", "source", pipeline, f"source {topic}", step.pos,
                              topics=[topic], stream=stream and stream.name, serdes=serdes,
                              changes=from_table and step.op == "group_by")
                tails = [self.add(source, [])]
                continue
            node = Node(node_id, "step", pipeline, step.op, step.pos, step=step, stores=step_stores(step))
            tails = [self.add(node, tails)]
            if step.op == "merge":
                for s in merged_streams(step.config):
                    self.nodes[self.source(pipeline, f"{node_id}.from.{s}", s, step.pos)].children.append(node_id)
                    inputs = inputs + [(s, self.side(s))]
            elif step.op == "join" or isinstance(cfg.get("table"), str):
                self.join(pipeline, node, cfg, inputs, from_table and step.op == "join")
        return tails

    def join(self, pipeline: str, node: Node, cfg: dict[str, Any], inputs: list[tuple[str, Side]],
             table_table: bool) -> None:
        """Connects a join (or any step reading a ``table:``) to its other side, and records
        the topics it needs copartitioned. ``table_table``: the other table's changes enter
        the join (a table-table join); otherwise the table is only read."""
        topology = self.topology
        table = cfg.get("table")
        other = cfg.get("stream")
        if isinstance(table, str) and table in topology.tables:
            if table_table:
                side = self.add(Node(f"{node.id}.other", "side", pipeline, f"changes of {table}", node.pos),
                                [f"tables.{table}"])
                self.nodes[side].children.append(node.id)
            else:
                node.links.append(f"tables.{table}")
            other_name = table
        elif node.step.op == "join" and isinstance(other, str) and other in topology.streams:
            src = self.source(pipeline, f"{node.id}.from.{other}", other, node.pos)
            side = self.add(Node(f"{node.id}.other", "side", pipeline, f"other side {other}", node.pos), [src])
            self.nodes[side].children.append(node.id)
            other_name = other
        else:
            return  # a global table (no copartitioning) or an invalid config the validator reports
        sides = [s for _, s in inputs] + [self.side(other_name)]
        self.copartition.append(CopartitionGroup(node.id, node.pos, [n for n, _ in inputs] + [other_name],
                                                 [s.topic for s in sides], sides))

    @staticmethod
    def _partitions(inputs: list[tuple[str, Side]]) -> int:
        """A group_by's default partition count: the most of the topics feeding it (as the
        validator computes it, and as Kafka Streams sizes repartition topics)."""
        return max(s.partitions or 1 for _, s in inputs)

    def branch(self, p: PipelineSpec, tails: list[str], inputs: list[tuple[str, str]], from_table: bool) -> None:
        node = Node(f"{p.name}.branch", "branch", p.name, "branch", p.branch[0].pos, branch=p.branch)
        self.add(node, tails)
        for j, arm in enumerate(p.branch):
            prefix = f"{p.name}.branch[{j}]"
            arm_tails = self.steps(p.name, prefix, arm.steps, [], inputs, from_table)
            first = f"{prefix}.steps[0]" if arm.steps else None
            if arm.to is not None:
                sink = self.sink(p.name, f"{prefix}.to", arm.to, arm_tails)
                first = first or sink
            node.arms.append(first)
            if first is not None:
                node.children.append(first)

    def sink(self, pipeline: str, node_id: str, to: ToSpec, tails: list[str]) -> str:
        topics = [self.topology.streams[s].topic for s in to.targets()]
        label = f"to {to.stream}" if to.stream else f"to one of {', '.join(to.streams)}"
        return self.add(Node(node_id, "sink", pipeline, label, to.pos, topics=topics, to=to), tails)


def build_dag(topology: Topology) -> Dag:
    """The DAG of ``topology`` (assumed valid: every referenced stream and table is declared)."""
    b = _Builder(topology)
    for name in topology.tables:
        b.table(name)
    for p in topology.pipelines.values():
        b.pipeline(p)
    groups = [g.sides for g in b.copartition]
    internal = {topic: InternalTopic(topic, side.partitions or 1,
                                     SerdeSpec(internal_key_format(topic, side.key_format, groups)),  # type: ignore[arg-type]
                                     SerdeSpec(value), side.partitioner, pos)  # type: ignore[arg-type]
                for topic, (side, value, pos) in b.internal.items()}
    for node in b.nodes.values():
        if node.kind == "source" and node.topics[0] in internal:
            t = internal[node.topics[0]]
            node.serdes = (t.key, t.value)
    partitions = {s.topic: s.partitions for s in topology.streams.values()}
    partitions.update({topic: t.partitions for topic, t in internal.items()})
    return Dag(b.nodes, _subtopologies(b.nodes, partitions), partitions, internal, b.copartition)


def _subtopologies(nodes: dict[str, Node], partitions: dict[str, int]) -> list[SubTopology]:
    parent = {n: n for n in nodes}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    by_topic: dict[str, str] = {}
    for node in nodes.values():
        for child in node.children + node.links:
            union(node.id, child)
        if node.kind == "source":
            for t in node.topics:
                union(node.id, by_topic.setdefault(t, node.id))
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    order = list(nodes)

    def first_appearance(members: list[str]) -> tuple[float, int, int]:
        # Nodes without a position (built in code) sort after those with one.
        return min((nodes[m].pos.line or float("inf"), nodes[m].pos.col, order.index(m)) for m in members)

    result = []
    for i, members in enumerate(sorted(groups.values(), key=first_appearance)):
        sources = [t for m in members if nodes[m].kind == "source" for t in nodes[m].topics]
        sinks = [t for m in members if nodes[m].kind == "sink" for t in nodes[m].topics]
        source_topics = list(dict.fromkeys(sources))
        stores = list(dict.fromkeys(s for m in members for s in nodes[m].stores))
        tasks = max((partitions.get(t, 1) for t in source_topics), default=1)
        result.append(SubTopology(i, members, source_topics, list(dict.fromkeys(sinks)), tasks, stores))
    return result


def describe(topology: Topology) -> dict[str, Any]:
    """What ``edm describe`` shows, as JSON-able data: sub-topologies (their source and sink
    topics, nodes, stores and task count), tasks (``<sub>_<partition>``), internal topics
    (repartition and changelog topics with their partition counts, key and value formats),
    copartition groups (with each side's key format and partitioner), and global tables.
    A changelog's records are a store's: JSON keys (a window store appends the window's
    start, a session store its start and end) and JSON values."""
    dag = build_dag(topology)
    changelogs: dict[str, dict[str, Any]] = {}
    subs = []
    for sub in dag.subtopologies:
        for store in sub.stores:
            spec = topology.stores.get(store)
            if (spec is None or spec.changelog) and store not in topology.tables:
                kind = spec.type if spec is not None else "window"  # undeclared: a stream join's buffers
                key = {"key_value": "json", "window": "json+window", "session": "json+session"}[kind]
                changelogs[f"{topology.name}-{store}-changelog"] = {
                    "partitions": sub.tasks, "kind": "changelog", "compacted": True, "key": key, "value": "json"}
        subs.append({"id": sub.id, "source_topics": sub.source_topics, "sink_topics": sub.sink_topics,
                     "tasks": sub.tasks, "stores": sub.stores,
                     "nodes": [{"id": n, "kind": dag.nodes[n].kind, "label": dag.nodes[n].label}
                               for n in sub.nodes]})
    return {
        "service": topology.name,
        "subtopologies": subs,
        "tasks": [f"{sub.id}_{p}" for sub in dag.subtopologies for p in range(sub.tasks)],
        "internal_topics": {**{t: {"partitions": i.partitions, "kind": "repartition", "key": i.key.format,
                                   "value": i.value.format, "partitioner": i.partitioner}
                               for t, i in dag.internal_topics.items()},
                            **changelogs},
        "copartition_groups": [{"join": g.node, "streams": g.names, "topics": g.topics,
                                "partitions": [dag.partitions.get(t) for t in g.topics],
                                "key_formats": [dag.key_format(s) for s in g.sides],
                                "partitioners": [s.partitioner for s in g.sides]}
                               for g in dag.copartition],
        "global_tables": {name: topology.streams[t.source].topic for name, t in topology.global_tables.items()},
    }
