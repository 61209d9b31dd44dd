"""Kafka-compatible key -> partition mapping.

Invariant: ``default_partition(key, n)`` equals the partition the Kafka Java client's default
partitioner picks for a keyed record (``Utils.toPositive(Utils.murmur2(key)) % n``), so a
topology writes each key to the same partition on the local broker and on Kafka, and
copartitioned data written by Java/Kafka Streams services lines up with ours.
"""
from __future__ import annotations

import struct
from typing import Any

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash of ``data`` as ``org.apache.kafka.common.utils.Utils.murmur2``
    computes it: a signed Java ``int`` (range -2**31 .. 2**31-1)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n_words = length >> 2
    if n_words:
        for k in struct.unpack_from(f"<{n_words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length & ~3
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - 0x100000000 if h & 0x80000000 else h


def default_partition(key: bytes, num_partitions: int) -> int:
    """The partition of ``key`` among ``num_partitions`` (Java's ``toPositive(murmur2) % n``)."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class RoundRobin:
    """Partitions 0, 1, ..., n-1, 0, ... in call order."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.next = 0

    def __call__(self, key: Any, key_bytes: bytes | None, value: Any) -> int:
        p = self.next
        self.next = (p + 1) % self.partitions
        return p


class DefaultPartitioner:
    """murmur2 of the key bytes (cached per key: keys repeat), round robin for null keys."""

    _CACHE_LIMIT = 100_000

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.null_keys = RoundRobin(partitions)
        self.cache: dict[bytes, int] = {}

    def __call__(self, key: Any, key_bytes: bytes | None, value: Any) -> int:
        if self.partitions == 1:
            return 0
        if key_bytes is None:
            return self.null_keys(key, key_bytes, value)
        p = self.cache.get(key_bytes)
        if p is None:
            if len(self.cache) >= self._CACHE_LIMIT:
                self.cache.clear()
            p = self.cache[key_bytes] = default_partition(key_bytes, self.partitions)
        return p
