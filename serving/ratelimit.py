"""Per-key rate limits: a token bucket per API key, `rate_per_s` refill up to `burst` tokens.

    LocalBuckets   per worker, in memory (the local profile: each worker allows the full rate)
    RedisBuckets   shared by every worker and replica through one Redis (prod), one atomic Lua
                   script per request, timed by the Redis server's clock

`take(key)` -> 0.0 when the request may go, else the seconds until a token is there (the 429's
Retry-After). When Redis fails the limiter lets requests through and says so in the log: an
outage of the limiter must not become an outage of the service.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from serving.keys import ApiKey

log = logging.getLogger("vidrec.serving")

# KEYS[1] the bucket; ARGV rate per second, burst. Returns 0 (allowed) or milliseconds to wait.
TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = burst, t end
tokens = math.min(burst, tokens + (t - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', t)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""
BUCKET_PREFIX = "vidrec:ratelimit:"


class LocalBuckets:
    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: ApiKey) -> float:
        if key.rate_per_s <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, at = self._state.get(key.key_id, (float(key.burst), now))
            tokens = min(float(key.burst), tokens + (now - at) * key.rate_per_s)
            if tokens >= 1:
                self._state[key.key_id] = (tokens - 1, now)
                return 0.0
            self._state[key.key_id] = (tokens, now)
            return (1 - tokens) / key.rate_per_s


class RedisBuckets:
    def __init__(self, url: str):
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.script = self.client.register_script(TAKE)
        self._warned = 0.0

    def take(self, key: ApiKey) -> float:
        if key.rate_per_s <= 0:
            return 0.0
        try:
            wait_ms = int(self.script(keys=[BUCKET_PREFIX + key.key_id], args=[key.rate_per_s, key.burst]))
        except Exception as exc:  # noqa: BLE001 - any Redis failure: let the request through
            if time.monotonic() - self._warned > 30:
                self._warned = time.monotonic()
                log.warning("rate limits not enforced: Redis at %s failed (%s)", self.url, exc)
            return 0.0
        return wait_ms / 1000.0


def retry_after(seconds: float) -> str:
    """Retry-After is whole seconds; a wait under a second still says 1."""
    return str(max(1, math.ceil(seconds)))
