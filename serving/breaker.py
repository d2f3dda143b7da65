"""A minimal circuit breaker: after a failure, skip the dependency for `retry_after` seconds.

While open, callers go straight to their fallback instead of paying a timeout per request; the
first call after the pause tries the dependency again (half-open) and closes the breaker on
success. Thread-safe enough for the service: state changes are single attribute writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("vidrec.serving")


class CircuitBreaker:
    def __init__(self, name: str, retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.retry_after = retry_after
        self.clock = clock
        self.open_until = 0.0
        self.last_error: str | None = None
        self.failures = 0

    @property
    def is_open(self) -> bool:
        return self.clock() < self.open_until

    def allow(self) -> bool:
        return not self.is_open

    def success(self) -> None:
        if self.last_error is not None:
            log.warning("%s is reachable again", self.name)
        self.last_error = None
        self.open_until = 0.0

    def failure(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.last_error is None:
            log.error("%s is unreachable (%s): serving degraded, next try in %.1fs", self.name, text, self.retry_after)
        self.failures += 1
        self.last_error = text[:300]
        self.open_until = self.clock() + self.retry_after

    def status(self) -> str:
        return "ok" if self.last_error is None else f"unreachable: {self.last_error}"


def fast_retry():
    """One immediate retry (a pooled connection gone stale when Redis restarted), no backoff.

    redis-py 7's default retries a failed command 3 times with an exponential backoff of up to
    10 s: while Redis is down every call then blocks for seconds (the request path and /readyz
    with it) instead of failing at once so that the service degrades.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 1)
