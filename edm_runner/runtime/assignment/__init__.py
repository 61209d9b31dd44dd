"""Partition assignment: which group member runs which task, and which keeps which standby.

One job per module (see docs/design/scaleout.md):
- ``strategies``: the pure strategies over tasks and members (balanced, round_robin, static,
  custom, standby placement) and what they take from the topology (standby counts, pins);
- ``messages``: the member metadata and assignment data members exchange, and their encoding;
- ``assignor``: ``EdmAssignor``, the ``GroupAssignor`` that runs a strategy in the group leader;
- ``consumer``: ``group_consumer``, a service's group consumer with its assignor.
"""
