"""The partitioner must agree bit for bit with the Kafka Java client.

Vectors were produced by Kafka's ``Utils.murmur2`` algorithm compiled with javac 17
(the first ones also appear in Kafka's own UtilsTest); partitions are
``Utils.toPositive(hash) % n`` as in the Java default partitioner.
"""
from __future__ import annotations

import pytest

from edm_runner.records.partitioner import default_partition, murmur2

# key, murmur2, partition of 3, of 8, of 12
JAVA_VECTORS = [
    ("", 275646681, 0, 1, 9),
    ("a", -1563381124, 1, 4, 4),
    ("ab", 316155434, 2, 2, 2),
    ("abc", 479470107, 0, 3, 3),
    ("abcd", -1323649548, 2, 4, 8),
    ("21", -973932308, 0, 4, 0),
    ("foobar", -790332482, 0, 6, 6),
    ("a-little-bit-long-string", -985981536, 2, 0, 8),
    ("a-little-bit-longer-string", -1486304829, 2, 3, 11),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 2, 5, 5),
    ("user-1", 1404122828, 2, 4, 8),
    ("user-42", 1459644460, 1, 4, 4),
    ("order-2024-0001", 2012855156, 2, 4, 8),
    ("1", -1993445489, 0, 7, 3),
    ("12", 126087238, 1, 6, 10),
    ("123", -267702483, 2, 5, 5),
    ("1234", -1614185708, 0, 4, 0),
    ("12345", -1188365604, 2, 4, 8),
    ("\u00e9t\u00e9", -2101193575, 1, 1, 1),
    ("\u65e5\u672c", -700811021, 0, 3, 3),
]


@pytest.mark.parametrize("key,expected,p3,p8,p12", JAVA_VECTORS)
def test_murmur2_and_partition_match_java(key: str, expected: int, p3: int, p8: int, p12: int) -> None:
    data = key.encode("utf-8")
    assert murmur2(data) == expected
    assert [default_partition(data, n) for n in (3, 8, 12)] == [p3, p8, p12]


def test_binary_keys_with_high_bytes_match_java() -> None:
    # Java bytes are signed; the algorithm masks them, so high bytes must not sign-extend.
    assert murmur2(bytes(range(256))) == -1948347274
    assert murmur2(bytes([0xFF, 0x80, 0x7F, 0x00, 0xFE])) == -1958495739


def test_single_partition_and_invalid_count() -> None:
    assert default_partition(b"anything", 1) == 0
    with pytest.raises(ValueError):
        default_partition(b"k", 0)

