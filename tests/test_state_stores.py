"""Task state on real LMDB files: stores, buffer, commit atomicity, fingerprints, corruption."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edm_runner.brokers.base import TopicPartition
from edm_runner.errors import EdmError, EventError
from edm_runner.invocation import Invocation
from edm_runner.state.api import encode_json
from edm_runner.state import Checkpoint, IncompatibleStoreError, TaskState, task_dir
from edm_runner.state.keys import (session_key, split_session_key, split_window_key,
                                   window_key)

IN = TopicPartition("orders", 0)
CL = TopicPartition("svc-counts-changelog", 0)


def open_task(tmp_path: Path, **kwargs) -> TaskState:
    return TaskState.open(task_dir(tmp_path, "svc", 0, 0), **kwargs)


def test_key_value_reads_its_own_writes_and_commit_persists(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        kv.put("a", 1)
        kv.put("a", 2)
        kv.put("b", {"n": [1, 2]})
        assert kv.get("a") == 2 and kv.get("b") == {"n": [1, 2]} and kv.get("zz") is None
        st.commit(Checkpoint({CL: 2}, {IN: 10}))
        assert not st.dirty
        kv.put("b", None)  # delete, buffered
        assert kv.get("b") is None
        st.commit(Checkpoint(inputs={IN: 11}))
    with open_task(tmp_path) as st:
        assert not st.fresh
        kv = st.register("counts", "key_value")
        assert kv.get("a") == 2 and kv.get("b") is None
        assert st.checkpoint() == Checkpoint({CL: 2}, {IN: 11})  # entries merged


def test_abort_drops_the_batch(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        kv.put("a", 1)
        st.commit(Checkpoint(inputs={IN: 1}))
        kv.put("a", 99)
        kv.put("b", 5)
        st.abort()
        assert kv.get("a") == 1 and kv.get("b") is None
        assert st.dirty_changelog_records() == []
        assert st.checkpoint().inputs == {IN: 1}


def test_returned_values_are_copies(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        kv.put("k", {"items": [1]})
        kv.get("k")["items"].append(2)
        assert kv.get("k") == {"items": [1]}


def test_a_value_read_back_equals_the_value_put_before_and_after_the_commit(tmp_path: Path) -> None:
    # Scalars wait in the buffer as they are (encoded at commit), containers as their JSON.
    values = [7, -3, 10 ** 30, 1.5, -0.0, True, False, "", "short", "é", "x" * 5000, [1, "a"], {"n": {"m": None}}]
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        for i, v in enumerate(values):
            kv.put(i, v)
        assert [kv.get(i) for i in range(len(values))] == values
        assert [type(kv.get(i)) for i in range(len(values))] == [type(v) for v in values]
        records = st.dirty_changelog_records()
        assert [v for _, _, v in records] == [encode_json(v) for v in values]
        st.commit(Checkpoint())
        assert [kv.get(i) for i in range(len(values))] == values


def test_mutating_a_value_after_putting_it_does_not_change_the_store(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        value = {"items": [1]}
        kv.put("k", value)
        value["items"].append(2)
        assert kv.get("k") == {"items": [1]}
        key = [1]  # a mutable key: each put encodes it as it is then
        kv.put(key, "one")
        key.append(2)
        kv.put(key, "two")
        assert kv.get([1]) == "one" and kv.get([1, 2]) == "two"


def test_a_value_json_cannot_hold_is_refused_at_put(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        for bad in (float("nan"), float("inf"), "\ud800", {"k": float("nan")}):
            with pytest.raises(EventError):
                kv.put("k", bad)
        assert kv.get("k") is None and st.dirty_changelog_records() == []


def test_rollback_undoes_the_writes_since_the_mark_in_every_store(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("kv", "key_value")
        w = st.register("w", "window", {"size": 10})
        kv.put("kept", 1)
        kv.put("stored", {"v": 1})
        w.put("a", 0, 1)
        st.commit(Checkpoint())
        kv.put("kept", 2)
        mark = st.journal.mark()
        kv.put("kept", 3)
        kv.put("new", 1)
        kv.put("stored", None)
        w.put("a", 0, 2)
        w.put("a", 10, 1)
        st.journal.rollback(mark)
        assert kv.get("kept") == 2 and kv.get("new") is None and kv.get("stored") == {"v": 1}
        assert list(w.fetch("a", 0, 20)) == [(0, 1)]
        assert st.dirty_changelog_records() == [("kv", b'"kept"', b"2")]
        st.journal.forget()  # what is forgotten can no longer be rolled back
        st.journal.rollback(0)
        assert kv.get("kept") == 2


def test_changelog_records_are_the_latest_value_per_dirty_key(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("counts", "key_value")
        st.register("scratch", "key_value", changelog=False)
        st.store("scratch").put("x", 1)
        kv.put("a", 1)
        kv.put("b", 1)
        kv.put("a", 3)
        kv.put("b", None)
        assert st.dirty_changelog_records() == [("counts", b'"a"', b"3"), ("counts", b'"b"', None)]


def test_scan_merges_buffer_and_store_in_byte_order(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        for k in ["b", "d", "f", 12, "user-1"]:
            kv.put(k, k)
        st.commit(Checkpoint())
        kv.put("a", "new")      # before everything
        kv.put("d", "changed")  # overrides a stored one
        kv.put("f", None)       # hides a stored one
        kv.put("e", "new")      # between stored ones
        assert list(kv.scan()) == [("a", "new"), ("b", "b"), ("d", "changed"), ("e", "new"),
                                   ("user-1", "user-1"), (12, 12)]
        assert list(kv.scan(b'"user-')) == [("user-1", "user-1")]
        assert list(kv.scan(b"1")) == [(12, 12)]


def test_composite_keys_are_unambiguous_and_ordered() -> None:
    # "1" is a prefix of "12" as JSON bytes: the length prefix keeps their windows apart.
    assert window_key(b"1", 5) < window_key(b"1", 6) < window_key(b"12", 0)
    assert not window_key(b"12", 0).startswith(window_key(b"1", 0)[:5])
    assert window_key(b'"a"', -1) < window_key(b'"a"', 0)
    assert split_window_key(window_key(b'"a"', -7)) == (b'"a"', -7)
    assert split_session_key(session_key(b"[1]", 3, 9)) == (b"[1]", 3, 9)
    with pytest.raises(ValueError):
        split_window_key(session_key(b"1", 0, 0))


def test_window_fetch_ranges(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        w = st.register("win", "window", {"size": 10})
        for key in (1, 12, "1"):
            for start in (0, 10, 20, 30):
                w.put(key, start, f"{key}@{start}")
        st.commit(Checkpoint())
        w.put(1, 40, "1@40")   # buffered, inside the range
        w.put(1, 20, None)     # buffered delete of a stored window
        w.put(1, 10, "new")    # buffered update
        w.put(12, 15, "12@15")  # another key: must not leak into key 1
        assert list(w.fetch(1, 10, 40)) == [(10, "new"), (30, "1@30"), (40, "1@40")]
        assert list(w.fetch(1, 11, 29)) == []
        assert list(w.fetch(12, 0, 15)) == [(0, "12@0"), (10, "12@10"), (15, "12@15")]
        assert w.get(1, 0) == "1@0" and w.get(1, 20) is None and w.get(2, 0) is None
        # by start, then by stored key bytes (length-prefixed JSON: 1, 12, "1")
        assert list(w.fetch_all(25, 40)) == [(1, 30, "1@30"), (12, 30, "12@30"),
                                             ("1", 30, "1@30"), (1, 40, "1@40")]
        st.commit(Checkpoint())
        assert list(w.fetch(1, -100, 100)) == [(0, "1@0"), (10, "new"), (30, "1@30"), (40, "1@40")]


def test_session_find_and_fetch_all(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        s = st.register("sess", "session")
        s.put("u", 0, 10, "a")
        s.put("u", 20, 25, "b")
        s.put("u", 40, 50, "c")
        s.put("v", 0, 100, "other")
        st.commit(Checkpoint())
        s.put("u", 60, 60, "d")  # buffered
        # sessions overlapping [22, 45]: end >= 22 and start <= 45
        assert s.find("u", 22, 45) == [(20, 25, "b"), (40, 50, "c")]
        assert s.find("u", 0, 100) == [(0, 10, "a"), (20, 25, "b"), (40, 50, "c"), (60, 60, "d")]
        assert s.find("u", 11, 19) == []
        s.put("u", 20, 25, None)  # merged away
        assert s.find("u", 22, 45) == [(40, 50, "c")]
        assert list(s.fetch_all(40, 100)) == [("u", 40, 50, "c"), ("u", 60, 60, "d"),
                                              ("v", 0, 100, "other")]
        assert s.get("u", 40, 50) == "c"


def test_oversized_key_is_a_clear_error(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        kv = st.register("s", "key_value")
        with pytest.raises(EdmError, match="exceeds LMDB's limit"):
            kv.put("x" * 1000, 1)


def test_fingerprint_change_refuses_with_the_fix(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        st.register("hourly", "window", {"size": 60_000, "grace": 0})
    # nothing was written under that definition: it left nothing behind that would refuse another
    with open_task(tmp_path) as st:
        st.register("hourly", "window", {"size": 3_600_000, "grace": 0})
        st.commit(Checkpoint())
    with open_task(tmp_path, invocation=Invocation("shop.yaml", state_dir="/tmp/my state")) as st:
        with pytest.raises(IncompatibleStoreError) as info:
            st.register("hourly", "window", {"size": 60_000, "grace": 0})
        message = str(info.value)
        assert "'hourly'" in message and "size 3600000 -> 60000" in message
        assert "`edm reset shop.yaml --state-dir '/tmp/my state'`" in message and "grace" not in message
        with pytest.raises(IncompatibleStoreError, match="type window -> key_value"):
            st.register("hourly", "key_value")
        # a store added to an existing environment is a compatible change
        st.register("added", "key_value").put("k", 1)
        st.register("hourly", "window", {"grace": 0, "size": 3_600_000})  # key order irrelevant


def test_corrupted_environment_is_wiped_with_a_warning(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = task_dir(tmp_path, "svc", 0, 0)
    with TaskState.open(path) as st:
        st.register("counts", "key_value").put("a", 1)
        st.commit(Checkpoint(inputs={IN: 5}))
    data = path / "data.mdb"
    data.write_bytes(os.urandom(data.stat().st_size))
    with caplog.at_level(logging.WARNING, logger="edm.state"):
        st = TaskState.open(path)
    with st:
        assert st.fresh and st.checkpoint() == Checkpoint()
        assert st.register("counts", "key_value").get("a") is None
    assert str(path) in caplog.text and "unreadable" in caplog.text


def test_unreadable_meta_is_wiped(tmp_path: Path) -> None:
    import lmdb
    path = task_dir(tmp_path, "svc", 0, 0)
    with TaskState.open(path) as st:
        st.register("counts", "key_value").put("a", 1)
        st.commit(Checkpoint(inputs={IN: 5}))
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"checkpoint", b"{not json", db=env.open_db(b"__meta", txn=txn))
    env.close()
    with TaskState.open(path) as st:
        assert st.fresh and st.checkpoint() == Checkpoint()


def test_missing_state_starts_fresh(tmp_path: Path) -> None:
    with open_task(tmp_path) as st:
        assert st.fresh
        st.register("counts", "key_value")
    with open_task(tmp_path) as st:
        assert not st.fresh


def test_a_task_is_owned_by_one_process(tmp_path: Path) -> None:
    path = task_dir(tmp_path, "svc", 0, 0)
    with TaskState.open(path):
        child = subprocess.run(
            [sys.executable, "-c",
             "import sys; from edm_runner.state import TaskState\n"
             "from edm_runner.errors import EdmError\n"
             "try:\n    TaskState.open(sys.argv[1], lock_timeout_s=0)\n"
             "except EdmError as e:\n    print(e)\n",
             str(path)], capture_output=True, text=True, timeout=60)
    assert "in use by another edm process" in child.stdout, child.stderr


_COMMIT_LOOP = """
import sys
from edm_runner.brokers.base import TopicPartition
from edm_runner.state.api import encode_json
from edm_runner.state import Checkpoint, TaskState
st = TaskState.open(sys.argv[1])
kv = st.register("counts", "key_value")
i = st.checkpoint().inputs.get(TopicPartition("orders", 0), 0)
while True:
    for k in range(200):
        kv.put(f"k{k}", i)
    st.commit(Checkpoint({TopicPartition("cl", 0): i + 1}, {TopicPartition("orders", 0): i + 1}))
    print(i, flush=True)
    i += 1
