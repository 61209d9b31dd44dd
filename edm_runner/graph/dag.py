"""A topology's processor DAG and its sub-topologies.

Nodes: ``source`` (reads one topic), ``step`` (one operator), ``branch`` (first matching arm
wins), ``sink`` (writes to topics: a pipeline's ``to`` or a ``repartition`` step).

Invariants:
- Every source node belongs to one pipeline and decodes its own events; steps and sources
  have at most one child, so events of a batch flow down a chain; only a branch fans out,
  and it hands each event to exactly one arm.
- A repartition step is a sink followed by a new source on the repartition topic: pipelines
  are cut there, and the connected components that remain are the sub-topologies (sources
  of the same topic are in the same sub-topology, as in Kafka Streams). Task N of a
  sub-topology will own partition N of each of its source topics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edm_runner.spec.model import BranchSpec, PipelineSpec, Pos, SerdeSpec, StepSpec, ToSpec, Topology

NodeKind = Literal["source", "step", "branch", "sink"]


@dataclass
class Node:
    """One processor node. ``topics`` are read (source) or written (sink). ``stream`` is the
    declared stream a source reads (None for an internal repartition topic). ``arms`` (branch
    only) are each arm's first node id in order, None for an arm that drops its events."""

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


@dataclass
class SubTopology:
    id: int
    nodes: list[str]
    source_topics: list[str]
    sink_topics: list[str]


@dataclass
class Dag:
    nodes: dict[str, Node]
    subtopologies: list[SubTopology]

    def sources(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "source"]

    def sinks(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == "sink"]

    def source_topics(self) -> list[str]:
        return list(dict.fromkeys(t for n in self.sources() for t in n.topics))


class _Builder:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.nodes: dict[str, Node] = {}

    def add(self, node: Node, parents: list[str]) -> str:
        self.nodes[node.id] = node
        for parent in parents:
            self.nodes[parent].children.append(node.id)
        return node.id

    def source(self, pipeline: str, node_id: str, stream_name: str, pos: Pos) -> str:
        spec = self.topology.streams[stream_name]
        return self.add(Node(node_id, "source", pipeline, f"source {stream_name}", pos,
                             topics=[spec.topic], stream=stream_name, serdes=(spec.key, spec.value)), [])

    def pipeline(self, p: PipelineSpec) -> None:
        tails = [self.source(p.name, f"{p.name}.from.{s}", s, p.pos) for s in p.sources]
        tails = self.steps(p.name, p.name, p.steps, tails)
        if p.branch:
            self.branch(p, tails)
        elif p.to is not None:
            self.sink(p.name, f"{p.name}.to", p.to, tails)

    def steps(self, pipeline: str, prefix: str, steps: list[StepSpec], tails: list[str]) -> list[str]:
        from edm_runner.operators.merge import merged_streams
        from edm_runner.operators.repartition import repartition_target

        for i, step in enumerate(steps):
            node_id = f"{prefix}.steps[{i}]"
            if step.op == "repartition":
                target = repartition_target(self.topology, step.config)
                self.add(Node(node_id, "sink", pipeline, f"repartition -> {target.topic}", step.pos,
                              topics=[target.topic], step=step), tails)
                source = Node(f"{node_id}.source", "source", pipeline, f"source {target.topic}",
                              step.pos, topics=[target.topic], stream=target.stream,
                              serdes=(target.key, target.value))
                tails = [self.add(source, [])]
                continue
            tails = [self.add(Node(node_id, "step", pipeline, step.op, step.pos, step=step), tails)]
            if step.op == "merge":
                for s in merged_streams(step.config):
                    self.nodes[self.source(pipeline, f"{node_id}.from.{s}", s, step.pos)].children.append(node_id)
        return tails

    def branch(self, p: PipelineSpec, tails: list[str]) -> None:
        node = Node(f"{p.name}.branch", "branch", p.name, "branch", p.branch[0].pos, branch=p.branch)
        self.add(node, tails)
        for j, arm in enumerate(p.branch):
            prefix = f"{p.name}.branch[{j}]"
            arm_tails = self.steps(p.name, prefix, arm.steps, [])
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
    """The DAG of ``topology`` (assumed valid: every referenced stream is declared)."""
    b = _Builder(topology)
    for p in topology.pipelines.values():
        b.pipeline(p)
    return Dag(b.nodes, _subtopologies(b.nodes))


def _subtopologies(nodes: dict[str, Node]) -> list[SubTopology]:
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
        for child in node.children:
            union(node.id, child)
        if node.kind == "source":
            for t in node.topics:
                union(node.id, by_topic.setdefault(t, node.id))
    groups: dict[str, list[str]] = {}
    for n in nodes:
        groups.setdefault(find(n), []).append(n)
    result = []
    for i, members in enumerate(groups.values()):
        sources = [t for m in members if nodes[m].kind == "source" for t in nodes[m].topics]
        sinks = [t for m in members if nodes[m].kind == "sink" for t in nodes[m].topics]
        result.append(SubTopology(i, members, list(dict.fromkeys(sources)), list(dict.fromkeys(sinks))))
    return result
