"""Test-only crash points: ``EDM_CRASH_AT=POINT:N`` makes the process SIGKILL itself the N-th
time the runtime reaches ``POINT`` (1-based), so reliability tests can kill a runner at an exact
place of an exact batch instead of racing a timer.

Points (called by the runtime's checkpoints and the state package, see docs/design/stateful.md
"Test hooks"). The module is a leaf below both (it imports only ``errors``), so the state
package reaches it without importing the runtime.
- ``before_produce``: a batch was processed, nothing of it was sent or written yet.
- ``after_produce``:  the batch's outputs and changelog records are durable on the broker
  (flushed, or appended on the local broker), the task's LMDB transaction is not committed
  and, on Kafka, the input offsets are not committed.
- ``store_write``:    inside the task's LMDB write transaction, after the store updates were
  put and before the transaction commits.

Invariant: without the variable ``reached`` costs one attribute test; it never raises. With a
malformed value importing this module raises an ``EdmError``: the runner refuses to start
(a test typo must not pass silently).
"""
from __future__ import annotations

import os
import signal

from edm_runner.errors import EdmError

ENV = "EDM_CRASH_AT"
POINTS = ("before_produce", "after_produce", "store_write")


def _parse(raw: str) -> tuple[str, int] | None:
    if not raw:
        return None
    point, _, count = raw.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise EdmError(f"{ENV}={raw!r} is not POINT:N with POINT one of "
                       f"{', '.join(POINTS)} and N >= 1")
    return point, int(count)


_target = _parse(os.environ.get(ENV, ""))
_seen = 0


def reached(point: str) -> None:
    """Mark that the runtime reached ``point``; SIGKILLs the process at the configured hit."""
    global _seen
    if _target is None or _target[0] != point:
        return
    _seen += 1
    if _seen == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
