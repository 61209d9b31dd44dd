"""Drawing topologies as Mermaid or Graphviz DOT, from the typed model.

A microservice draws its streams (stadium shapes) and each pipeline's steps in order; a
business topology draws each microservice as one node and the streams between them, so the
single-writer structure is visible at a glance.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from edm_runner.spec.model import BusinessTopology, PipelineSpec, StepSpec, Topology


@dataclass
class Diagram:
    """A neutral graph: nodes (id -> (label, shape)), edges (src, dst, label), clusters."""

    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)
    clusters: dict[str, tuple[str, list[str]]] = field(default_factory=dict)

    def node(self, node_id: str, label: str, shape: str = "box") -> str:
        self.nodes.setdefault(node_id, (label, shape))
        return node_id

    def edge(self, src: str, dst: str, label: str = "") -> None:
        self.edges.append((src, dst, label))


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


def _stream(d: Diagram, name: str) -> str:
    return d.node(_ident("s", name), name, "stream")


def _chain(d: Diagram, prefix: str, steps: list[StepSpec], start: list[str], members: list[str]) -> list[str]:
    """Draws ``steps`` after the nodes ``start``; returns the last node ids."""
    heads = start
    for index, step in enumerate(steps):
        node = d.node(_ident(prefix, str(index)), _step_label(step))
        members.append(node)
        for head in heads:
            d.edge(head, node)
        if step.op == "merge":
            merged = step.config if isinstance(step.config, list) else [step.config]
            for name in merged:
                d.edge(_stream(d, name), node)
        heads = [node]
    return heads


def _pipeline(d: Diagram, service: str, pipeline: PipelineSpec) -> None:
    prefix = _ident("p", service, pipeline.name)
    members: list[str] = []
    heads = _chain(d, prefix, pipeline.steps, [_stream(d, s) for s in pipeline.sources], members)
    if pipeline.to is not None:
        label = f"select: {pipeline.to.select}" if pipeline.to.select else ""
        for target in pipeline.to.targets():
            for head in heads:
                d.edge(head, _stream(d, target), label)
    for index, branch in enumerate(pipeline.branch):
        condition = d.node(_ident(prefix, "branch", str(index)),
                           f"when {branch.when}" if branch.when else "otherwise", "decision")
        members.append(condition)
        for head in heads:
            d.edge(head, condition)
        ends = _chain(d, _ident(prefix, "b", str(index)), branch.steps, [condition], members)
        if branch.to is not None:
            for target in branch.to.targets():
                for end in ends:
                    d.edge(end, _stream(d, target))
    d.clusters[prefix] = (f"{service} / {pipeline.name}", members)


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
    for pipeline in topology.pipelines.values():
        _pipeline(d, topology.name, pipeline)
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


_MERMAID_SHAPES = {"stream": ("([", "])"), "box": ("[", "]"), "decision": ("{", "}"), "service": ("[[", "]]")}


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
    for src, dst, label in d.edges:
        arrow = f" -->|{_mermaid_text(label)}| " if label else " --> "
        lines.append(f"  {src}{arrow}{dst}")
    return "\n".join(lines) + "\n"


_DOT_SHAPES = {"stream": "cylinder", "box": "box", "decision": "diamond", "service": "component"}


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
    for src, dst, label in d.edges:
        attrs = f" [label={_dot_text(label)}]" if label else ""
        lines.append(f"  {src} -> {dst}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"
