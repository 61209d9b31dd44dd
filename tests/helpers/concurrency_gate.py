"""A user function's gate for tests/test_concurrency.py (the test and the service share one
process): the call for one event waits until the test releases it, and the test awaits the
moment every other event of that event's batch has finished."""
from __future__ import annotations

import asyncio
from typing import Any


class Gate:
    def __init__(self, held_seq: int, batch: range) -> None:
        self.held_seq = held_seq
        self.batch = batch
        self.finished = 0
        self.release = asyncio.Event()
        self.others_done = asyncio.Event()


_gate: Gate | None = None


def reset(held_seq: int, batch: range) -> Gate:
    global _gate
    _gate = Gate(held_seq, batch)
    return _gate


async def passing(value: Any) -> Any:
    gate = _gate
    seq = value["seq"]
    if seq == gate.held_seq:
        await gate.release.wait()
    elif seq in gate.batch:
        gate.finished += 1
        if gate.finished == len(gate.batch) - 1:
            gate.others_done.set()
    return value


async def until(event: asyncio.Event, running: asyncio.Task) -> None:
    """Awaits ``event``, or fails with the service's error if it stopped first."""
    waiting = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait({waiting, running}, return_when=asyncio.FIRST_COMPLETED)
    if waiting not in done:
        waiting.cancel()
        running.result()
        raise AssertionError("the service stopped before the gate was reached")
