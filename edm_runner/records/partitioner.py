"""Kafka-compatible key -> partition mapping.

Invariant: ``default_partition(key, n)`` equals the partition the Kafka Java client's default
partitioner picks for a keyed record (``Utils.toPositive(Utils.murmur2(key)) % n``), so a
topology writes each key to the same partition on the local broker and on Kafka, and
copartitioned data written by Java/Kafka Streams services lines up with ours.
"""
from __future__ import annotations

import struct

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
