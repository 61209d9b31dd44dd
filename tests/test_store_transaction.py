"""A task's store transaction has an explicit status (started, prepared, committed, failed), on
real LMDB files: every legal move works, every illegal one raises an InternalError, never silently
(docs/design/checkpoint.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edm_runner.brokers.base import TopicPartition
from edm_runner.errors import EdmError, InternalError
from edm_runner.state import Checkpoint, TaskState, task_dir
from edm_runner.state.transaction import StoreTransaction, TransactionStateError, TxnStatus

IN = TopicPartition("orders", 0)

STARTED, PREPARED, COMMITTED, FAILED = TxnStatus


def open_task(tmp_path: Path, **kwargs) -> TaskState:
    return TaskState.open(task_dir(tmp_path, "svc", 0, 0), **kwargs)


@pytest.mark.parametrize("start, move, end", [
    (STARTED, "prepare", PREPARED), (STARTED, "commit", COMMITTED), (PREPARED, "commit", COMMITTED),
    (STARTED, "fail", FAILED), (PREPARED, "fail", FAILED),
    (STARTED, "abort", FAILED), (PREPARED, "abort", FAILED), (FAILED, "abort", FAILED),
])
def test_legal_moves(start: TxnStatus, move: str, end: TxnStatus) -> None:
    txn = StoreTransaction("task 0_0")
    txn.status = start
    txn.move(move)
    assert txn.status is end


@pytest.mark.parametrize("start, move", [
    (PREPARED, "prepare"), (FAILED, "prepare"), (FAILED, "commit"), (FAILED, "fail"),
    (COMMITTED, "prepare"), (COMMITTED, "commit"), (COMMITTED, "abort"),
])
def test_illegal_moves_raise_an_internal_error(start: TxnStatus, move: str) -> None:
    txn = StoreTransaction("task 0_0")
    txn.status = start
    with pytest.raises(InternalError, match=f"{move} of the store transaction of task 0_0, which is {start.value}"):
        txn.move(move)
    assert txn.status is start


def test_prepare_then_commit_writes_and_starts_the_next_transaction(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        kv.put("a", 1)
        first = st.transaction
        assert st.prepare() == [("counts", b'"a"', b"1")]
        assert first.status is PREPARED
        assert kv.get("a") == 1  # reads see the prepared writes
        st.commit(Checkpoint(inputs={IN: 1}))
        assert first.status is COMMITTED
        assert st.transaction is not first and st.transaction.status is STARTED
        kv.put("a", 2)  # the next transaction takes writes
        st.commit(Checkpoint(inputs={IN: 2}))  # committing without prepare: no changelog to send
    with open_task(tmp_path) as st:
        assert st.register("counts", "key_value").get("a") == 2


def test_a_write_after_prepare_is_refused(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        win = st.register("hourly", "window", {"size": 10})
        kv.put("a", 1)
        st.prepare()
        with pytest.raises(TransactionStateError, match="store 'counts' was written after its transaction"):
            kv.put("b", 1)
        with pytest.raises(TransactionStateError, match="store 'hourly' was written after"):
            win.put("k", 0, 5)
        with pytest.raises(TransactionStateError, match="prepare of the store transaction .* which is prepared"):
            st.prepare()
        st.commit(Checkpoint())
        assert kv.get("a") == 1 and kv.get("b") is None


def test_abort_of_a_prepared_transaction_drops_it(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        kv.put("a", 1)
        st.prepare()
        st.abort()
        assert st.transaction.status is STARTED and kv.get("a") is None
        kv.put("a", 3)
        st.commit(Checkpoint())
        assert kv.get("a") == 3


def test_a_failed_write_refuses_commit_and_writes_until_aborted(tmp_path: Path) -> None:
    with open_task(tmp_path, map_size=1 << 20) as st:
        kv = st.register("counts", "key_value")
        kv.put("a", 1)
        st.commit(Checkpoint(inputs={IN: 1}))
        for i in range(200):
            kv.put(f"big-{i}", "x" * 8000)  # more than the 1 MiB map
        failed = st.transaction
        with pytest.raises(EdmError, match="is full"):
            st.commit(Checkpoint(inputs={IN: 2}))
        assert failed.status is FAILED and st.transaction is failed
        with pytest.raises(TransactionStateError, match="commit of the store transaction .* which is failed"):
            st.commit(Checkpoint(inputs={IN: 2}))
        with pytest.raises(TransactionStateError, match="written after its transaction was prepared"):
            kv.put("b", 1)
        st.abort()
        assert st.transaction.status is STARTED
        assert kv.get("big-0") is None and kv.get("a") == 1 and st.checkpoint().inputs == {IN: 1}
        kv.put("b", 2)
        st.commit(Checkpoint(inputs={IN: 3}))
        assert kv.get("b") == 2 and st.checkpoint().inputs == {IN: 3}
