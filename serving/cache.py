"""A bounded least-recently-used map (per worker process, no locking: one event loop uses it)."""

from __future__ import annotations

import time
from collections import OrderedDict


class LRU(OrderedDict):
    def __init__(self, size: int, ttl_s: float | None = None):
        super().__init__()
        self.size = size
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        self[key] = (time.monotonic(), value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def fresh(self, key):
        """The value stored under `key` if it is younger than the TTL, else None."""
        found = super().get(key)
        if found is None or (self.ttl_s is not None and time.monotonic() - found[0] > self.ttl_s):
            self.misses += 1
            return None
        self.hits += 1
        self.move_to_end(key)
        return found[1]

    def peek(self, key):
        """Like `fresh`, without reordering: safe to call from another thread than the writer's."""
        found = super().get(key)
        if found is None or (self.ttl_s is not None and time.monotonic() - found[0] > self.ttl_s):
            return None
        return found[1]
