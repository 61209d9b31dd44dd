"""Local state: LMDB stores per task, checkpoints, changelog restore, offline reading.

See docs/design/stateful.md. Operators use ``state.api``; the runtime uses ``TaskState``
and ``restore_task``; the CLI uses ``state.offline``.
"""
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
