"""Drawing topologies as Mermaid or Graphviz DOT, from the typed model.

A microservice draws its processor DAG: every declared stream (stadium shapes), internal
topic (dashed), table and store (cylinders), and each pipeline's steps in order; a business
topology draws each microservice as one node and the streams between them, so the
single-writer structure is visible at a glance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from edm_runner.graph.dag import Node, build_dag
from edm_runner.language.model import BusinessTopology, StepSpec, Topology


@dataclass
class Diagram:
    """A neutral graph: nodes (id -> (label, shape)), edges (src, dst, label, dotted), clusters.
    Dotted edges carry no events: a step and the store it keeps, a store and its changelog, a
    table read by a join."""

    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, str, bool]] = field(default_factory=list)
    clusters: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def node(self, node_id: str, label: str, shape: str = "box") -> str:
        self.nodes.setdefault(node_id, (label, shape))
        return node_id

    def edge(self, src: str, dst: str, label: str = "", dotted: bool = False) -> None:
        if (src, dst, label, dotted) not in self.edges:
            self.edges.append((src, dst, label, dotted))


def _ident(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9]", "_", p) for p in parts)


def _step_label(step: StepSpec) -> str:
    config = step.config
    if isinstance(config, dict):
        detail = ", ".join(f"{k}: {v}" for k, v in config.items() if not isinstance(v, (dict, list)))
    elif config is True:
        detail = ""
    else:
        detail = str(config)
    if len(detail) > 48:
        detail = detail[:45] + "..."
    return f"{step.op} {detail}".strip()


class _ServiceDrawing:
    """A microservice drawn from its processor DAG (``graph.dag``), so the picture is the
    topology that runs: every declared stream, every internal topic (repartitions and
    changelogs), every table, global table and store, and each pipeline's steps in a cluster.
    A DAG source is drawn as its topic; a ``to`` sink as edges into its streams; a join's
    ``side`` node as a labelled edge into the join."""

    def __init__(self, d: Diagram, topology: Topology) -> None:
        self.d = d
        self.topology = topology
        self.dag = build_dag(topology)
        self.stream_of_topic = {s.topic: name for name, s in topology.streams.items()}

    def topic(self, topic: str) -> str:
        name = self.stream_of_topic.get(topic)
        if name is None:
            return self.d.node(_ident("t", topic), topic, "internal")
        label = name if self.topology.streams[name].topic == name else f"{name} (topic {topic})"
        return self.d.node(_ident("s", name), label, "stream")

    def store(self, name: str) -> str:
        node = self.d.node(_ident("st", name), f"store {name}", "store")
        spec = self.topology.stores.get(name)
        if spec is None or spec.changelog:
            self.d.edge(node, self.topic(f"{self.topology.name}-{name}-changelog"), "changelog", True)
        return node

    def out(self, node: Node) -> str:
        """The drawn node events leave ``node`` from."""
        if node.kind == "source":
            return self.topic(node.topics[0])
        if node.kind == "table":
            return self.d.node(_ident("tb", node.table or node.id), node.label, "store")
        shape = "decision" if node.kind == "branch" else "box"
        label = _step_label(node.step) if node.step is not None else node.label
        drawn = _ident("n", node.id)
        if drawn not in self.d.nodes:
            self.d.node(drawn, label, shape)
            title = f"{self.topology.name} / {node.pipeline}"
            self.d.clusters.setdefault(_ident("p", node.pipeline), (title, []))[1].append(drawn)
        return drawn

    def into(self, src: str, node: Node, label: str = "") -> None:
        """Edges from the drawn node ``src`` into ``node``."""
        if node.kind == "sink" and node.step is None:  # a pipeline's `to`
            select = f"select: {node.to.select}" if node.to is not None and node.to.select else ""
            for topic in node.topics:
                self.d.edge(src, self.topic(topic), label or select)
        elif node.kind == "side":
            for child in node.children:
                self.into(src, self.dag.nodes[child], node.label)
        else:
            self.d.edge(src, self.out(node), label)

    def draw(self) -> None:
        d, topology, nodes = self.d, self.topology, self.dag.nodes
        for name in topology.streams:
            self.topic(topology.streams[name].topic)
        for node in nodes.values():
            if node.kind == "side" or (node.kind == "sink" and node.step is None):
                continue
            drawn = self.out(node)
            if node.kind == "sink":  # repartition, group_by: the step, then its topic
                for topic in node.topics:
                    d.edge(drawn, self.topic(topic))
            for child in node.children:
                label = ""
                if node.kind == "branch":
                    arm = node.branch[node.arms.index(child)] if child in node.arms else None
                    label = "otherwise" if arm is None or not arm.when else f"when {arm.when}"
                self.into(drawn, nodes[child], label)
            for table in node.links:
                d.edge(self.out(nodes[table]), drawn, "lookup", True)
            for store in node.stores:
                if node.kind != "table":
                    d.edge(drawn, self.store(store), "", True)
            config = node.step.config if node.step is not None and isinstance(node.step.config, dict) else {}
            if isinstance(config.get("global_table"), str):
                d.edge(_ident("gt", config["global_table"]), drawn, "lookup", True)
        for name, table in topology.global_tables.items():
            node = d.node(_ident("gt", name), f"global table {name}", "store")
            d.edge(self.topic(topology.streams[table.source].topic), node)
        for name in topology.stores:
            self.store(name)
        for name in (*topology.tables, *topology.global_tables):
            d.nodes.pop(_ident("st", name), None)  # a table is its own store (no changelog)


def diagram(topology: Topology | BusinessTopology) -> Diagram:
    d = Diagram()
    if isinstance(topology, BusinessTopology):
        for service in topology.services:
            node = d.node(_ident("svc", service.name), service.name, "service")
            reads = {s for p in service.pipelines.values() for s in p.sources}
            reads |= {n for p in service.pipelines.values() for st in p.steps if st.op == "merge"
                      for n in (st.config if isinstance(st.config, list) else [st.config])}
            writes = _written_streams(service)
            for name in sorted(reads):
                d.edge(d.node(_ident("t", service.streams[name].topic), service.streams[name].topic, "stream"), node)
            for name in sorted(writes):
                d.edge(node, d.node(_ident("t", service.streams[name].topic), service.streams[name].topic, "stream"))
        return d
    _ServiceDrawing(d, topology).draw()
    return d


def _written_streams(service: Topology) -> set[str]:
    written: set[str] = set()
    for pipeline in service.pipelines.values():
        if pipeline.to is not None:
            written.update(pipeline.to.targets())
        for branch in pipeline.branch:
            if branch.to is not None:
                written.update(branch.to.targets())
        for step in [*pipeline.steps, *(s for b in pipeline.branch for s in b.steps)]:
            if step.op == "repartition" and isinstance(step.config, dict) and step.config.get("to"):
                written.add(step.config["to"])
    return written


_MERMAID_SHAPES = {"stream": ("([", "])"), "internal": ("([", "])"), "box": ("[", "]"), "decision": ("{", "}"),
                   "service": ("[[", "]]"), "store": ("[(", ")]")}


def _mermaid_text(label: str) -> str:
    return '"' + label.replace('"', "#quot;") + '"'


def to_mermaid(topology: Topology | BusinessTopology) -> str:
    d = diagram(topology)
    lines = ["flowchart LR"]
    clustered = {m for _, members in d.clusters.values() for m in members}
    for node_id, (label, shape) in d.nodes.items():
        if node_id not in clustered:
            left, right = _MERMAID_SHAPES[shape]
            lines.append(f"  {node_id}{left}{_mermaid_text(label)}{right}")
    for cluster_id, (title, members) in d.clusters.items():
        lines.append(f"  subgraph {cluster_id}[{_mermaid_text(title)}]")
        for member in members:
            label, shape = d.nodes[member]
            left, right = _MERMAID_SHAPES[shape]
            lines.append(f"    {member}{left}{_mermaid_text(label)}{right}")
        lines.append("  end")
    for src, dst, label, dotted in d.edges:
        arrow = "-.->" if dotted else "-->"
        lines.append(f"  {src} {arrow}|{_mermaid_text(label)}| {dst}" if label else f"  {src} {arrow} {dst}")
    internal = [node_id for node_id, (_, shape) in d.nodes.items() if shape == "internal"]
    if internal:  # internal topics: dashed outline
        lines.append("  classDef internal stroke-dasharray: 4 4")
        lines.append(f"  class {','.join(internal)} internal")
    return "\n".join(lines) + "\n"


_DOT_SHAPES = {"stream": "cylinder", "internal": "cylinder, style=dashed", "box": "box", "decision": "diamond",
               "service": "component", "store": "box3d"}


def _dot_text(label: str) -> str:
    return '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(topology: Topology | BusinessTopology) -> str:
    d = diagram(topology)
    lines = [f"digraph {_dot_text(topology.name)} {{", "  rankdir=LR;"]
    clustered = {m for _, members in d.clusters.values() for m in members}
    for node_id, (label, shape) in d.nodes.items():
        if node_id not in clustered:
            lines.append(f"  {node_id} [label={_dot_text(label)}, shape={_DOT_SHAPES[shape]}];")
    for cluster_id, (title, members) in d.clusters.items():
        lines.append(f"  subgraph cluster_{cluster_id} {{")
        lines.append(f"    label={_dot_text(title)};")
        for member in members:
            label, shape = d.nodes[member]
            lines.append(f"    {member} [label={_dot_text(label)}, shape={_DOT_SHAPES[shape]}];")
        lines.append("  }")
    for src, dst, label, dotted in d.edges:
        attrs = [f"label={_dot_text(label)}"] * bool(label) + ["style=dashed"] * dotted
        lines.append(f"  {src} -> {dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
