"""The DAG of stateful topologies: tables, joins, group_by cuts, stable sub-topology ids, and
the data ``edm describe`` shows."""
from __future__ import annotations

from pathlib import Path

from edm_runner.graph.dag import build_dag, describe
from edm_runner.language.model import (PipelineSpec, Pos, SerdeSpec, StepSpec, StoreSpec, StreamSpec, TableSpec, ToSpec,
                                   Topology)


def _pos(line: int) -> Pos:
    return Pos("t.yaml", line, 3)


def _topology(tmp_path: Path,
              pipelines: list[tuple[int, str, list[str], list[tuple[str, dict]], str | None]]) -> Topology:
    streams = {"users": (4, "entity"), "activity": (4, "keyed"), "clicks": (4, "keyed"),
               "orders": (2, "keyed"), "out": (4, "keyed"), "countries": (1, "entity")}
    return Topology(
        name="svc", source_file=tmp_path / "t.yaml",
        streams={n: StreamSpec(n, n, p, t, SerdeSpec("string"), SerdeSpec("json")) for n, (p, t) in streams.items()},
        stores={"counts": StoreSpec("counts"), "revenue": StoreSpec("revenue", "window", changelog=False)},
        tables={"users-table": TableSpec("users-table", "users", pos=_pos(10))},
        global_tables={"countries-g": TableSpec("countries-g", "countries", is_global=True, pos=_pos(12))},
        pipelines={name: PipelineSpec(name, sources,
                                      [StepSpec(op, cfg, _pos(line + 1 + i)) for i, (op, cfg) in enumerate(steps)],
                                      ToSpec(stream=to) if to else None, pos=_pos(line))
                   for line, name, sources, steps, to in pipelines})


def _full(tmp_path: Path) -> Topology:
    return _topology(tmp_path, [
        (20, "enrich", ["activity"], [("join", {"table": "users-table", "kind": "left", "value": "value"}),
                                      ("join", {"global_table": "countries-g", "key": "value.c", "value": "value"})],
         "out"),
        (30, "pairs", ["clicks"], [("join", {"stream": "activity", "name": "ca", "within": "5m", "value": "value"})],
         "out"),
        (40, "revenue", ["orders"], [("group_by", {"key": "value.customer", "name": "by-customer"}),
                                     ("window", {"type": "tumbling", "size": "1h"}),
                                     ("aggregate", {"store": "revenue", "initializer": "0", "aggregator": "1"})],
         "out"),
        (50, "user-changes", ["users-table"], [("group_by_key", {}), ("count", {"store": "counts"})], "out"),
    ])


def test_tables_joins_and_group_by_shape_the_subtopologies(tmp_path: Path) -> None:
    dag = build_dag(_full(tmp_path))
    nodes = dag.nodes
    assert nodes["tables.users-table"].kind == "table"
    assert nodes["tables.users-table.from.users"].children == ["tables.users-table"]
    # a pipeline from a table starts at the table node (its events are table changes)
    assert nodes["tables.users-table"].children == ["user-changes.steps[0]"]
    # the stream-stream join receives the other stream through a side node
    assert nodes["pairs.steps[0].from.activity"].children == ["pairs.steps[0].other"]
    assert nodes["pairs.steps[0].other"].kind == "side"
    assert nodes["pairs.steps[0].other"].children == ["pairs.steps[0]"]
    assert nodes["pairs.steps[0]"].stores == ["ca-this", "ca-other"]
    # group_by cuts the pipeline at its internal topic, partitions defaulting to the source's
    assert nodes["revenue.steps[0]"].kind == "sink"
    assert {t: (i.partitions, i.key.format, i.value.format) for t, i in dag.internal_topics.items()} == {
        "svc-by-customer-repartition": (2, "json", "json")}  # feeds no join: json keys
    subs = [(s.id, s.source_topics, s.tasks, s.stores) for s in dag.subtopologies]
    # users (the table), activity (joined with it, and the other side of pairs) and clicks are
    # one sub-topology; ids follow the first appearance in the file (the table at line 10).
    assert subs == [
        (0, ["users", "activity", "clicks"], 4, ["users-table", "ca-this", "ca-other", "counts"]),
        (1, ["orders"], 2, []),
        (2, ["svc-by-customer-repartition"], 2, ["revenue"]),
    ]
    groups = [(g.node, g.names, g.topics) for g in dag.copartition]
    assert groups == [("enrich.steps[0]", ["activity", "users-table"], ["activity", "users"]),
                      ("pairs.steps[0]", ["clicks", "activity"], ["clicks", "activity"])]


def test_subtopology_ids_survive_adding_a_pipeline_at_the_end(tmp_path: Path) -> None:
    base = [(20, "a", ["orders"], [("count", {"store": "counts"})], "out"),
            (30, "b", ["clicks"], [("filter", "true")], "out")]
    before = {tuple(s.source_topics): s.id for s in build_dag(_topology(tmp_path, base)).subtopologies}
    after = {tuple(s.source_topics): s.id for s in build_dag(_topology(
        tmp_path, base + [(40, "c", ["activity"], [], "out")])).subtopologies}
    assert before == {("orders",): 1, ("clicks",): 2, ("users",): 0}
    assert after == {**before, ("activity",): 3}


def test_table_table_join_gets_the_other_tables_changes(tmp_path: Path) -> None:
    topology = _topology(tmp_path, [(20, "tt", ["users-table"], [("join", {"table": "other-table", "kind": "outer",
                                                                          "value": "value"})], "out")])
    topology.tables["other-table"] = TableSpec("other-table", "activity", pos=_pos(11))
    dag = build_dag(topology)
    assert dag.nodes["tables.other-table"].children == ["tt.steps[0].other"]
    assert dag.nodes["tt.steps[0].other"].children == ["tt.steps[0]"]
    assert dag.nodes["tables.users-table"].children == ["tt.steps[0]"]


def test_describe_lists_tasks_internal_topics_and_copartition_groups(tmp_path: Path) -> None:
    d = describe(_full(tmp_path))
    assert d["tasks"] == [f"0_{p}" for p in range(4)] + ["1_0", "1_1", "2_0", "2_1"]
    assert d["internal_topics"] == {
        "svc-by-customer-repartition": {"partitions": 2, "kind": "repartition", "key": "json", "value": "json",
                                        "partitioner": "default"},
        # users-table: its source is its changelog; revenue: changelog false
        "svc-ca-this-changelog": {"partitions": 4, "kind": "changelog", "compacted": True,
                                  "key": "json+window", "value": "json"},
        "svc-ca-other-changelog": {"partitions": 4, "kind": "changelog", "compacted": True,
                                   "key": "json+window", "value": "json"},
        "svc-counts-changelog": {"partitions": 4, "kind": "changelog", "compacted": True,
                                 "key": "json", "value": "json"},
    }
    assert d["copartition_groups"][0] == {"join": "enrich.steps[0]", "streams": ["activity", "users-table"],
                                          "topics": ["activity", "users"], "partitions": [4, 4],
                                          "key_formats": ["string", "string"],
                                          "partitioners": ["default", "default"]}
    assert d["global_tables"] == {"countries-g": "countries"}
    assert [s["id"] for s in d["subtopologies"]] == [0, 1, 2]
