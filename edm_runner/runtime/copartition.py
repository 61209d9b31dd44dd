"""Re-checking copartitioning against the broker before processing.

``edm validate`` checks the partition counts declared in the file; the topics that exist on
the broker may differ (created earlier, by hand, with another count). A join whose inputs are
not copartitioned silently misses matches, so the runner refuses to start instead.
"""
from __future__ import annotations

from edm_runner.brokers.base import Broker
from edm_runner.errors import EdmError
from edm_runner.graph.dag import Dag


class CopartitionError(EdmError):
    """Topics a join needs copartitioned have different partition counts on the broker."""


async def check_copartitioning(service: str, dag: Dag, broker: Broker) -> None:
    """Raises ``CopartitionError`` naming every join whose input topics have different
    partition counts on ``broker`` (a topic missing there counts as declared: provisioning
    creates it so)."""
    counts = await broker.list_topics()
    problems = []
    for group in dag.copartition:
        found = [(name, topic, counts.get(topic, dag.partitions.get(topic)))
                 for name, topic in zip(group.names, group.topics)]
        if len({n for _, _, n in found}) > 1:
            listing = ", ".join(f"{name!r} (topic {topic!r}) has {n} partition(s)" for name, topic, n in found)
            problems.append(f"{group.pos}: the join {group.node} needs its inputs copartitioned (equal "
                            f"partition counts), but on {broker.describe()}: {listing}")
    if problems:
        raise CopartitionError(
            f"service {service!r} cannot start: " + "; ".join(problems)
            + "\n    hint: give the topics the same partition count (recreate the smaller one, or "
              "re-key the stream with `group_by` into as many partitions as the other side)")
