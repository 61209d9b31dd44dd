"""Many events of one task in flight at once: the scheduler of a pipeline driven event by event
(docs/design/concurrency.md).

``drive(items, run, ordering, max_in_flight, key_of)`` awaits ``run(item)`` for every item of
one partition's run (a batch, in offset order) and returns when all are finished:

- ``partition``: one at a time, in order;
- ``key``: the items of one key one at a time, in order; different keys at once;
- ``none``: any order.

Invariants:
- at most ``max_in_flight`` runs are in flight at once;
- ``drive`` returns only when every run finished, so the batch's offsets (committed after it)
  never pass an unfinished item: the committed offset is always the lowest unfinished one, and
  a crash loses nothing (every item in flight is processed again after the restart: the
  repeats are bounded by the batch);
- when a run raises, the others are cancelled and ``drive`` raises that exception (the first
  one, not an exception group): the caller commits nothing of the batch.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Hashable, Literal, TypeVar

T = TypeVar("T")

Ordering = Literal["partition", "key", "none"]


async def drive(items: list[T], run: Callable[[T], Awaitable[None]], ordering: Ordering, max_in_flight: int,
                key_of: Callable[[T], Hashable]) -> None:
    """Awaits ``run`` for each of ``items`` under ``ordering`` (see the module docstring)."""
    if ordering == "partition" or max_in_flight == 1 or len(items) == 1:
        for item in items:
            await run(item)
        return
    chains: list[list[T]]
    if ordering == "key":
        by_key: dict[Hashable, list[T]] = {}
        for item in items:
            by_key.setdefault(key_of(item), []).append(item)
        chains = list(by_key.values())
    else:
        chains = [[item] for item in items]
    slots = asyncio.Semaphore(max_in_flight)

    async def chain(seq: list[T]) -> None:
        for item in seq:
            async with slots:
                await run(item)

    try:
        async with asyncio.TaskGroup() as group:
            for seq in chains:
                group.create_task(chain(seq))
    except BaseExceptionGroup as failed:
        raise _first(failed) from None


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
