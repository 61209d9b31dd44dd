"""Event-schema evolution: each stream's declared JSON Schemas compared with their previous
versions (`edm schema check`) and recorded (`edm schema lock`).

- ``declared``: the schemas a topology declares now, and those of a previous version read from a
  directory or a git revision (the topology and its schema files as they were there).
- ``lock``: the lock file ``edm.schemas.lock.json`` beside the topology, every version of every
  schema kept (the history the transitive modes check against).
- ``check``: what breaks under each stream's ``compatibility`` mode (``language.compat``), as
  findings located in the current schema file (``locate``).

A schema is identified by its subject: the service, the topic and the part (key or value), as
Schema Registry names subjects ``<topic>-key`` and ``<topic>-value``.
"""
