"""Re-checking copartitioning against the broker before processing.

``edm validate`` checks the file; the topics that exist on the broker may differ (created
earlier, by hand, with another count). A join whose inputs are not copartitioned silently
misses matches, so the runner refuses to start instead. What copartitioned means (partition
counts, key formats, partitioners) is ``language.partitioning.mismatch``, as in ``edm validate``;
only the partition counts come from the broker here.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Mapping

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError
from edm_runner.graph.dag import Dag
from edm_runner.language.partitioning import mismatch


class CopartitionError(EdmError):
    """Topics a join needs copartitioned are not, on the broker."""


async def check_copartitioning(service: str, dag: Dag, broker: Broker,
                               way_out: Callable[[Mapping[str, tuple[int, int]]], str]) -> None:
    """Raises ``CopartitionError`` naming every join whose inputs are not copartitioned with
    its other side on ``broker`` (a topic missing there counts as declared: provisioning
    creates it so). ``way_out`` says how to get past topics that exist with another partition
    count than declared (topic -> (on the broker, declared)): the runtime's rule, which knows
    the streams and how the user ran edm."""
    counts = await broker.list_topics()
    formats = {topic: t.key.format for topic, t in dag.internal_topics.items()}
    problems, hints, differ = [], [], {}
    for group in dag.copartition:
        sides = [replace(s, partitions=counts.get(s.topic, s.partitions)) for s in group.sides]
        for side in sides[:-1]:
            problem = mismatch(side, sides[-1], formats)
            if problem is not None:
                problems.append(f"{group.pos}: the join {group.node} needs its inputs copartitioned, "
                                f"but on {broker.describe()}: {problem[0]}")
                differ.update({s.topic: (s.partitions, declared.partitions)
                               for s, declared in zip(sides, group.sides) if s.partitions != declared.partitions})
                hints.append(problem[1])
    if problems:
        if differ:
            hints.insert(0, "; ".join(f"topic {topic!r} has {have} partition(s) on the broker but {declared} "
                                      f"are declared" for topic, (have, declared) in sorted(differ.items()))
                         + f". To get out: {way_out(differ)}")
        raise CopartitionError(f"service {service!r} cannot start: " + "; ".join(problems)
                               + "\n    hint: " + "; ".join(dict.fromkeys(hints)))
