"""A response cache: at most ``size`` entries, each valid for ``ttl`` seconds, least recently
used evicted first. Only successful responses are cached; a key is a JSON-able value."""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Callable


class ResponseCache:
    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def name(key: Any) -> str:
        """The entry's name for a key (equal keys, equal names)."""
        return json.dumps(key, sort_keys=True, default=str)

    def get(self, key: Any) -> Any | None:
        k = self.name(key)
        entry = self._entries.get(k)
        if entry is None or entry[0] <= self.clock():
            if entry is not None:
                del self._entries[k]
            self.misses += 1
            return None
        self._entries.move_to_end(k)
        self.hits += 1
        return entry[1]

    def put(self, key: Any, value: Any) -> None:
        k = self.name(key)
        self._entries[k] = (self.clock() + self.ttl, value)
        self._entries.move_to_end(k)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
