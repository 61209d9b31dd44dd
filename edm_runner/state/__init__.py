"""Local state: LMDB stores per task, checkpoints, changelog restore, offline reading.

See docs/design/stateful.md. Operators use ``state.api``; the runtime uses ``TaskState``
and ``restore_task``; the CLI uses ``state.offline``.

Nothing is imported eagerly: the operators import ``state.api`` and ``state.keys`` without
loading lmdb; the names below load their module on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edm_runner.state.offline import OfflineState, open_readonly, state_paths, wipe
    from edm_runner.state.progress import RestoreProgress
    from edm_runner.state.restore import INPUT_HEADER, RestoreResult, restore_task
    from edm_runner.state.stores import LmdbKeyValueStore, LmdbSessionStore, LmdbWindowStore
    from edm_runner.state.task import (Checkpoint, IncompatibleStoreError, TaskState, global_dir,
                                       service_dir, task_dir)

__all__ = [
    "Checkpoint", "INPUT_HEADER", "IncompatibleStoreError", "LmdbKeyValueStore",
    "LmdbSessionStore", "LmdbWindowStore", "OfflineState", "RestoreProgress", "RestoreResult",
    "TaskState", "global_dir", "open_readonly", "restore_task", "service_dir",
    "state_paths", "task_dir", "wipe",
]

_HOMES = {
    **dict.fromkeys(["OfflineState", "open_readonly", "state_paths", "wipe"], "offline"),
    "RestoreProgress": "progress",
    **dict.fromkeys(["INPUT_HEADER", "RestoreResult", "restore_task"], "restore"),
    **dict.fromkeys(["LmdbKeyValueStore", "LmdbSessionStore", "LmdbWindowStore"], "stores"),
    **dict.fromkeys(["Checkpoint", "IncompatibleStoreError", "TaskState", "global_dir", "service_dir",
                     "task_dir"], "task"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
