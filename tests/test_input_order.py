"""A task reading several topics processes their records in timestamp order, so a join or a
merge does not depend on how fetches happen to interleave."""
from __future__ import annotations

from pathlib import Path

from cli_helpers import ok

TOPOLOGY = """
kind: microservice
name: ordered-merge
streams:
  left: {partitions: 2, key: string, value: json}
  right: {partitions: 2, key: string, value: json}
  merged: {partitions: 2, key: string, value: json}
pipelines:
  merge:
    from: [left, right]
    to: merged
"""


def test_a_merge_of_two_topics_comes_out_in_timestamp_order(tmp_path: Path) -> None:
    topology = tmp_path / "merge.yaml"
    topology.write_text(TOPOLOGY)
    common = ["-t", topology, "--state-dir", tmp_path]
    for stream, first in (("left", 1), ("right", 2)):  # left: t=1,3,5,...; right: t=2,4,6,...
        lines = "".join(f'{{"key": "k{k}", "value": {{"t": {t}}}, "timestamp": {t}}}\n'
                        for t in range(first, 400, 2) for k in range(3))
        ok("produce", stream, *common, stdin=lines)
    ok("run", topology, "--until-idle", "--state-dir", tmp_path)
    out = ok("consume", "merged", "--from-beginning", *common).lines()
    assert len(out) == 3 * 399
    for partition in (0, 1):
        for key in ("k0", "k1", "k2"):
            times = [e["value"]["t"] for e in sorted(out, key=lambda e: e["offset"])
                     if e["partition"] == partition and e["key"] == key]
            assert times == sorted(times)
        stamps = [e["timestamp"] for e in sorted(out, key=lambda e: e["offset"]) if e["partition"] == partition]
        assert stamps == sorted(stamps)
