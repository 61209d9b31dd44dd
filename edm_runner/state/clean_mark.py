"""The clean-shutdown mark of a task's local state (used under exactly-once).

Under exactly-once a task's local state counts only if the instance that last held it stopped
cleanly: its stores then hold committed updates only. ``release_task_state`` leaves the mark
(an empty file ``eos-clean`` in the task's directory, fsynced with the directory) when the task
is closed with no write pending; ``claim_task_state`` consumes it right after the task is
opened, before its restore, and wipes a task opened without it, so that restore reads the
committed changelog from zero.

Invariants:
- The mark is gone (and the directory fsynced) before the task processes anything: a crash
  from then on leaves the state unmarked, hence wiped at the next open.
- The mark is durable before ``release_task_state`` returns.
- Both functions block (fsync): call them in a worker thread.

Stores with ``changelog: false`` are rebuilt from their inputs after a wipe, which re-emits
their outputs: they are outside the exactly-once guarantee.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from edm_runner.brokers.base import TopicPartition
from edm_runner.state.task import TaskState

log = logging.getLogger("edm.state")

CLEAN_MARK = "eos-clean"


def claim_task_state(state: TaskState, changelogs: Mapping[str, TopicPartition | None]) -> bool:
    """Consumes the clean mark of ``state``; without one (and unless the state is fresh), wipes
    every store of ``changelogs`` (store name -> its changelog partition, None without one)
    and the checkpoint's input offsets. True when wiped."""
    mark = state.path / CLEAN_MARK
    if mark.exists():
        mark.unlink()
        _sync_dir(state.path)  # gone before anything is processed: a crash now means unclean
        return False
    if state.fresh:
        return False
    log.warning("local state at %s was not closed cleanly under exactly_once: wiping it; its "
                "stores are restored from their committed changelogs", state.path)
    for name, changelog in changelogs.items():
        state.wipe_store(name, changelog_tps=[changelog] if changelog is not None else [], forget_inputs=True)
    return True


def release_task_state(state: TaskState) -> None:
    """Leaves the clean mark in a task's state directory; call it when the task is closed
    with no write pending (its stores hold committed updates only)."""
    mark = state.path / CLEAN_MARK
    fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_dir(state.path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
