"""Byte layout of window and session store keys.

Layout (big-endian throughout):
- window:  ``u32 len(K) | K | u64 start``
- session: ``u32 len(K) | K | u64 start | u64 end``
where ``K`` is the compact JSON of the record key (``api.encode_json``) and each time is
stored as ``ms + 2**63`` (offset binary), so negative times sort before positive ones.

Invariants:
- The length prefix makes composite keys unambiguous although JSON numbers are not
  prefix-free (``1`` vs ``12``): all windows of one key share ``u32 len | K`` and nothing
  else starts with it, so ``fetch(key, from, to)`` is one contiguous cursor range.
- Within one key, byte order is start order (then end order for sessions).
"""
from __future__ import annotations

import struct
from typing import Any

_LEN = struct.Struct(">I")
_TIME = struct.Struct(">Q")
_TIME2 = struct.Struct(">QQ")
_BIAS = 1 << 63

# The reserved record key under which a window, session or stream-stream join operator keeps
# its bookkeeping (stream time, last sweep) in its own window or session store. A record key of
# an aggregation is never null, so this key never collides with the user's data; readers of a
# store for the user (`edm state`) never show it.
META: Any = None


def key_prefix(key_bytes: bytes) -> bytes:
    """The bytes every composite key of ``key_bytes`` starts with."""
    return _LEN.pack(len(key_bytes)) + key_bytes


def time_bytes(ms: int) -> bytes:
    """The stored form of a time: the last 8 bytes of a window key (start) or a session key
    (end) compare as the times do."""
    return _TIME.pack(ms + _BIAS)


def window_key(key_bytes: bytes, start: int) -> bytes:
    return _LEN.pack(len(key_bytes)) + key_bytes + _TIME.pack(start + _BIAS)


def session_key(key_bytes: bytes, start: int, end: int) -> bytes:
    return _LEN.pack(len(key_bytes)) + key_bytes + _TIME2.pack(start + _BIAS, end + _BIAS)


def split_window_key(composite: bytes) -> tuple[bytes, int]:
    """(key bytes, start) of a window key; ValueError when it is not one."""
    (n,) = _LEN.unpack_from(composite)
    if len(composite) != 4 + n + 8:
        raise ValueError(f"not a window store key: {composite!r}")
    (start,) = _TIME.unpack_from(composite, 4 + n)
    return composite[4:4 + n], start - _BIAS


def split_session_key(composite: bytes) -> tuple[bytes, int, int]:
    """(key bytes, start, end) of a session key; ValueError when it is not one."""
    (n,) = _LEN.unpack_from(composite)
    if len(composite) != 4 + n + 16:
        raise ValueError(f"not a session store key: {composite!r}")
    start, end = _TIME2.unpack_from(composite, 4 + n)
    return composite[4:4 + n], start - _BIAS, end - _BIAS
