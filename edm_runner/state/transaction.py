"""Where a task's store transaction stands: started, prepared, committed or failed.

A task's stores buffer their updates (``state.stores``) from one commit to the next; those
buffered updates are the task's *store transaction*. As Quix Streams' ``PartitionTransaction``
it has an explicit status, and the runtime's checkpoint (``runtime.checkpoint``) drives it:

    STARTED --prepare--> PREPARED --commit--> COMMITTED
    STARTED --commit--> COMMITTED                (no changelog to send first)
    STARTED | PREPARED --fail--> FAILED          (the LMDB write failed; abort next)
    STARTED | PREPARED | FAILED --abort--> FAILED  (the updates are dropped)

- ``STARTED``: the stores take writes (processing).
- ``PREPARED``: its changelog records were taken (``TaskState.prepare``) and are on their way
  to the broker; the buffers are sealed: a write now would be missing from the changelog.
- ``COMMITTED``: written to LMDB with its checkpoint; the task goes on with a new transaction.
- ``FAILED``: its LMDB write failed (the buffers stay, sealed, until the caller aborts), or it
  was aborted (its updates dropped); the task goes on with a new transaction after ``abort``.

Invariant: an illegal move (a write or a prepare after prepare, a commit after a failure, any
move of an ended transaction) raises ``TransactionStateError``, an ``InternalError``: it is a
bug in edm, and the service stops with nothing of the transaction committed.
"""
from __future__ import annotations

import enum
from typing import Any, NoReturn

from edm_runner.errors import InternalError


class TxnStatus(enum.Enum):
    STARTED = "started"
    PREPARED = "prepared"
    COMMITTED = "committed"
    FAILED = "failed"


class TransactionStateError(InternalError):
    """A store transaction was asked for a move its status does not allow."""


_STARTED, _PREPARED, _COMMITTED, _FAILED = TxnStatus
# move -> (the statuses it may start from, the status it ends in)
_MOVES: dict[str, tuple[frozenset[TxnStatus], TxnStatus]] = {
    "prepare": (frozenset({_STARTED}), _PREPARED),
    "commit": (frozenset({_STARTED, _PREPARED}), _COMMITTED),
    "fail": (frozenset({_STARTED, _PREPARED}), _FAILED),
    "abort": (frozenset({_STARTED, _PREPARED, _FAILED}), _FAILED),
}


class StoreTransaction:
    """The status of one task's store transaction (see the module docstring). ``where`` names
    the task (its state directory) in errors."""

    __slots__ = ("status", "where")

    def __init__(self, where: object) -> None:
        self.status = TxnStatus.STARTED
        self.where = where

    def move(self, move: str) -> None:
        """Applies ``move`` (prepare, commit, fail, abort) or raises ``TransactionStateError``."""
        self.check(move)
        self.status = _MOVES[move][1]

    def check(self, move: str) -> None:
        """Raises ``TransactionStateError`` unless ``move`` is allowed now (the status stays)."""
        allowed = _MOVES[move][0]
        if self.status not in allowed:
            raise TransactionStateError(
                f"{move} of the store transaction of {self.where}, which is {self.status.value} "
                f"(allowed from {', '.join(sorted(s.value for s in allowed))}): a bug in edm")


class SealedWrites(dict):  # type: ignore[type-arg]
    """A store's write buffer once its transaction is prepared or failed: reads as the dict it
    was, refuses every change with ``TransactionStateError``. Reads cost what a dict's do; the
    unsealed buffer of processing is a plain dict, so the check costs processing nothing."""

    __slots__ = ("store",)

    def __init__(self, writes: dict[bytes, bytes | None], store: str) -> None:
        super().__init__(writes)
        self.store = store

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TransactionStateError(f"store {self.store!r} was written after its transaction was prepared "
                                    "(or failed): a bug in edm")

    __setitem__ = __delitem__ = pop = popitem = setdefault = update = clear = _refuse  # type: ignore[assignment]
