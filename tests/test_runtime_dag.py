"""The processor DAG: nodes, merge wiring, branches, and sub-topologies cut at repartitions."""
from __future__ import annotations

import textwrap
from pathlib import Path

from edm_runner.graph.dag import build_dag
from edm_runner.language import load_file


def test_pipelines_are_cut_into_subtopologies_at_repartition_topics(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent("""
        kind: microservice
        name: svc
        streams:
          a: {topic: a, partitions: 2, key: string, value: json}
          b: {topic: b, partitions: 2, key: string, value: json}
          c: {topic: c, partitions: 1, key: string, value: json}
          out: {topic: out, partitions: 2, key: string, value: json}
        pipelines:
          one:
            from: a
            steps:
              - filter: value.ok
              - merge: b
              - repartition: {name: by-x, partitions: 4, key: value.x}
              - map_values: value.x
            branch:
              - when: value > 1
                to: out
              - otherwise: true
                steps: [{log: true}]
                to: out
          two:
            from: b
            to: out
          three:
            from: c
            to: out
    """))
    dag = build_dag(load_file(path))
    nodes = dag.nodes
    assert nodes["one.steps[1]"].kind == "step"
    assert nodes["one.steps[1].from.b"].children == ["one.steps[1]"]  # merge joins at its step
    assert nodes["one.steps[2]"].kind == "sink" and nodes["one.steps[2]"].topics == ["svc-by-x-repartition"]
    assert nodes["one.steps[2]"].children == []
    assert nodes["one.steps[2].source"].children == ["one.steps[3]"]
    assert nodes["one.branch"].arms == ["one.branch[0].to", "one.branch[1].steps[0]"]
    assert nodes["one.branch[1].steps[0]"].children == ["one.branch[1].to"]
    subs = {tuple(s.source_topics): s for s in dag.subtopologies}
    # a and b are one sub-topology: the merge joins them, and pipeline two also reads b
    assert set(subs) == {("a", "b"), ("svc-by-x-repartition",), ("c",)}
    assert subs[("a", "b")].sink_topics == ["svc-by-x-repartition", "out"]
    assert subs[("svc-by-x-repartition",)].sink_topics == ["out"]
    assert dag.source_topics() == ["a", "b", "svc-by-x-repartition", "c"]