"""


def test_commit_is_atomic_under_sigkill(tmp_path: Path) -> None:
    """A child commits 200 keys + checkpoint per transaction in a loop; SIGKILL lands at an
    arbitrary point (mostly inside commits). After reopening, every key holds the value of
    the batch the checkpoint names: the data and the checkpoint agree."""
    path = task_dir(tmp_path, "svc", 0, 0)
    for round_ in range(3):
        child = subprocess.Popen([sys.executable, "-c", _COMMIT_LOOP, str(path)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        for _ in range(15 + 7 * round_):  # wait for committed batches, not for time
            assert child.stdout.readline(), "the child died"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with TaskState.open(path) as st:
            assert not st.fresh
            kv = st.register("counts", "key_value")
            cp = st.checkpoint()
            batch = cp.inputs[IN] - 1
            assert batch >= 14
            assert cp.changelogs[TopicPartition("cl", 0)] == batch + 1
            assert {kv.get(f"k{k}") for k in range(200)} == {batch}


def test_crash_inside_the_commit_transaction_keeps_the_previous_batch(tmp_path: Path) -> None:
    """``EDM_CRASH_AT=store_write:N`` kills the child inside its N-th commit, after the puts
    and the checkpoint were written into the open transaction: none of that batch survives."""
    path = task_dir(tmp_path, "svc", 0, 0)
    env = {**os.environ, "EDM_CRASH_AT": "store_write:4"}
    child = subprocess.run([sys.executable, "-c", _COMMIT_LOOP, str(path)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert child.stdout.split() == ["0", "1", "2"]  # the 4th commit (batch 3) never returned
    with TaskState.open(path) as st:
        kv = st.register("counts", "key_value")
        assert st.checkpoint().inputs == {IN: 3}
        assert {kv.get(f"k{k}") for k in range(200)} == {2}
