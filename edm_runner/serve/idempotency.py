"""The answers to recent ingestion requests that carried an ``Idempotency-Key`` header, kept in
LMDB so a client retrying a request (a timeout, a lost connection, a restarted instance) gets
the first answer again instead of writing the events twice.

Layout (one environment under ``path``): ``answers``: scope NUL key -> JSON ``{"t": ms,
"digest": sha256 of the body, "status", "body"}``; ``by_time``: u64 ms, scope NUL key -> b"",
the order in which answers are forgotten.

Invariants:
- An answer is recorded only after the broker acknowledged every event it reports written,
  and a key is looked up before anything is written; so a retry of an acknowledged request
  writes nothing. What is not covered: the moment between the acknowledgement and the
  recording (a crash there forgets the key, and the retry writes the events again). A retry
  reaching another instance is forwarded to the key's holder (``serve.routing.key_holder``),
  so one instance's keys see every request with that key while the members do not change.
- Bounded: at most ``capacity`` answers, none older than ``ttl_s``; the oldest go first.
- Writes run in a worker thread (one LMDB write transaction each, fsynced); reads on the loop.
"""
from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import lmdb

CAPACITY = 100_000
TTL_S = 24 * 3600
MAP_SIZE = 1 << 30
_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Answer:
    """A recorded answer: the HTTP ``status`` and JSON ``body``, for a request body whose
    sha256 was ``digest``."""

    status: int
    body: Any
    digest: str


class IdempotencyKeys:
    """Recent answers by (scope, Idempotency-Key); ``scope`` is the endpoint's path."""

    def __init__(self, path: Path, *, capacity: int = CAPACITY, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.capacity = capacity
        self.ttl_ms = int(ttl_s * 1000)
        self.clock = clock  # epoch seconds
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=2, sync=True, metasync=True)
        self.answers = self.env.open_db(b"answers")
        self.by_time = self.env.open_db(b"by_time")

    @staticmethod
    def _key(scope: str, key: str) -> bytes:
        return f"{scope}\0{key}".encode()

    def get(self, scope: str, key: str) -> Answer | None:
        """The answer recorded for ``key`` within ``ttl_s``, else None."""
        with self.env.begin() as txn:
            raw = txn.get(self._key(scope, key), db=self.answers)
        if raw is None:
            return None
        doc = json.loads(raw)
        if doc["t"] < self.clock() * 1000 - self.ttl_ms:
            return None
        return Answer(doc["status"], doc["body"], doc["digest"])

    async def put(self, scope: str, key: str, answer: Answer) -> None:
        await asyncio.to_thread(self._put, self._key(scope, key), answer)

    def _put(self, key: bytes, answer: Answer) -> None:
        now = int(self.clock() * 1000)
        doc = json.dumps({"t": now, "digest": answer.digest, "status": answer.status, "body": answer.body},
                         separators=(",", ":")).encode()
        with self.env.begin(write=True) as txn:
            old = txn.get(key, db=self.answers)
            if old is not None:
                txn.delete(_U64.pack(json.loads(old)["t"]) + key, db=self.by_time)
            txn.put(key, doc, db=self.answers)
            txn.put(_U64.pack(now) + key, b"", db=self.by_time)
            self._forget(txn, now)

    def _forget(self, txn: lmdb.Transaction, now: int) -> None:
        """Drops answers past the time to live, and the oldest beyond the capacity."""
        excess = txn.stat(self.answers)["entries"] - self.capacity
        cursor = txn.cursor(db=self.by_time)
        cursor.first()
        while stamp := cursor.key():
            if excess <= 0 and _U64.unpack(stamp[:8])[0] >= now - self.ttl_ms:
                return
            txn.delete(stamp[8:], db=self.answers)
            excess -= 1
            cursor.delete()  # moves to the next one

    def close(self) -> None:
        self.env.close()
