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

``EDM_HOLD_AT=POINT:FILE`` makes the runtime wait at ``POINT`` (without blocking the event
loop) until FILE exists, so a test can look at a runner in the middle of something. Points:
- ``restore``: a store's restore fetched its next records and has not written them yet (what
  was restored so far is readable, e.g. by a stale HTTP read).

Invariant: without the variables ``reached`` and ``held`` cost one attribute test; they never
raise. With a malformed value importing this module raises an ``EdmError``: the runner refuses
to start (a test typo must not pass silently).
"""
from __future__ import annotations

import asyncio
import os
import signal

from edm_runner.errors import EdmError

ENV = "EDM_CRASH_AT"
POINTS = ("before_produce", "after_produce", "store_write")
HOLD_ENV = "EDM_HOLD_AT"
HOLD_POINTS = ("restore",)


def _parse(raw: str) -> tuple[str, int] | None:
    if not raw:
        return None
    point, _, count = raw.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise EdmError(f"{ENV}={raw!r} is not POINT:N with POINT one of "
                       f"{', '.join(POINTS)} and N >= 1")
    return point, int(count)


def _parse_hold(raw: str) -> tuple[str, str] | None:
    if not raw:
        return None
    point, _, path = raw.partition(":")
    if point not in HOLD_POINTS or not path:
        raise EdmError(f"{HOLD_ENV}={raw!r} is not POINT:FILE with POINT one of {', '.join(HOLD_POINTS)}")
    return point, path


_target = _parse(os.environ.get(ENV, ""))
_hold = _parse_hold(os.environ.get(HOLD_ENV, ""))
_seen = 0


def reached(point: str) -> None:
    """Mark that the runtime reached ``point``; SIGKILLs the process at the configured hit."""
    global _seen
    if _target is None or _target[0] != point:
        return
    _seen += 1
    if _seen == _target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


async def held(point: str) -> None:
    """Returns at once unless ``EDM_HOLD_AT`` names ``point``; then once its file exists."""
    if _hold is None or _hold[0] != point:
        return
    while not os.path.exists(_hold[1]):
        await asyncio.sleep(0.02)  # a file another process creates: nothing to await but it
